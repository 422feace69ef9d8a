"""Config: merge order, overrides, strict keys with helpful messages, stable hash, saved resolved config."""
import pytest
from omegaconf import OmegaConf

from mmaif_pl.config import config_hash, load, save_resolved
from mmaif_pl.errors import ConfigError


def test_files_merge_left_to_right_then_overrides(tmp_path):
    (tmp_path / "one.yaml").write_text("model:\n  preset: S\ntrain:\n  lr: 0.1\n")
    (tmp_path / "two.yaml").write_text("train:\n  lr: 0.2\n")
    cfg = load([tmp_path / "one.yaml", tmp_path / "two.yaml"], ["train.max_steps=7"])
    assert (cfg.model.preset, cfg.train.lr, cfg.train.max_steps) == ("S", 0.2, 7)


def test_unknown_key_in_file_names_it_and_the_valid_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  presett: S\n")
    with pytest.raises(ConfigError) as exc:
        load([tmp_path / "bad.yaml"])
    msg = str(exc.value)
    assert "bad.yaml" in msg and "model.presett" in msg and "preset" in msg and "rope" in msg


def test_unknown_override_and_section_and_bad_type(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.stepz.*max_steps"):
        load([], ["train.stepz=3"])
    with pytest.raises(ConfigError, match="modle"):
        load([], ["modle.preset=S"])
    with pytest.raises(ConfigError, match="train.max_steps"):
        load([], ["train.max_steps=lots"])
    with pytest.raises(ConfigError, match="key=value"):
        load([], ["train.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load([tmp_path / "nope.yaml"])
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load([tmp_path / "broken.yaml"])


def test_hash_is_stable_and_sensitive(tmp_path):
    a, b = load([], ["train.lr=0.001"]), load([], ["train.lr=0.001"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load([], ["train.lr=0.002"]))
    digest = save_resolved(a, tmp_path / "run")
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert (tmp_path / "run" / "config.hash").read_text().strip() == digest
    assert config_hash(OmegaConf.to_container(saved)) == digest


def test_every_shipped_experiment_file_loads():
    from mmaif_pl.config import EXPERIMENTS_DIR

    files = sorted(EXPERIMENTS_DIR.rglob("*.yaml"))
    for f in files:
        load([f])


def test_seed_variants_differ_from_their_model_only_in_name_and_seed():
    """`<variant>-seed<N>.yaml` (the report's seed replicates) must stay the same experiment as `<variant>.yaml`."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "experiments" / "variants"
    seeded = sorted(folder.glob("*-seed*.yaml"))
    assert seeded, "the pipeline's seed replicates are missing"
    for path in seeded:
        base, _, n = path.stem.rpartition("-seed")
        replica = OmegaConf.to_container(OmegaConf.load(path))
        original = OmegaConf.to_container(OmegaConf.load(folder / f"{base}.yaml"))
        assert replica["train"].pop("name") == path.stem and replica["train"].pop("seed") == int(n)
        original["train"].pop("name")
        assert replica == original, f"{path.name} differs from {base}.yaml beyond train.name and train.seed"
