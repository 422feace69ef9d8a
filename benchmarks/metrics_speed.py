"""Seconds to compute every fusion metric (plus PSNR/SSIM to a target) for one 1024x1024 RGB triple on CPU.

usage: python benchmarks/metrics_speed.py [--json OUT] [--profile default] [--repeats 3]
Prints the best of the repeats and, with --json, writes {"seconds_per_1024_triple": X, ...}.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mmaif_pl.config import atomic_write_text
from mmaif_pl.metrics.fusion import fusion_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (mmaif evaluate uses 1 on CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    # smooth random scenes (not white noise) so the statistics resemble photographs
    def scene() -> torch.Tensor:
        low = torch.rand(1, 3, args.size // 16, args.size // 16, generator=g)
        return torch.nn.functional.interpolate(low, size=(args.size, args.size), mode="bicubic").clamp(0, 1)

    a, b, target = scene(), scene(), scene()
    fused = (a + b) / 2
    times, per_metric = [], {}
    for _ in range(args.repeats):
        metrics = fusion_metrics(args.profile, with_reference=True)
        start = time.perf_counter()
        for name, m in metrics.items():
            t0 = time.perf_counter()
            m.update(fused, a, b, target)
            per_metric[name] = min(per_metric.get(name, 1e9), time.perf_counter() - t0)
        metrics.compute()
        times.append(time.perf_counter() - start)
    best = min(times)
    result = {
        "seconds_per_1024_triple": round(best, 4),
        "size": args.size,
        "profile": args.profile,
        "threads": torch.get_num_threads(),
        "per_metric_seconds": {k: round(v, 4) for k, v in per_metric.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
