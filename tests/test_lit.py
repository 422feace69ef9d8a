"""LightningModules and the train command on a tiny in-test dataset (CPU, 32 px)."""
import json
import pickle
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUIET, HostReads
from torch.utils.data import DataLoader, Dataset

from mmaif_pl.config import ConfigError, load
from mmaif_pl.errors import UserError
from mmaif_pl.lit.commands import run_training
from mmaif_pl.lit.fusion import build_module, load_module, read_checkpoint
from mmaif_pl.models.codec import LatentCodec, psnr
from mmaif_pl.models.text import TextEncoder

SIZE = 32
PROMPTS = ["Remove the noise.", "The visible image is hazy.", "Fuse the two exposures.", "Deblur the near focus."]


class TinyPairs(Dataset):
    """Deterministic smooth pairs: a target, two complementary clean sources, noisy degraded copies."""

    def __init__(self, n=8, seed=0):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        low = torch.rand(1, 3, 4, 4, generator=g)
        target = torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0]
        target = target.clamp(0, 1)
        ramp = torch.linspace(0, 1, SIZE).expand(SIZE, SIZE)
        a_clean, b_clean = target * (0.4 + 0.6 * ramp), target * (1.0 - 0.6 * ramp)
        a = (a_clean + 0.05 * torch.randn(a_clean.shape, generator=g)).clamp(0, 1)
        b = (b_clean + 0.05 * torch.randn(b_clean.shape, generator=g)).clamp(0, 1)
        return {"a": a, "b": b, "a_clean": a_clean, "b_clean": b_clean, "target": target,
                "prompt": PROMPTS[i % 4], "task": "mef", "degradations": [], "id": str(i)}


def collate(samples):
    out = {k: torch.stack([s[k] for s in samples]) for k in ("a", "b", "a_clean", "b_clean", "target")}
    out.update({k: [s[k] for s in samples] for k in ("prompt", "task", "degradations", "id")})
    return out


class TinyDM(L.LightningDataModule):
    def setup(self, stage=None):
        pass

    def train_dataloader(self):
        return DataLoader(TinyPairs(8), batch_size=4, shuffle=False, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(TinyPairs(4, seed=1), batch_size=4, collate_fn=collate)


@pytest.fixture(scope="module")
def text():
    return TextEncoder()


@pytest.fixture(scope="module")
def codec():
    c = LatentCodec("linear", 4, 16)
    imgs = [collate([TinyPairs(8)[i] for i in range(8)])[k] for k in ("a", "b", "target")]
    c.fit_linear(imgs)
    c.measure_stats(imgs)
    return c


def cfg_for(tmp_path, *over):
    return load([], ["model.hidden=64", "model.depth=2", "model.heads=2", "model.pe_grid=8",
                     f"train.out_dir={tmp_path}", "train.warmup_steps=1", "train.val_every=2", "train.log_every=1",
                     "train.val_batches=1", "train.ema_decay=0.9", "eval.profile=default", *over])


def batch():
    return collate([TinyPairs(8)[i] for i in range(4)])


def test_frozen_parts_stay_out_of_optimizer_ema_and_state(tmp_path, codec, text):
    m = build_module(cfg_for(tmp_path), codec, text)
    own = {id(p) for p in m.parameters()}
    assert not own & {id(p) for p in text.parameters()} and not own & {id(b) for b in codec.buffers()}
    opt = m.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in m.dit.parameters()}
    assert [n for n, _ in m.ema.named_parameters()] == [n for n, _ in m.dit.named_parameters()]
    assert not any(p.requires_grad for p in m.ema.parameters())
    assert {k.split(".")[0] for k in m.state_dict()} == {"dit", "ema"}


@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_both_variants_learn_a_fixed_batch(tmp_path, codec, text, variant):
    torch.manual_seed(0)
    m = build_module(cfg_for(tmp_path, f"train.variant={variant}", "model.hidden=32"),
                     codec, text)
    b = collate([TinyPairs(8)[i] for i in range(2)])
    before = psnr(m.fuse(b["a"], b["b"], b["prompt"], steps=4, use_ema=False), b["target"]).item()
    opt = torch.optim.AdamW(m.dit.parameters(), lr=5e-3)
    losses = []
    for step in range(40 if variant == "regression" else 100):  # flow has to learn to cancel its noise input
        out = m.compute_loss(b, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["latent"].item())
    after = psnr(m.fuse(b["a"], b["b"], b["prompt"], steps=4, use_ema=False), b["target"]).item()
    if variant == "regression":
        assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])
    else:
        assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert after > before + 5, (before, after)


