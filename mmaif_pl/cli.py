"""The `mmaif` command. Each command group lives in its own module and registers itself here.

Errors a user can fix (bad file, bad config key, empty folder) are raised as `errors.UserError` and printed as one line with a non-zero exit, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`; imported lazily so `mmaif --help` stays quick.
COMMAND_MODULES = (
    "mmaif_pl.data.commands",  # data build | check | prepare | preview
    "mmaif_pl.metrics.commands",  # evaluate
    "mmaif_pl.baselines",  # baseline
    "mmaif_pl.lit.commands",  # train-codec | train
    "mmaif_pl.fuse",  # fuse
    "mmaif_pl.report",  # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmaif",
        description="MMAIF: all-in-one, degradation-aware, language-guided image fusion.",
        epilog="example: mmaif data build --out data && mmaif data check data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"mmaif: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmaif: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
