"""Seconds to compute every fusion metric (plus PSNR/SSIM to a target) for one 1024x1024 RGB triple on CPU.

usage: python benchmarks/metrics_speed.py [--json OUT] [--profile default] [--repeats 3]
Prints the best of the repeats and, with --json, writes {"seconds_per_1024_triple": X, ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mmaif_pl.config import atomic_write_text
from mmaif_pl.metrics.fusion import fusion_metrics
from mmaif_pl.metrics.profiles import get_profile


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
    prof = get_profile(args.profile)
    times, cpu_times, per_metric = [], [], {}
    for _ in range(args.repeats):
        # what `mmaif evaluate` does per image: the profile's planes once, then every metric
        start, cpu_start = time.perf_counter(), time.process_time()
        planes = [prof.planes(x) for x in (fused, a, b, target)]
        for name, m in fusion_metrics(prof, with_reference=True).items():
            t0 = time.perf_counter()
            m.score_from_planes(*planes)
            per_metric[name] = min(per_metric.get(name, 1e9), time.perf_counter() - t0)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    best = min(times)
    result = {
        "seconds_per_1024_triple": round(best, 4),
        # CPU seconds of this process: the same number on a machine whose cores other jobs share
        "cpu_seconds_per_1024_triple": round(min(cpu_times), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
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
