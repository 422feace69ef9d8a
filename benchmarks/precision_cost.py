"""What inference in bf16 costs in fidelity: trained checkpoints fuse the same prepared pairs in float32, under bf16
autocast (the GPU default) and with the whole DiT stored and run in bf16 (`mmaif fuse --bf16-dit`).

    python benchmarks/precision_cost.py                            # runs/regression, runs/flow on prepared/test
    python benchmarks/precision_cost.py --checkpoint runs/no-moe/checkpoints/last.ckpt --pairs 194 --json out.json

For each checkpoint and precision it prints the PSNR of the fused images against float32's (median and minimum over
the pairs) and the mean PSNR against the split's targets beside float32's, so a precision's cost reads against the
quality it has to keep. Everything runs on one device (default: the CPU, whose bf16 matmuls round their inputs as a
GPU's do; the accumulation order differs). The codec stays float32: its bf16 cost is measured in docs/speed.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmaif_pl.atomic import atomic_write_text  # noqa: E402
from mmaif_pl.data.io import read_image  # noqa: E402
from mmaif_pl.errors import UserError  # noqa: E402
from mmaif_pl.fuse import Fuser  # noqa: E402
from mmaif_pl.lit.fusion import load_module  # noqa: E402

PRECISIONS = {"float32": {}, "bf16 autocast": {"bf16": True}, "bf16 DiT": {"bf16_dit": True}}
CEILING_DB = 100.0  # the PSNR of images equal to float32 rounding (keeps the JSON finite)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return min(CEILING_DB, float(10 * np.log10(1 / max(float(np.mean((x - y) ** 2)), 1e-12))))


def measure(checkpoint: Path, samples: list[dict], split: Path, device: str, fused_blocks: bool) -> list[dict]:
    module = load_module(checkpoint)
    fusers = {name: Fuser(copy.deepcopy(module), device=device, tile=0, fused_blocks=fused_blocks, **switches)
              for name, switches in PRECISIONS.items()}
    to_float32 = {name: [] for name in fusers}
    to_target = {name: [] for name in fusers}
    for s in samples:
        a, b, target = (read_image(split / s[key]) for key in ("a", "b", "target"))
        fused = {name: fuser(a, b, s["prompt"]) for name, fuser in fusers.items()}
        for name, image in fused.items():
            to_float32[name].append(psnr(image, fused["float32"]))
            to_target[name].append(psnr(image, target))
    return [{"checkpoint": str(checkpoint), "variant": module.variant, "precision": name,
             "psnr_to_float32_median": None if name == "float32" else round(statistics.median(to_float32[name]), 2),
             "psnr_to_float32_min": None if name == "float32" else round(min(to_float32[name]), 2),
             "psnr_to_target_mean": round(statistics.fmean(to_target[name]), 4)} for name in fusers]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", type=Path,
                   help="a trained checkpoint (repeatable; default: runs/regression and runs/flow)")
    p.add_argument("--prepared", type=Path, default=REPO / "prepared" / "test", help="a prepared split folder")
    p.add_argument("--pairs", type=int, default=40, help="the split's first N pairs (default 40)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--fused-blocks", action="store_true", help="every precision on the rewritten DiT, as on a GPU")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = args.checkpoint or [REPO / "runs" / v / "checkpoints" / "last.ckpt" for v in ("regression", "flow")]
    index = args.prepared / "index.json"
    try:
        if not index.is_file():
            raise UserError(f"{index} not found: give --prepared a split written by `mmaif data prepare`")
        samples = json.loads(index.read_text())["samples"][: args.pairs]
        rows = [row for ckpt in checkpoints for row in measure(ckpt, samples, args.prepared, args.device,
                                                                args.fused_blocks)]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(samples)} pairs of {args.prepared}, device {args.device}"
          f"{', fused blocks' if args.fused_blocks else ''}; PSNR in dB")
    print(f"{'variant':<11}{'precision':<15}{'to float32: median':>19}{'min':>8}{'to target: mean':>17}")
    for r in rows:
        median, low = r["psnr_to_float32_median"], r["psnr_to_float32_min"]
        print(f"{r['variant']:<11}{r['precision']:<15}{'-' if median is None else f'{median:.2f}':>19}"
              f"{'-' if low is None else f'{low:.2f}':>8}{r['psnr_to_target_mean']:>17.4f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"device": args.device, "split": str(args.prepared),
                                                 "pairs": len(samples), "fused_blocks": args.fused_blocks,
                                                 "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
