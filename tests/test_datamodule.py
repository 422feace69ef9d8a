"""The DataModule: batch format, determinism across workers / epochs / resumes, buckets, prepared splits."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mmaif_pl import config
from mmaif_pl.data import datamodule
from mmaif_pl.data.datamodule import (IMAGE_KEYS, EpochSampler, FusionDataModule, FusionDataset, PreparedDataset,
                                      crop_size)
from mmaif_pl.errors import ConfigError, UserError

from conftest import shared_dataset


def _cfg(root, *extra):
    return config.load([], [f"data.root={root}", "data.batch_size=3", "data.samples_per_epoch=9", "data.crop=64",
                            "data.buckets=[[1,1],[4,3],[3,4]]", *extra])


def _batches(cfg, epoch=0):
    dm = FusionDataModule(cfg)
    dl = dm.train_dataloader()
    dl.sampler.set_epoch(epoch)
    return list(dl)


def _same(b1, b2):
    assert len(b1) == len(b2)
    for x, y in zip(b1, b2):
        assert x.keys() == y.keys()
        for k in x:
            if torch.is_tensor(x[k]):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def test_batch_format(embedded_data):
    cfg = _cfg(embedded_data)
    batches = _batches(cfg)
    assert len(batches) == 3
    m = cfg.codec.factor * cfg.model.patch
    for b in batches:
        for k in ("a", "b", "a_clean", "b_clean", "target"):
            t = b[k]
            assert t.dtype == torch.float32 and t.ndim == 4 and t.shape[:2] == (3, 3)
            assert t.shape[2] % m == 0 and t.shape[3] % m == 0 and 0 <= t.min() and t.max() <= 1
        assert len(b["prompt"]) == len(b["task"]) == len(b["degradations"]) == len(b["id"]) == 3
        assert all(isinstance(p, str) and p.endswith(".") for p in b["prompt"])
        assert set(b["task"]) <= {"vif", "mef", "mff"}
        for recs in b["degradations"]:
            for r in recs:
                assert set(r) == {"name", "params", "source", "severity"}


def test_same_batches_with_0_and_2_workers(embedded_data):
    _same(_batches(_cfg(embedded_data, "data.num_workers=0")), _batches(_cfg(embedded_data, "data.num_workers=2")))


def report_from_collate(monkeypatch, key, probe):
    """Every batch carries batch[key] = probe(batch), computed where the batch is collated: in the loader's
    workers, which fork with this patch in place, or in this process without workers."""
    collate = datamodule.collate

    def collate_and_probe(samples):
        batch = collate(samples)
        batch[key] = probe(batch)
        return batch

    monkeypatch.setattr(datamodule, "collate", collate_and_probe)


def test_loader_workers_run_opencv_on_one_thread_and_this_process_keeps_its_pool(embedded_data, monkeypatch):
    """Each worker makes whole samples on one core: OpenCV's pool of one thread per core in every worker would run
    workers x cores threads beside the main process. The count is set before the fork (a forked worker that sets it
    deadlocks once this process has used the pool, as it has here), on the training and the validation loader."""
    report_from_collate(monkeypatch, "opencv_threads", lambda batch: cv2.getNumThreads())
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)  # a pool of several threads on any machine, used before the workers fork
    try:
        cv2.GaussianBlur(np.random.rand(1024, 1024, 3).astype(np.float32), (0, 0), 3.0)
        dm = FusionDataModule(_cfg(embedded_data, "data.num_workers=2", "data.val_fraction=0.5"))  # val on the fly
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            threads = [b["opencv_threads"] for epoch in range(2) for b in loader]  # the second: persistent workers
            assert threads and set(threads) == {1}, threads
            assert cv2.getNumThreads() == 3  # this process's own pool is left as it was
        serial = FusionDataModule(_cfg(embedded_data, "data.num_workers=0")).train_dataloader()
        assert {b["opencv_threads"] for b in serial} == {3}  # no workers: the samples use this process's pool
    finally:
        cv2.setNumThreads(before)


def test_workers_stack_batches_straight_into_shared_memory(embedded_data, monkeypatch):
    """A worker's batch reaches the main process through shared memory: stacked there at once, it is not copied
    there again when it is sent. The images are the bits of a batch made without workers."""
    report_from_collate(monkeypatch, "shared", lambda batch: [batch[k].is_shared() for k in IMAGE_KEYS if k in batch])
    with_workers = _batches(_cfg(embedded_data, "data.num_workers=2"))
    assert all(b.pop("shared") == [True] * 5 for b in with_workers)
    without = _batches(_cfg(embedded_data, "data.num_workers=0"))
    assert all(b.pop("shared") == [False] * 5 for b in without)  # in this process: plain memory
    _same(with_workers, without)


def test_training_batches_carry_only_the_images_the_loss_reads(embedded_data):
    """`mmaif train` ships a, b and target (no clean sources without the aux loss): the same tensors, prompts and
    records as the full batches, bit for bit (the clean sources draw nothing from the sample's generator)."""
    from mmaif_pl.lit.fusion import FusionModule

    cfg = _cfg(embedded_data, "data.num_workers=2")
    keys = FusionModule.training_image_keys(cfg)
    assert keys == ("a", "b", "target")
    assert set(FusionModule.training_image_keys(_cfg(embedded_data, "train.aux_weight=0.1"))) == set(IMAGE_KEYS)
    dm = FusionDataModule(cfg, train_keys=keys)
    lean, full = list(dm.train_dataloader()), _batches(cfg)
    assert [k for k in lean[0] if torch.is_tensor(lean[0][k])] == ["a", "b", "target"]
    _same(lean, [{k: v for k, v in b.items() if k not in ("a_clean", "b_clean")} for b in full])
    dm = FusionDataModule(_cfg(embedded_data, "data.val_fraction=0.5"), train_keys=keys)
    dm.setup("fit")
    dm.setup("validate")  # validation keeps every image
    assert set(IMAGE_KEYS) <= set(dm.val_set[0]) and "a_clean" not in dm.train_set[0]
    with pytest.raises(ValueError, match="subset"):
        FusionDataset(cfg, image_keys=("a", "b"))


def test_epochs_differ_and_replay_identically(embedded_data):
    cfg = _cfg(embedded_data)
    e0, e1 = _batches(cfg, 0), _batches(cfg, 1)
    assert not torch.equal(e0[0]["a"], e1[0]["a"]) or e0[0]["prompt"] != e1[0]["prompt"]
    _same(e1, _batches(cfg, 1))  # a resumed run at epoch 1 sees the same samples
    other_seed = _batches(_cfg(embedded_data, "data.seed=5"), 0)
    assert any(x["id"] != y["id"] for x, y in zip(e0, other_seed))


def test_sample_depends_only_on_epoch_and_index(embedded_data):
    ds = FusionDataset(_cfg(embedded_data))
    late = ds[(3, 7)]
    ds[(0, 1)], ds[(3, 2)]  # other samples in between change nothing
    again = FusionDataset(_cfg(embedded_data))[(3, 7)]
    assert torch.equal(late["a"], again["a"]) and late["prompt"] == again["prompt"]


def test_cached_pairs_give_the_samples_decoded_pairs_give(embedded_data):
    """A cache hit crops the stored uint16 pair and converts only the crop (then flips it with OpenCV); a miss crops
    the decoded float32 pair. For 8-bit sources both are the same samples, bit for bit, flipped or not."""
    cached = FusionDataset(_cfg(embedded_data, "data.flip=true"))
    uncached = FusionDataset(_cfg(embedded_data, "data.flip=true", "data.cache_mb=0"))
    keys = [(e, i) for e in range(3) for i in range(9)]
    for key in keys:  # the first pass fills the cache; the second reads every pair from it
        cached[key]
    assert cached._cache.items and not uncached._cache.items
    assert all(x.dtype == np.uint16 for pair in cached._cache.items.values() for x in pair)
    for key in keys:
        hit, miss = cached[key], uncached[key]
        for k in cached.image_keys:
            assert hit[k].is_contiguous() and torch.equal(hit[k], miss[k]), (key, k)


def test_buckets_and_crop_sizes(embedded_data):
    assert crop_size([1, 1], 64, 8, (500, 500)) == (64, 64)
    h, w = crop_size([16, 9], 128, 16, (1000, 1000))
    assert h % 16 == 0 and w % 16 == 0 and w > h and abs(h * w - 128**2) < 0.2 * 128**2
    assert crop_size([1, 1], 512, 8, (100, 300)) == (96, 96)  # never larger than the image
    shapes = {tuple(b["a"].shape[2:]) for b in _batches(_cfg(embedded_data, "data.samples_per_epoch=30"))}
    assert len(shapes) >= 2


def test_epoch_sampler_shards_whole_batches():
    s0, s1 = EpochSampler(10, 3, num_replicas=2, rank=0), EpochSampler(10, 3, num_replicas=2, rank=1)
    s0.set_epoch(4)
    assert list(s0) == [(4, i) for i in (0, 1, 2, 6, 7, 8)]
    assert [i for _, i in s1] == [3, 4, 5, 9]
    # 9 samples of 3 are 3 batches: 2 ranks get one each (a second batch for rank 0 would stall rank 1's step)
    assert [list(EpochSampler(9, 3, num_replicas=2, rank=r)) for r in (0, 1)] == [[(0, 0), (0, 1), (0, 2)],
                                                                                 [(0, 3), (0, 4), (0, 5)]]
    with pytest.raises(ConfigError, match="data.samples_per_epoch = 3 makes 1 batches"):
        EpochSampler(3, 3, num_replicas=2, rank=0)


def test_epoch_sampler_follows_the_batches_trained():
    """With `position` (the trainer's global step) the keys are those of the run's next batch on: a resumed run's
    first iterator continues its epoch, and the epoch Lightning passes to set_epoch does not matter."""
    done = {"n": 0}
    s = EpochSampler(10, 3, num_replicas=2, rank=1, position=lambda: done["n"])  # 2 batches per rank and epoch
    s.set_epoch(7)
    assert list(s) == [(0, 3), (0, 4), (0, 5), (0, 9)]
    done["n"] = 1  # one batch trained: the rest of epoch 0
    assert list(s) == [(0, 9)]
    done["n"] = 5  # epoch 2, its second batch
    assert list(s) == [(2, 9)]
    assert len(s) == 4  # Lightning's batches per epoch stay the whole epoch's


def test_task_weights_mix(embedded_data):
    ds = FusionDataset(_cfg(embedded_data, "data.task_weights={vif: 0.0, mef: 3.0, mff: 1.0}"), length=200)
    tasks = [ds.groups[int(ds.rng(0, i).choice(len(ds.groups), p=ds.probs))].task for i in range(200)]
    assert "vif" not in tasks and 0.6 < tasks.count("mef") / 200 < 0.9


def test_config_errors(embedded_data, tmp_path):
    with pytest.raises(ConfigError, match="'fog' in degrade.operators"):
        FusionDataModule(_cfg(embedded_data, "degrade.operators={fog: 1.0}"))
    with pytest.raises(ConfigError, match="unknown task 'ir'"):
        FusionDataset(_cfg(embedded_data, "data.task_weights={ir: 1.0}"))
    with pytest.raises(UserError, match="does not exist"):
        FusionDataset(_cfg(tmp_path / "nothing"))
    with pytest.raises(UserError, match="mmaif data prepare"):
        FusionDataModule(_cfg(embedded_data, f"data.prepared={tmp_path}")).val_dataloader()


def test_prepare_and_read_back(embedded_data, tmp_path, capsys):
    from mmaif_pl.cli import main

    out = tmp_path / "prepared"
    args = ["data", "prepare", f"data.root={embedded_data}", "data.test_per_operator=1", "data.test_combos=1",
            "data.val_samples=2", "--out", str(out)]
    assert main(args) == 0
    assert f"to {out}" in capsys.readouterr().out
    index = json.loads((out / "test" / "index.json").read_text())
    samples = index["samples"]
    assert {s["n_degradations"] for s in samples} == {0, 1, 2, 3}
    singles = {(s["task"], s["degradations"][0]["name"], s["severity"]) for s in samples if s["n_degradations"] == 1}
    assert ("vif", "ir_stripes", "heavy") in singles and ("mef", "haze", "mild") in singles
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".prepared")]  # temp folder gone
    first = json.loads((out / "test" / "index.json").read_text())
    assert main(args) == 0  # re-running replaces the split with identical content
    assert json.loads((out / "test" / "index.json").read_text()) == first

    cfg = _cfg(embedded_data, f"data.prepared={out}")
    dm = FusionDataModule(cfg)
    batch = next(iter(dm.test_dataloader()))
    assert batch["a"].shape[1] == 3 and batch["id"][0] == samples[0]["id"]
    assert batch["prompt"][0] == samples[0]["prompt"]
    val = list(dm.val_dataloader())
    assert sum(len(b["id"]) for b in val) == 6
    ds = PreparedDataset(out / "test")
    item = ds[0]
    a = item["a"].numpy().transpose(1, 2, 0)
    assert a.shape[0] % 8 == 0 and a.shape[1] % 8 == 0


