"""Training-sample throughput of one data worker at 256x256: pick a pair, crop, flip, degrade both sources,
make the target and the prompt (everything a training batch needs before the model).

    python benchmarks/data_throughput.py [--json OUT] [--root FOLDER] [--size 320] [--samples 300] [--repeats 5]

Without --root it writes a small generic dataset of --size x --size scikit-image crops (default 320; the real
benchmarks' sources are 500-800 px) to a temporary folder (the embedded default's 192x192 training crops are too
small for a 256 crop). A sample carries the images `mmaif train` ships (a, b and the target). Decoded pairs are
cached per worker, as in training, and the cache is warmed first, so the figure is the steady state. Prints the
median of the repeats and writes {"samples_per_second_per_core": X} (one process = one core).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch

from mmaif_pl import config
from mmaif_pl.data.datamodule import FusionDataset
from mmaif_pl.data.io import write_image
from mmaif_pl.lit.fusion import FusionModule

PHOTOS = ("astronaut", "rocket", "coffee", "chelsea", "immunohistochemistry", "hubble_deep_field")


def make_dataset(root: Path, size: int = 320) -> None:
    """Generic-layout pairs per task (sources are shifted exposures / blurs of one crop; content is irrelevant
    to the cost, but real photographs keep the operators' work realistic)."""
    for task in ("vif", "mef", "mff"):
        for i, name in enumerate(PHOTOS):
            img = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255
            s = size / min(img.shape[:2])
            img = cv2.resize(img, (max(size, round(img.shape[1] * s)), max(size, round(img.shape[0] * s))))[:size, :size]
            a, b = np.clip(img * 0.6, 0, 1), np.clip(img * 1.4, 0, 1)
            if task == "vif":
                b = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
            for sub, x in (("A", a), ("B", b), ("gt", img)):
                write_image(root / task / "train" / sub / f"{task}_{i}.png", x)


def measure(ds: FusionDataset, samples: int, epoch: int) -> float:
    start = time.perf_counter()
    for i in range(samples):
        ds[(epoch, i)]
    return samples / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write {'samples_per_second_per_core': X} here")
    parser.add_argument("--root", help="dataset root with pairs of at least 256x256 (default: a temporary one)")
    parser.add_argument("--size", type=int, default=320, help="side of the generated sources (without --root)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core: OpenCV would otherwise spread filters over all cores
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "data"
        if not args.root:
            make_dataset(root, args.size)
        cfg = config.load([], [f"data.root={root}", "data.crop=256", "data.buckets=[[1,1]]", "data.batch_size=1"])
        ds = FusionDataset(cfg, length=args.samples, image_keys=FusionModule.training_image_keys(cfg))
        for g in ds.groups:  # warm the per-worker cache of decoded pairs
            for rec in g.pairs:
                ds._cache.get(rec)
        sample = ds[(0, 0)]
        assert tuple(sample["a"].shape) == (3, 256, 256), sample["a"].shape
        rates = [measure(ds, args.samples, epoch) for epoch in range(args.repeats)]
    median = statistics.median(rates)
    print(f"samples/s per core at 256x256: median {median:.1f} (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"samples_per_second_per_core": round(median, 2)}) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
