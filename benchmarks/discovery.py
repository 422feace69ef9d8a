"""How long `discover` takes to find the pairs of a large benchmark folder, per layout.

    python benchmarks/discovery.py                        # 3 000 pairs per layout
    python benchmarks/discovery.py --pairs 10000 --json out.json

Builds each layout under a temporary folder with empty image files (discovery reads names, not pixels) and
times `data.sources.discover` on it, median of `--repeats` calls: flat (`<n>-A.png`, `<n>-B.png` and a
`<n>_gt.png` for every tenth pair, one folder, as Lytro), scenes (MEFB: a folder per pair), ir_vi (TNO / MSRS:
`ir/`, `vi/`) and generic (`A/`, `B/`). Discovery runs once per command (`mmaif fuse --dataset`, a training
run's DataModule), so seconds here are seconds before any work starts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmaif_pl.data.sources import discover  # noqa: E402

LAYOUTS = ("flat", "scenes", "ir_vi", "generic")


def build(root: Path, layout: str, pairs: int) -> Path:
    """`pairs` pairs of empty .png files in `layout` under root/<task>/<layout>; returns that folder."""
    top = root / ("vif" if layout == "ir_vi" else "mff") / layout
    names = [f"img{i:06d}" for i in range(pairs)]
    if layout == "flat":
        files = [f"{n}-{side}.png" for n in names for side in "AB"] + [f"{n}_gt.png" for n in names[::10]]
    elif layout == "scenes":
        files = [f"{n}/{n}_{side}.png" for n in names for side in "AB"]
    else:
        a, b = ("vi", "ir") if layout == "ir_vi" else ("A", "B")
        files = [f"{side}/{n}.png" for n in names for side in (a, b)]
    for f in files:
        (top / f).parent.mkdir(parents=True, exist_ok=True)
        (top / f).touch()
    return top


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--layout", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layout:
            top = build(Path(tmp), layout, args.pairs)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                found = len(discover(top))
                times.append(time.perf_counter() - t0)
            if found != args.pairs:
                raise SystemExit(f"{layout}: discover found {found} pairs of {args.pairs}")
            results[layout] = statistics.median(times)
            print(f"{layout:8s} {args.pairs} pairs: {results[layout] * 1000:.0f} ms "
                  f"({results[layout] / args.pairs * 1e6:.0f} us per pair; median of {args.repeats})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pairs": args.pairs, "seconds": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
