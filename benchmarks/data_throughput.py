"""Training-sample throughput of one data worker at 256x256: pick a pair, crop, flip, degrade both sources,
make the target and the prompt (everything a training batch needs before the model).

    python benchmarks/data_throughput.py [--json OUT] [--root FOLDER] [--size 320] [--samples 300] [--repeats 5]

Without --root it writes a small generic dataset of --size x --size scikit-image crops (default 320; the real
benchmarks' sources are 500-800 px) to a temporary folder (the embedded default's 192x192 training crops are too
small for a 256 crop). A sample carries the images `mmaif train` ships (a, b and the target). Decoded pairs are
cached per worker, as in training, and the cache is warmed first, so the figure is the steady state. Prints the
median of the repeats and writes {"samples_per_second_per_core": X} (one process = one core).

It measures with OpenCV on one thread, as the training loader's workers run it (data/datamodule.WorkerLoader),
and again with OpenCV's default pool (one thread per core), as forked workers ran it before: samples per second
and CPU time per sample of each (JSON "opencv_pool": {"threads", "samples_per_second", "cpu_ms_per_sample"},
"cpu_ms_per_sample" for one thread). A pool that makes no sample faster but costs CPU time takes it from the
other workers and from the main process, which launches the training step.
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


def measure(ds: FusionDataset, samples: int, epoch: int) -> tuple[float, float]:
    """(samples per second, CPU milliseconds per sample: all of this process's threads)"""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(samples):
        ds[(epoch, i)]
    return samples / (time.perf_counter() - start), (time.process_time() - cpu) / samples * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write {'samples_per_second_per_core': X} here")
    parser.add_argument("--root", help="dataset root with pairs of at least 256x256 (default: a temporary one)")
    parser.add_argument("--size", type=int, default=320, help="side of the generated sources (without --root)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--opencv-pool", type=int, default=0, metavar="N",
                        help="the pool to compare with: N OpenCV threads (default: OpenCV's, one per core)")
    args = parser.parse_args()
    pool = args.opencv_pool or cv2.getNumThreads()  # OpenCV's default: one thread per core
    torch.set_num_threads(1)  # as in a loader worker

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
        runs = {1: [], pool: []}
        for epoch in range(args.repeats):
            for threads in runs:  # alternating, so that a busy spell of the machine does not favour one
                cv2.setNumThreads(threads)
                runs[threads].append(measure(ds, args.samples, 2 * epoch + (threads != 1)))
    (rates, cpu), (pool_rates, pool_cpu) = (zip(*runs[1]), zip(*runs[pool]))
    median = statistics.median(rates)
    print(f"samples/s per core at 256x256: median {median:.1f} (runs: {', '.join(f'{r:.1f}' for r in rates)}), "
          f"{statistics.median(cpu):.2f} CPU ms per sample (OpenCV on one thread, as the loader's workers)")
    print(f"with OpenCV's pool of {pool} threads: {statistics.median(pool_rates):.1f} samples/s, "
          f"{statistics.median(pool_cpu):.2f} CPU ms per sample")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "samples_per_second_per_core": round(median, 2), "cpu_ms_per_sample": round(statistics.median(cpu), 3),
            "opencv_pool": {"threads": pool, "samples_per_second": round(statistics.median(pool_rates), 2),
                            "cpu_ms_per_sample": round(statistics.median(pool_cpu), 3)}}) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