def test_prepare_draws_the_splits_from_the_configured_datasets(embedded_data, tmp_path, capsys):
    """With data.datasets set, the frozen splits come from those datasets, test pairs from their test split and
    validation pairs from their training split (they came from data.root whatever training read); --root still
    picks one folder; --task goes with --root; a missing root is named and nothing is written."""
    from mmaif_pl.cli import main

    out = tmp_path / "prepared"
    entries = f"data.datasets=[{{root: '{embedded_data / 'vif'}'}}, {{root: '{embedded_data / 'mef'}', task: mef}}]"
    small = ["data.test_per_operator=1", "data.test_combos=1", "data.val_samples=2"]
    args = ["data", "prepare", f"data.root={tmp_path / 'absent'}", entries, *small, "--out", str(out)]
    assert main(args) == 0
    assert f"from {embedded_data / 'vif'}, {embedded_data / 'mef'} ..." in capsys.readouterr().err
    for split, names in (("val", "_train_"), ("test", "_test_")):
        samples = json.loads((out / split / "index.json").read_text())["samples"]
        assert {s["task"] for s in samples} == {"vif", "mef"}, split
        assert all(names in s["source_name"] for s in samples), split

    assert main(["data", "prepare", entries, *small, "--root", str(embedded_data / "mff"), "--splits", "test",
                 "--out", str(out)]) == 0
    assert {s["task"] for s in json.loads((out / "test" / "index.json").read_text())["samples"]} == {"mff"}

    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["data", "prepare", entries, "--task", "mef", "--out", str(out)]) == 1
    assert "--task goes with --root" in capsys.readouterr().err
    missing = f"data.datasets=[{{root: '{embedded_data / 'vif'}'}}, {{root: '{tmp_path / 'nowhere'}'}}]"
    assert main(["data", "prepare", missing, "--out", str(tmp_path / "other")]) == 1
    assert f"dataset folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == written


