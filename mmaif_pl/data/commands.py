"""`mmaif data ...`: build the embedded default, check a dataset folder, prepare and preview splits."""
from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

from ..errors import UserError


def _build(args: argparse.Namespace) -> int:
    from .synth import build

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists; remove it to rebuild (the build is deterministic)")
    print(f"building the embedded default dataset into {out}/ ...", file=sys.stderr)
    info = build(out)
    print(f"wrote {info['pairs']} pairs ({info['bytes'] / 1e6:.1f} MB) to {out}/ in {info['seconds']:.1f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .sources import discover, load_pair

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = discover(args.path, task=args.task, layout=args.layout, split=args.split)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    by_dataset = Counter((r.dataset, r.task) for r in records)
    for (dataset, task), n in sorted(by_dataset.items()):
        print(f"{dataset:24s} {task}  {n} pairs")
    broken = 0
    if not args.no_load:
        for i, rec in enumerate(records, 1):
            try:
                load_pair(rec)
            except UserError as exc:
                broken += 1
                print(f"broken pair {rec.name}: {exc}", file=sys.stderr)
            if sys.stderr.isatty():
                print(f"\rloading {i}/{len(records)}", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print(file=sys.stderr)
    with_gt = sum(r.gt is not None for r in records)
    print(f"{len(records)} pairs ({with_gt} with ground truth{', ' + str(broken) + ' broken' if broken else ''})")
    return 1 if broken else 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build, check, prepare and preview datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda a: data.print_help() or 2)

    b = dsub.add_parser("build", help="build the embedded default dataset (offline, deterministic)",
                        epilog="example: mmaif data build --out data")
    b.add_argument("--out", default="data", help="output folder (default: data)")
    b.set_defaults(func=_build)

    c = dsub.add_parser("check", help="list the pairs the adapters find in a folder and load each",
                        epilog="example: mmaif data check ../shared/datasets/mef/MEFB --task mef")
    c.add_argument("path")
    c.add_argument("--task", choices=("vif", "mef", "mff"), help="task (default: from the folder names)")
    c.add_argument("--layout", choices=("ir_vi", "scene_ab", "sequence", "generic"), help="layout (default: detected)")
    c.add_argument("--split", help="keep only this split (split lists / split folders)")
    c.add_argument("--no-load", action="store_true", help="list only; do not decode every image")
    c.set_defaults(func=_check)

    from .prepare import add_prepare_parser
    from .preview import add_preview_parser

    add_prepare_parser(dsub)
    add_preview_parser(dsub)
