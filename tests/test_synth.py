"""The embedded default dataset: layout, determinism, and that each task's synthesis does what it says."""
import hashlib
import stat

import numpy as np
import pytest

from mmaif_pl.atomic import UMASK
from mmaif_pl.data.io import read_image
from mmaif_pl.data.sources import discover, load_pair
from mmaif_pl.data.synth import TEST_PHOTOS, TRAIN_PHOTOS, build, make_pair


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_build_is_byte_identical_and_atomic(tmp_path, embedded_data):
    again = tmp_path / "again"
    build(again, counts={"train": 6, "test": 3}, log=lambda *a, **k: None)
    assert _digest(again) == _digest(embedded_data)
    with pytest.raises(FileExistsError):
        build(again, counts={"train": 1, "test": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary folder left behind
    # a plain mkdir's mode, not tempfile's private 0700: the team can read the data on a shared machine
    assert stat.S_IMODE(again.stat().st_mode) == 0o777 & ~UMASK


def test_layout_is_discoverable_per_task_and_split(embedded_data):
    for task in ("vif", "mef", "mff"):
        train = discover(embedded_data / task / "train")
        test = discover(embedded_data / task / "test")
        assert len(train) == 6 and len(test) == 3
        assert all(r.task == task and r.gt is not None for r in train + test)
    assert len(discover(embedded_data, split="test")) == 9


def test_test_photos_are_held_out():
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    for i in range(4):
        assert make_pair("mef", "test", i)[3]["photo"] in TEST_PHOTOS


def _grad(img):
    y = img.mean(axis=2)
    return np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()


def _block_sharpness(img, block=24):
    y = img.mean(axis=2)
    g = np.abs(np.diff(y, axis=1))[:-1] + np.abs(np.diff(y, axis=0))[:, :-1]
    h, w = (g.shape[0] // block) * block, (g.shape[1] // block) * block
    return g[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3)).ravel() + 1e-4


def test_each_task_synthesis_has_its_physical_signature(embedded_data):
    for rec in discover(embedded_data / "mef" / "train"):
        a, b, gt = load_pair(rec)
        assert a.mean() < gt.mean() < b.mean()
        assert (b > 0.99).mean() > (gt > 0.99).mean()  # over-exposure clips highlights
    for rec in discover(embedded_data / "mff" / "train"):
        a, b, gt = load_pair(rec)
        assert _grad(a) < _grad(gt) and _grad(b) < _grad(gt)  # each source is partly defocused
        # complementary focus: in blocks where a keeps the detail, b has lost it, and the reverse
        # (judged on textured blocks: flat sky is sharp and blurred alike)
        sg = _block_sharpness(gt)
        textured = sg > np.median(sg)
        ra, rb = _block_sharpness(a)[textured] / sg[textured], _block_sharpness(b)[textured] / sg[textured]
        assert np.maximum(ra, rb).mean() > np.minimum(ra, rb).mean() + 0.25
    for rec in discover(embedded_data / "vif" / "train"):
        a, b, gt = load_pair(rec)
        assert a.mean() < 0.35  # low-light visible
        assert np.abs(b[..., 0] - b[..., 1]).max() == 0  # infrared is gray
        assert b.max() > 0.7  # warm targets
        assert gt.mean() > a.mean()


def test_default_sizes_and_counts_meet_the_spec():
    from mmaif_pl.data.synth import COUNTS, SIZES

    assert COUNTS["train"] >= 60 and COUNTS["test"] >= 12
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in SIZES.values())
    a, b, gt, _ = make_pair("vif", "test", 0)
    assert a.shape == b.shape == gt.shape == (*SIZES["test"], 3)
