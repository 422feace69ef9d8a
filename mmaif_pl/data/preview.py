"""`mmaif data preview`: a grid PNG of training samples to look at (clean sources, degraded sources, target,
and the prompt as a caption), from the configured data (the embedded default when no config is given).
`--operator` forces degradations (e.g. to inspect one operator at `--severity heavy`); `--prepared` shows a
prepared split instead."""
from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import write_bytes_atomic
from ..errors import UserError
from .degrade import OPERATOR_NAMES, SEVERITIES, check_operator
from .policy import TASKS

COLUMNS = ("a_clean", "b_clean", "a", "b", "target")
TILE = 192  # tiles are shown at this height (aspect kept)


def _font(size: int = 13) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _tile(t) -> Image.Image:
    arr = (np.clip(t.numpy().transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr)
    return img.resize((max(1, round(img.width * TILE / img.height)), TILE), Image.Resampling.BILINEAR)


def render_grid(samples: Sequence[dict], out: str | Path) -> Path:
    """One row per sample: the COLUMNS side by side, then a caption (task, degradations, prompt)."""
    font, pad = _font(), 4
    rows = []
    for s in samples:
        tiles = []
        for k in COLUMNS:
            if s.get(k) is not None:
                tile = _tile(s[k])
                draw = ImageDraw.Draw(tile)
                draw.rectangle((0, 0, 7 * len(k) + 6, 15), fill="black")
                draw.text((3, 1), k, fill="white", font=font)
                tiles.append(tile)
        ops = sorted({f"{r['name']}[{r['source']}]:{r['severity']}" for r in s["degradations"]})
        caption = f"{s['task']} {s['id']}  |  {', '.join(ops) or 'clean'}\nprompt: {s['prompt']}"
        width = sum(t.width for t in tiles) + pad * (len(tiles) - 1)
        lines = [w for line in caption.split("\n") for w in textwrap.wrap(line, max(20, width // 7))]
        row = Image.new("RGB", (width, TILE + 16 * len(lines) + 2 * pad), "white")
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width + pad
        ImageDraw.Draw(row).multiline_text((pad, TILE + pad), "\n".join(lines), fill="black", font=font, spacing=3)
        rows.append(row)
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), (200, 200, 200))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 6
    out = Path(out)
    buffer = io.BytesIO()
    grid.save(buffer, format=image_format(out))
    return write_bytes_atomic(out, buffer.getvalue())


def image_format(out: Path) -> str:
    """Pillow's format for `out`'s extension; an unknown one is an error before any sampling."""
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None:
        raise UserError(f"--out {out}: unknown image extension {Path(out).suffix!r} (e.g. .png, .jpg)")
    return fmt


def preview_samples(cfg, n: int = 6, operators: Sequence[str] = (), severity: str | None = None,
                    task: str | None = None, epoch: int = 0) -> list[dict]:
    from .datamodule import FusionDataset, build_groups

    from .policy import TASK_OPERATORS

    groups = [g for g in build_groups(cfg.data) if (task is None or g.task == task)
              and set(operators) <= set(TASK_OPERATORS[g.task])]  # e.g. ir_stripes: VIF only
    if not groups:
        raise UserError(f"no pairs in the configured data for task {task or 'any'} with {', '.join(operators)}")
    total = sum(g.prob for g in groups)
    for g in groups:
        g.prob /= total
    ds = FusionDataset(cfg, groups, length=n, batch_size=1)
    names = list(operators) or None
    return [ds.make_sample(epoch, i, names, severity) for i in range(n)]


def _run(args: argparse.Namespace) -> int:
    from .. import config

    cfg = config.load(args.config, args.overrides)
    for op in args.operator:
        check_operator(op)
    image_format(args.out)
    if args.prepared:
        from .datamodule import PreparedDataset

        ds = PreparedDataset(args.prepared)
        keep = [i for i, s in enumerate(ds.samples) if (args.task is None or s["task"] == args.task)
                and all(op in {r["name"] for r in s["degradations"]} for op in args.operator)
                and (args.severity is None or s["severity"] == args.severity)]
        samples = [ds[i] for i in keep[: args.n]]
        if not samples:
            raise UserError(f"{args.prepared}: no sample matches the filters")
    else:
        samples = preview_samples(cfg, args.n, args.operator, args.severity, args.task, args.epoch)
    out = render_grid(samples, args.out)
    print(f"wrote a preview of {len(samples)} samples to {out}")
    return 0


def add_preview_parser(data_subparsers: argparse._SubParsersAction) -> None:
    p = data_subparsers.add_parser(
        "preview", help="write a grid PNG of samples (clean, degraded, target, prompt) to look at",
        epilog="example: mmaif data preview --out grid.png\n"
               "         mmaif data preview --operator rain --severity heavy --task vif --out rain.png\n"
               "         mmaif data preview --prepared prepared/test --operator haze --out test_haze.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", default=[], help="config file(s), merged left to right")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("-n", "--n", type=int, default=6, help="number of samples (rows)")
    p.add_argument("--operator", action="append", default=[], metavar="NAME",
                   help=f"force this degradation (repeatable): {', '.join(OPERATOR_NAMES)}")
    p.add_argument("--severity", choices=SEVERITIES, help="severity of forced degradations (default: the config's)")
    p.add_argument("--task", choices=TASKS, help="only samples of this task")
    p.add_argument("--epoch", type=int, default=0, help="which epoch's samples to show")
    p.add_argument("--prepared", help="show a prepared split folder (e.g. prepared/test) instead")
    p.set_defaults(func=_run)