def test_aux_loss_and_no_prompt_ablation(tmp_path, codec, text):
    m = build_module(cfg_for(tmp_path, "train.aux_weight=0.1", "text.zero=true"), codec, text)
    out = m.compute_loss(batch(), torch.Generator().manual_seed(0))
    assert "aux" in out and out["aux"] > 0
    out["loss"].backward()
    assert m.dit.final.linear.weight.grad.abs().sum() > 0
    pooled, tokens, _ = m.embed_text(["Remove the rain."])
    assert pooled.abs().sum() == 0 and tokens.abs().sum() == 0


def test_fuse_any_size(tmp_path, codec, text):
    m = build_module(cfg_for(tmp_path, "train.variant=flow"), codec, text)
    a, b = torch.rand(1, 3, 30, 45), torch.rand(1, 3, 30, 45)
    out = m.fuse(a, b, ["Fuse."], steps=2)
    assert out.shape == a.shape and 0 <= out.min() and out.max() <= 1


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_weights(actual, expected):
    """The two modules' state dicts: the same keys, every tensor equal up to assert_close's float tolerance."""
    wa, we = weights(actual), weights(expected)
    assert we.keys() == wa.keys()
    for k in we:
        torch.testing.assert_close(wa[k], we[k], msg=k)


def test_train_resume_checkpoint_and_refusals(tmp_path, codec, text):
    # a variant's steps_factor multiplies the scale's max_steps: 2 x 2 = the 4 steps the resumed run reaches below
    over = ["train.variant=flow", "train.max_steps=2", "train.steps_factor=2", "train.name=full"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        full, trainer, run = run_training(cfg_for(tmp_path, *over), datamodule=TinyDM(), trainer_kwargs=QUIET,
                                          log=lambda *_: None)
    assert trainer.global_step == 4
    assert full.ema.training is False  # in eval mode by design, so Lightning's notice about it is not shown
    assert not [w for w in seen if "in eval mode" in str(w.message)], [str(w.message) for w in seen]
    for f in ("config.yaml", "config.hash", "metrics.json", "checkpoints/last.ckpt", "codec/codec.json"):
        assert (run / f).is_file(), f
    assert list(run.glob("events.out.tfevents.*"))
    assert "psnr" in (run / "metrics.json").read_text()

    # interrupted at step 2, then resumed to 4: the same weights as the uninterrupted run
    part = ["train.variant=flow", "train.name=part"]
    run_training(cfg_for(tmp_path, *part, "train.max_steps=2"), datamodule=TinyDM(), trainer_kwargs=QUIET,
                 log=lambda *_: None)
    # a new run into it, without --resume, is refused before anything is written (Lightning would have saved its
    # checkpoints as last-v1.ckpt beside the old last.ckpt, the one --resume and `mmaif fuse` read)
    before = {f: f.read_bytes() for f in (tmp_path / "part").rglob("*") if f.is_file()}
    with pytest.raises(UserError, match=r"part already holds a run \(last.ckpt, step0000002.ckpt\): continue it "
                                        r"with --resume"):
        run_training(cfg_for(tmp_path, *part, "train.max_steps=2"), datamodule=TinyDM(), trainer_kwargs=QUIET,
                     log=lambda *_: None)
    assert {f: f.read_bytes() for f in (tmp_path / "part").rglob("*") if f.is_file()} == before
    with pytest.raises(ConfigError, match="refusing to resume"):
        run_training(cfg_for(tmp_path, *part, "train.max_steps=4", "train.lr=1e-3"), resume="last",
                     datamodule=TinyDM(), trainer_kwargs=QUIET, log=lambda *_: None)
    # max_steps is part of the config: resume under the same hash by keeping it, stopping early via max_steps
    cfg = cfg_for(tmp_path, *part, "train.max_steps=2")
    resumed, trainer, _ = run_training(cfg, resume="last", datamodule=TinyDM(),
                                       trainer_kwargs={**QUIET, "max_steps": 4}, log=lambda *_: None)
    assert trainer.global_step == 4
    assert_same_weights(resumed, full)

    # inference round trip: plain-data load, same outputs; another codec is refused
    ckpt = run / "checkpoints" / "last.ckpt"
    meta = read_checkpoint(ckpt)["mmaif"]
    assert meta["variant"] == "flow" and meta["config"]["train"]["name"] == "full" and meta["text"]["dim"] == 384
    loaded = load_module(ckpt, text=text)
    b = batch()
    torch.testing.assert_close(loaded.fuse(b["a"], b["b"], b["prompt"], steps=2),
                               full.fuse(b["a"], b["b"], b["prompt"], steps=2))
    other = LatentCodec("linear", 4, 16)
    other.fit_linear([torch.rand(2, 3, 32, 32)])
    with pytest.raises(UserError, match="refusing to mix"):
        load_module(ckpt, codec=other, text=text)


class NotPlainData:  # an object a plain-data checkpoint cannot hold
    pass


def test_train_without_a_validation_split_stops_before_building_anything(tmp_path, monkeypatch):
    """No prepared split to validate on (data.val_fraction 0): the error comes before the codec and the model are
    built (it came after them and the model summary, once Lightning asked for the validation loader), and the run
    folder is not made; validation off (as the throughput benchmark runs) needs no split."""
    from mmaif_pl.lit import commands

    def codec_built(*args, **kwargs):
        raise AssertionError("the codec was built")

    monkeypatch.setattr(commands, "prepare_codec", codec_built)
    cfg = cfg_for(tmp_path, "train.name=noval", f"data.prepared={tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match=r"nowhere/val/index.json not found: run `mmaif data prepare`, or set "
                                        r"data.val_fraction > 0"):
        run_training(cfg, trainer_kwargs=QUIET, log=lambda *_: None)
    assert not (tmp_path / "noval").exists()
    with pytest.raises(AssertionError, match="the codec was built"):  # past the check
        run_training(cfg, trainer_kwargs={**QUIET, "limit_val_batches": 0}, log=lambda *_: None)
    with pytest.raises(AssertionError, match="the codec was built"):
        run_training(cfg_for(tmp_path, "train.name=drawn", f"data.prepared={tmp_path / 'nowhere'}",
                             "data.val_fraction=0.1"), trainer_kwargs=QUIET, log=lambda *_: None)


def test_read_checkpoint_names_what_is_wrong_with_a_file(tmp_path):
    """Checkpoints load with weights_only=True. A file that is not one, a truncated copy, one holding arbitrary
    objects and a plain-data file of another program are each refused with a one-line UserError naming the file
    and the reason (not torch's advice on how to load it anyway)."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    whole = tmp_path / "whole.ckpt"
    torch.save({"mmaif": {"variant": "flow"}, "state_dict": {"w": torch.ones(64, 64)}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:-100])
    objects = tmp_path / "objects.ckpt"
    torch.save({"mmaif": {}, "obj": NotPlainData()}, objects)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, other)
    assert read_checkpoint(whole)["mmaif"] == {"variant": "flow"}
    for path in (text, cut):
        with pytest.raises(UserError, match=f"^{path}: not a checkpoint: torch.save writes a zip archive") as err:
            read_checkpoint(path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        read_checkpoint(objects)
    assert str(err.value).startswith(f"{objects}: refused to load: it holds more than tensors and plain containers")
    assert "Unsupported global: GLOBAL test_lit.NotPlainData was not an allowed global by default." in str(err.value)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not an mmaif checkpoint"):
        read_checkpoint(other)
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("bad, message", [("train.accelerator=bogus", "train.accelerator=bogus"),
                                          ("train.strategy=fsdp_cpu_offload", "train.strategy=fsdp_cpu_offload"),
                                          ("train.steps_factor=0", "train.steps_factor must be > 0")])
def test_bad_trainer_settings_fail_before_anything_is_written(tmp_path, bad, message):
    """A setting Lightning (or the sharding rule) refuses is a one-line ConfigError naming the key, raised before
    the run folder is touched: an existing run's config, codec and checkpoints stay as they were."""
    run = tmp_path / "regression"
    run.mkdir()
    (run / "config.yaml").write_text("the existing run's config\n")
    with pytest.raises(ConfigError, match=message):
        run_training(cfg_for(tmp_path, "codec.kind=linear", "train.accelerator=cpu", "train.max_steps=1", bad),
                     datamodule=TinyDM(), trainer_kwargs={k: v for k, v in QUIET.items() if k != "accelerator"},
                     log=lambda *_: None)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "the existing run's config\n"


class BatchIds(L.Callback):
    """The sample ids of every training batch, by global step."""

    def __init__(self):
        self.ids = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.ids[trainer.global_step] = list(batch["id"])


@pytest.mark.parametrize("stop", [3, 4])  # mid-epoch, and at the end of the first epoch (4 batches per epoch)
def test_resumed_run_on_the_datamodule_trains_on_the_uninterrupted_runs_batches(tmp_path, embedded_data, stop):
    """The real DataModule, one loader worker: a run stopped at `stop` and resumed to 6 steps sees the batches the
    uninterrupted run saw and ends with its weights, bit for bit. (Before the sampler followed the trainer's global
    step, a resumed run started its epoch over, and Lightning's restarted loop cut the next epoch short.)"""
    over = [f"data.root={embedded_data}", "data.crop=32", "data.batch_size=2", "data.samples_per_epoch=8",
            "data.num_workers=1", "data.val_fraction=0.25", "codec.kind=linear", "codec.fit_batches=2",
            "train.max_steps=6", f"train.val_every={stop}", "train.accelerator=cpu"]  # a checkpoint at `stop`
    full_ids, resumed_ids = BatchIds(), BatchIds()
    full, _, _ = run_training(cfg_for(tmp_path, *over, "train.name=full"),
                              trainer_kwargs={**QUIET, "callbacks": [full_ids]}, log=lambda *_: None)
    part = cfg_for(tmp_path, *over, "train.name=part")
    run_training(part, trainer_kwargs={**QUIET, "max_steps": stop}, log=lambda *_: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*resuming from a checkpoint that ended before the epoch ended")
        resumed, trainer, _ = run_training(part, resume="last", trainer_kwargs={**QUIET, "callbacks": [resumed_ids]},
                                           log=lambda *_: None)
    assert trainer.global_step == 6
    assert resumed_ids.ids == {g: ids for g, ids in full_ids.ids.items() if g >= stop}
    assert [i.split("@")[1] for i in full_ids.ids[4]] == ["1:0", "1:1"]  # epoch 1 starts at step 4
    wf, wr = weights(full), weights(resumed)
    assert wf.keys() == wr.keys()
    for k in wf:
        torch.testing.assert_close(wr[k], wf[k], rtol=0, atol=0, msg=k)


def test_compiled_training_matches_plain_training_and_keeps_the_checkpoint_keys(tmp_path, text):
    """`mmaif train --compile`: the blocks' forward and backward run as compiled graphs (AOT autograd, the path
    inductor takes; the nop compilers here count the graphs instead of generating code), the weights after 4
    steps are those of the plain run, and the checkpoint has the plain model's keys and loads without compile."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {"forward": 0, "backward": 0}

    def counting(kind):
        def compiler(gm, example_inputs):
            graphs[kind] += 1
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward"))
    runs = {}
    torch._dynamo.reset()
    try:
        for name, mode in (("plain", None), ("compiled", "default")):
            runs[name] = run_training(cfg_for(tmp_path, "train.max_steps=4", f"train.name={name}"), datamodule=TinyDM(),
                                      trainer_kwargs=QUIET, log=lambda *_: None, compile_mode=mode,
                                      compile_backend=backend)
    finally:
        torch._dynamo.reset()
    (plain, _, _), (compiled, trainer, run) = runs["plain"], runs["compiled"]
    assert trainer.global_step == 4  # a multiple of val_every: last.ckpt holds the final weights
    assert all(block._compiled_call_impl is not None for block in compiled.dit.blocks)
    # block 0 (no value residual), block 1 (mixes block 0's values) and the final layer: forward and backward each
    assert graphs["forward"] >= 3 and graphs["backward"] >= 3, graphs
    assert_same_weights(compiled, plain)
    assert json.loads((run / "train_summary.json").read_text())["compile"] == "default"
    loaded = load_module(run / "checkpoints" / "last.ckpt", text=text)
    assert loaded.dit.blocks[0]._compiled_call_impl is None
    b = batch()
    torch.testing.assert_close(loaded.fuse(b["a"], b["b"], b["prompt"]), compiled.fuse(b["a"], b["b"], b["prompt"]))


def test_training_codec_switches_keep_the_weights_and_refuse_bf16_off_the_gpu(tmp_path, text):
    """`mmaif train --channels-last` with a learned codec: its convolutions train-time channels-last, the weights
    after 2 steps those of the plain run, the summary says so. `--codec-bf16` (CUDA autocast) on a CPU run is
    refused before anything is written."""
    codec = LatentCodec("tiny", 4, 16, [8, 8, 8], [0, 1, 1])
    codec.fit_linear([torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
    codec.save(tmp_path / "codec")
    over = [f"codec.path={tmp_path / 'codec'}", "codec.kind=tiny", "train.max_steps=2"]
    with pytest.raises(UserError, match="--codec-bf16 runs the codec under bf16 autocast on a GPU"):
        run_training(cfg_for(tmp_path, *over, "train.name=bf16", "train.accelerator=cpu"), codec_bf16=True,
                     datamodule=TinyDM(), trainer_kwargs=QUIET, log=lambda *_: None)
    assert not (tmp_path / "bf16").exists()
    plain, _, _ = run_training(cfg_for(tmp_path, *over, "train.name=plain"), datamodule=TinyDM(),
                               trainer_kwargs=QUIET, log=lambda *_: None)
    fast, _, run = run_training(cfg_for(tmp_path, *over, "train.name=fast"), datamodule=TinyDM(),
                                trainer_kwargs=QUIET, log=lambda *_: None, channels_last=True)
    convs = [m.weight for m in fast.codec.ae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert_same_weights(fast, plain)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["channels_last"] is True and "codec_bf16" not in summary and "compile" not in summary


def test_train_command_hands_its_compile_mode_to_the_run(monkeypatch, capsys):
    from mmaif_pl import cli
    from mmaif_pl.lit import commands

    seen = {}
    monkeypatch.setattr(commands, "run_training", lambda cfg, **kwargs: seen.update(kwargs))
    assert cli.main(["train", "--compile", "max-autotune", "train.name=x"]) == 0
    assert seen == {"resume": None, "compile_mode": "max-autotune", "codec_bf16": False, "channels_last": False}
    assert cli.main(["train", "--codec-bf16", "--channels-last", "train.name=x"]) == 0
    assert seen == {"resume": None, "compile_mode": None, "codec_bf16": True, "channels_last": True}
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2, the valid modes listed
        cli.main(["train", "--compile", "fast"])
    assert exc.value.code == 2 and "max-autotune-no-cudagraphs" in capsys.readouterr().err


def test_train_builds_its_datamodule_with_the_images_its_loss_reads(monkeypatch, tmp_path):
    from mmaif_pl.lit import commands

    seen = []

    class Built(Exception):
        pass

    def datamodule(cfg, **kwargs):
        seen.append(kwargs)
        raise Built

    monkeypatch.setattr(commands, "_datamodule", datamodule)
    for aux in (0.0, 0.1):
        with pytest.raises(Built):
            run_training(cfg_for(tmp_path, f"train.aux_weight={aux}"))
    assert seen == [{"train_keys": ("a", "b", "target")}, {"train_keys": ("a", "b", "target", "a_clean", "b_clean")}]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.ckpt"
    with open(bad, "wb") as fh:
        pickle.dump({"mmaif": {}, "state_dict": _Payload(str(marker))}, fh)
    torch.save({"mmaif": {}, "x": _Payload(str(marker))}, tmp_path / "bad2.ckpt")
    for path in (bad, tmp_path / "bad2.ckpt"):
        with pytest.raises(UserError, match="refused"):
            read_checkpoint(path)
    assert not marker.exists()


def test_source_skip_makes_the_untrained_regression_model_average_fusion():
    """With `model.source_skip` and the zero-initialised output layer, step 0 predicts the latent mean."""
    import torch
    from mmaif_pl.config import load
    from mmaif_pl.lit.fusion import RegressionFusion
    from mmaif_pl.models.codec import LatentCodec
    from mmaif_pl.models.text import TextEncoder

    cfg = load([], ["model.source_skip=true"])
    codec = LatentCodec(kind="linear", factor=4, channels=16)
    codec.fit_linear([torch.rand(2, 3, 32, 32)])
    module = RegressionFusion(cfg, codec, TextEncoder())
    z_a, z_b = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    cond = module.embed_text(["Remove the rain."])
    z_hat, _ = module.predict(z_a, z_b, cond)
    assert torch.allclose(z_hat, (z_a + z_b) / 2)
    cfg_off = load([], ["model.source_skip=false"])
    z_off, _ = RegressionFusion(cfg_off, codec, TextEncoder()).predict(z_a, z_b, cond)
    assert torch.allclose(z_off, torch.zeros_like(z_off))


def flow_module(codec, *overrides):
    from mmaif_pl.lit.fusion import FlowFusion

    return FlowFusion(load([], ["train.variant=flow", "model.source_skip=true", *overrides]), codec, TextEncoder())


def test_flow_starts_from_the_source_prior_with_prior_noise_spread():
    """noise = (z_a + z_b) / 2 + sigma e: the start's mean is the prior and its spread is `model.prior_noise`;
    sigma = 0 makes a one-step sample of the untrained model exactly average fusion; sigma < 0 is refused."""
    codec = LatentCodec(kind="linear", factor=4, channels=16)
    codec.fit_linear([torch.rand(2, 3, 32, 32)])
    z_a, z_b = torch.randn(4, 16, 16, 16), torch.randn(4, 16, 16, 16)
    prior = (z_a + z_b) / 2
    for sigma in (1.0, 0.2):
        module = flow_module(codec, f"model.prior_noise={sigma}")
        spread = module.start(z_a, z_b, torch.Generator().manual_seed(0)) - prior
        assert abs(spread.mean().item()) < 0.05 * sigma
        assert spread.std().item() == pytest.approx(sigma, rel=0.05)
    module = flow_module(codec, "model.prior_noise=0")
    cond = module.embed_text(["Fuse the two exposures."])
    assert torch.allclose(module.sample(z_a, z_b, cond, steps=1), prior)
    with pytest.raises(UserError, match="model.prior_noise"):
        flow_module(codec, "model.prior_noise=-0.1")


def test_flow_data_prediction_starts_as_average_fusion_and_is_validated():
    """`model.prediction=data` with source_skip: the untrained (zero output) model predicts x1 = prior, so a
    one-step sample is average fusion whatever the start noise; an unknown prediction is refused by key."""
    codec = LatentCodec(kind="linear", factor=4, channels=16)
    codec.fit_linear([torch.rand(2, 3, 32, 32)])
    z_a, z_b = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    module = flow_module(codec, "model.prediction=data")
    cond = module.embed_text(["Fuse the two exposures.", "Remove the rain."])
    one_step = module.sample(z_a, z_b, cond, steps=1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(one_step, (z_a + z_b) / 2)
    with pytest.raises(UserError, match="model.prediction"):
        flow_module(codec, "model.prediction=epsilon")


@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_training_reads_nothing_back_from_the_device_between_log_steps(tmp_path, codec, text, variant):
    """7 steps, logs written every 3rd (Lightning writes them after steps 2 and 5, reading the logged values):
    no other step reads a value back, across epoch boundaries (2 batches per epoch). The progress bar's loss
    would otherwise be read at every step."""
    reads = HostReads()
    cfg = cfg_for(tmp_path, f"train.variant={variant}", "train.max_steps=7", "train.val_every=100",
                  "train.log_every=3", f"codec.path={tmp_path / 'codec'}")
    codec.save(tmp_path / "codec")
    with reads:
        run_training(cfg, datamodule=TinyDM(), trainer_kwargs={**QUIET, "callbacks": [reads.steps()]})
    assert {2, 5} <= set(reads.reads) <= {0, 2, 5}, reads.reads  # step 0: the prompts' first encoding


def test_update_ema_is_the_per_parameter_lerp():
    """The multi-tensor EMA update gives, bit for bit on a CPU, DiT's loop of one lerp per parameter (what
    the committed runs were trained with), at the warm-up decays and the 0.5 where lerp switches formula."""
    import copy

    from mmaif_pl.lit.callbacks import ema_decay, update_ema
    from mmaif_pl.models.dit import DiTSpec, FusionDiT

    torch.manual_seed(0)
    model = FusionDiT(16, 2, 384, DiTSpec.from_config(load([], []).model), timestep=False)
    loop_ema, ema = copy.deepcopy(model), copy.deepcopy(model)
    for decay in [ema_decay(step, 0.999) for step in (0, 1, 8, 100_000)] + [0.5]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            for e, p in zip(loop_ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        update_ema(ema, model, decay)
    assert all(torch.equal(a, b) for a, b in zip(loop_ema.parameters(), ema.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), ema.parameters()))


def test_fused_adamw_is_chosen_on_cuda_without_a_grad_scaler():
    from mmaif_pl.lit.fusion import use_fused_adamw

    assert use_fused_adamw(torch.device("cuda", 0), None)
    assert not use_fused_adamw(torch.device("cuda", 0), torch.amp.GradScaler("cpu"))  # 16-mixed: it would unscale
    assert not use_fused_adamw(torch.device("cpu"), None)  # the CPU runs keep torch's default


def train_bf16_mixed(tmp_path, monkeypatch, switch: str, value, *over, trainer_kwargs=QUIET, **kwargs):
    """`run_training` under bf16-mixed on the CPU (as a GPU run trains), with FusionModule's class-level switch set
    to `value` for the run."""
    from mmaif_pl.lit.fusion import FusionModule

    monkeypatch.setattr(FusionModule, switch, value)
    cfg = cfg_for(tmp_path, "train.precision=bf16-mixed", *over)
    return run_training(cfg, datamodule=TinyDM(), trainer_kwargs=trainer_kwargs, log=lambda *_: None, **kwargs)


def test_fused_adamw_trains_under_bf16_mixed_with_lightnings_clipping(tmp_path, codec, text, monkeypatch):
    """The fused AdamW as `mmaif train` takes it on a GPU (bf16-mixed, gradient clipping on), run here on the CPU:
    Lightning's mixed-precision plugin refuses to clip for it, so the module clips itself, by norm, before the
    step; 4 steps give the weights of the default AdamW within float tolerance."""
    clip = 1e-3  # far below these gradients' norms: every step clips
    norms = []

    class RecordClippedNorms(L.Callback):  # the gradients the step used: Lightning clears them at the next step
        def on_train_batch_end(self, trainer, pl_module, *_):
            grads = [p.grad for p in pl_module.dit.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    runs = {}
    for fused in (False, True):
        module, trainer, _ = train_bf16_mixed(tmp_path, monkeypatch, "fused_adamw", fused, "train.max_steps=4",
                                              f"train.name=fused_{fused}", f"train.grad_clip={clip}",
                                              trainer_kwargs={**QUIET, "callbacks": [RecordClippedNorms()]})
        assert trainer.optimizers[0].defaults["fused"] is (True if fused else None)
        runs[fused] = module
    assert len(norms) == 8 and all(n <= clip * (1 + 1e-3) for n in norms), norms
    assert_same_weights(runs[True], runs[False])


@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_one_cast_of_the_matmul_weights_trains_the_same_bits_as_autocast(tmp_path, codec, text, monkeypatch, variant):
    """bf16-mixed, as `mmaif train` runs on a GPU: the training DiT on bf16 copies of its matmul weights made in one
    multi-tensor cast per step (lit/matmul_weights.py) against autocast casting each weight itself. 4 steps give
    the same weights and optimizer state, bit for bit."""
    runs = {}
    for cast in (False, True):
        module, trainer, _ = train_bf16_mixed(tmp_path, monkeypatch, "cast_matmul_weights", cast,
                                              f"train.variant={variant}", "train.max_steps=4",
                                              f"train.name={variant}_{cast}", "train.val_every=100")
        runs[cast] = (weights(module), trainer.optimizers[0].state_dict()["state"])
        assert (getattr(module, "_matmul_casts", None) is not None) == cast
    # left to choose, a CPU run keeps autocast's casts: torch copies between dtypes there one tensor at a time
    module, _, _ = train_bf16_mixed(tmp_path, monkeypatch, "cast_matmul_weights", None, f"train.variant={variant}",
                                    "train.max_steps=1", f"train.name={variant}_auto", "train.val_every=100")
    assert getattr(module, "_matmul_casts", None) is None
    (plain, plain_opt), (cast, cast_opt) = runs[False], runs[True]
    assert plain.keys() == cast.keys() and all(torch.equal(plain[k], cast[k]) for k in plain)
    assert all(torch.equal(plain_opt[i][k], cast_opt[i][k]) for i in plain_opt for k in plain_opt[i])


def test_one_cast_of_the_matmul_weights_under_compiled_training(tmp_path, text, monkeypatch):
    """`mmaif train --compile` under bf16-mixed: the compiled blocks run on the one-cast bf16 copies (each
    block's put in by its pre-hook) and train the bits of the per-weight casts (aot_eager: AOT autograd's graphs
    run eagerly)."""
    runs = {}
    try:
        for cast in (False, True):
            torch._dynamo.reset()
            module, _, _ = train_bf16_mixed(tmp_path, monkeypatch, "cast_matmul_weights", cast, "train.max_steps=2",
                                            f"train.name=compiled_{cast}", "train.val_every=100",
                                            compile_mode="default", compile_backend="aot_eager")
            assert all(block._compiled_call_impl is not None for block in module.dit.blocks)
            runs[cast] = weights(module)
    finally:
        torch._dynamo.reset()
    assert all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])


def test_cast_matmul_weights_gives_autocasts_gradients_and_leaves_unused_ones_none():
    from mmaif_pl.lit.matmul_weights import CastMatmulWeights, matmul_parameters

    class TwoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
            self.gain = torch.nn.Parameter(torch.ones(8))  # not a matmul weight: stays float32 in the forward

        def forward(self, x):
            return self.used(x) * self.gain

    torch.manual_seed(0)
    model, x = TwoLayers(), torch.randn(4, 8)
    assert [n for n, _ in matmul_parameters(model)] == ["used.weight", "used.bias", "unused.weight", "unused.bias"]
    grads = {}
    for name, call in (("autocast", model), ("cast", CastMatmulWeights(model))):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call(x)
        out.float().square().sum().backward()
        grads[name] = (out, {n: p.grad for n, p in model.named_parameters()})
    (ref, ref_grads), (out, cast_grads) = grads["autocast"], grads["cast"]
    assert torch.equal(out, ref) and out.dtype == ref.dtype
    assert cast_grads["unused.weight"] is None and cast_grads["unused.bias"] is None
    for n in ("used.weight", "used.bias", "gain"):
        assert cast_grads[n].dtype == torch.float32 and torch.equal(cast_grads[n], ref_grads[n]), n
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the masters are untouched
    # parameters replaced after the wrapper was made: it follows them, the gradients reach the new ones
    call = CastMatmulWeights(model)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        call(x).float().sum().backward()
    assert model.used.weight.grad is not None


def test_a_replaced_dit_gets_new_casts_and_the_old_one_loses_its_hooks(codec):
    """training_denoiser makes CastMatmulWeights once per DiT object: a DiT put in place of the trained one gets
    its own, and the old DiT's blocks keep no hooks of the old one (they pointed at a module no step uses)."""
    from mmaif_pl.lit.matmul_weights import dit_units
    from mmaif_pl.models.dit import FusionDiT

    module = flow_module(codec, "model.preset=tiny")
    module.cast_matmul_weights = True
    hooked = lambda dit: [u for u in dit_units(dit) if u._forward_pre_hooks or u._forward_hooks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = module.training_denoiser()
        assert module.training_denoiser() is first and len(hooked(module.dit)) == len(dit_units(module.dit))
        old = module.dit
        module.dit = FusionDiT(old.latent_channels, old.n_inputs, 384, old.spec, timestep=True)
        second = module.training_denoiser()
    assert second is not first and second.module is module.dit
    assert hooked(old) == [] and len(hooked(module.dit)) == len(dit_units(module.dit))


def test_each_blocks_float32_gradients_are_ready_when_its_backward_ends():
    """DDP all-reduces a bucket of gradients once they are accumulated into the float32 masters. The casts made per
    block (CastMatmulWeights' units) widen a block's gradients before the backward of the block below starts; one cast
    of every weight before the forward widened them all after the last block's backward, so nothing overlapped."""
    from mmaif_pl.lit.matmul_weights import CastMatmulWeights, dit_units, matmul_parameters
    from mmaif_pl.models.dit import DiTSpec, FusionDiT

    torch.manual_seed(0)
    dit = FusionDiT(16, 3, 384, DiTSpec.from_config(load([], ["model.preset=tiny"]).model), timestep=True)
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.02)
    events = []
    units = dit_units(dit)
    for i, unit in enumerate(units):
        unit.register_full_backward_pre_hook(lambda m, g, i=i: events.append(("backward", i)))
        for _, p in matmul_parameters(unit):
            p.register_post_accumulate_grad_hook(lambda p, i=i: events.append(("ready", i)))
    masters = dict(dit.named_parameters())
    x, text, t = torch.randn(2, 48, 8, 8), torch.randn(2, 384), torch.rand(2)
    for per_unit in (True, False):
        events.clear()
        call = CastMatmulWeights(dit, units=units if per_unit else ())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, aux = call(x, text, t)
        (out.float().square().mean() + aux).backward()
        call.remove()
        last_ready = {i: max(k for k, e in enumerate(events) if e == ("ready", i)) for i in range(len(units))}
        start = {i: events.index(("backward", i)) for i in range(len(units))}
        # unit i's gradients all ready before unit i - 1's backward starts (the final layer is the last unit)
        in_turn = all(last_ready[i] < start[i - 1] for i in range(1, len(units)))
        assert in_turn == per_unit, events
        assert dict(dit.named_parameters()) == masters  # the masters are back in place, as Parameters
        assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in masters.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_cast_of_the_matmul_weights_on_the_gpu_matches_autocast():
    """CUDA's autocast (its own op lists) against the one-cast copies, the flow DiT with every block part: the
    same forward bits; gradients within the run-to-run noise of atomics (a bf16 rounding, 4e-3, would not pass)."""
    from mmaif_pl.lit.matmul_weights import CastMatmulWeights, dit_units
    from mmaif_pl.models.dit import DiTSpec, FusionDiT

    torch.manual_seed(0)
    spec = DiTSpec.from_config(load([], ["model.preset=tiny"]).model)
    dit = FusionDiT(16, 3, 384, spec, timestep=True).cuda()
    for p in dit.parameters():  # random weights everywhere (zero-initialised layers would hide a wrong cast)
        torch.nn.init.normal_(p, std=0.02)
    x, text = torch.randn(2, 48, 16, 16, device="cuda"), torch.randn(2, 384, device="cuda")
    t = torch.rand(2, device="cuda")
    results = {}
    for name, call in (("autocast", dit), ("cast", CastMatmulWeights(dit, units=dit_units(dit)))):
        dit.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, aux = call(x, text, t)
        (out.float().square().mean() + aux).backward()
        results[name] = (out.detach(), {n: p.grad.clone() for n, p in dit.named_parameters() if p.grad is not None})
    (ref, ref_grads), (out, grads) = results["autocast"], results["cast"]
    assert torch.equal(out, ref)
    assert grads.keys() == ref_grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("limit, shown", [({"max_steps": 3}, "Epoch 1"), ({"max_epochs": 2}, "Epoch 1/1")])
def test_the_progress_bar_shows_no_negative_epoch_total(limit, shown):
    """Every run here is bounded by its steps, for which Lightning sets max_epochs=-1, and Lightning 2.6.6's rich bar
    then showed "Epoch 1/-2". checked_trainer's bar shows "Epoch 1"; a run bounded by epochs keeps its total."""
    pytest.importorskip("rich")
    from mmaif_pl.lit.trainer import checked_trainer

    class Linear(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = checked_trainer("test", logger=False, accelerator="cpu", enable_checkpointing=False,
                              enable_model_summary=False, **limit)
    trainer.fit(Linear(), torch.utils.data.DataLoader(torch.randn(4, 2), batch_size=2))
    assert trainer.global_step == limit.get("max_steps", 4)  # two epochs of two batches, or three steps
    assert trainer.progress_bar_callback._get_train_description(1).rstrip() == shown