def test_preview_writes_a_grid(embedded_data, tmp_path, capsys):
    from PIL import Image

    from mmaif_pl.cli import main

    out = tmp_path / "grid.png"
    assert main(["data", "preview", f"data.root={embedded_data}", "--operator", "ir_stripes", "--severity", "heavy",
                 "-n", "2", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 5 * 64
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # written whole: no temporary file left

    # an extension Pillow does not know: a one-line error naming the file, before any sampling, nothing written
    assert main(["data", "preview", f"data.root={embedded_data}", "--out", str(tmp_path / "grid.pgn")]) == 1
    assert "grid.pgn: unknown image extension '.pgn'" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_real_pairs_without_gt_get_teacher_targets(tmp_path):
    root = shared_dataset("mef/MEFB")
    cfg = config.load([], [f"data.root={root}", "data.crop=64", "data.samples_per_epoch=2", "data.batch_size=2",
                           "data.datasets=[{root: '" + str(root) + "', task: mef, split: null}]"])
    batch = next(iter(FusionDataModule(cfg).train_dataloader()))
    assert batch["task"] == ["mef", "mef"] and batch["target"].shape == batch["a"].shape
    assert not torch.equal(batch["target"], batch["a_clean"])


def test_real_mef_teacher_target_is_a_plausible_image():
    root = shared_dataset("mef/MEFB")
    cfg = config.load([], [f"data.root={root}", "data.crop=64", "data.samples_per_epoch=2", "data.batch_size=2",
                           "data.datasets=[{root: '" + str(root) + "', task: mef, split: null}]"])
    batch = next(iter(FusionDataModule(cfg).train_dataloader()))
    clean_mean = (batch["a_clean"].mean() + batch["b_clean"].mean()) / 2
    assert abs(batch["target"].mean() - clean_mean) < 0.25
