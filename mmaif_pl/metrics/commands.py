"""`mmaif evaluate`: score a folder of fused images against their sources (and ground truth), or a prepared
split, with the fusion metrics of one profile. Writes JSON (and CSV) atomically and prints a table.
JSON layout: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..errors import UserError
from .functional import grid_artifact_ratio
from .fusion import LOWER_IS_BETTER, fusion_metrics, metric_names
from .profiles import PROFILES, get_profile

DIAGNOSTIC = "BLK"  # the block-pattern diagnostic (--grid-period), reported beside the metrics

TASKS = ("vif", "mef", "mff")

EXAMPLES = """examples:
  mmaif evaluate --task vif --a ../shared/datasets/vif/TNO/vi --b ../shared/datasets/vif/TNO/ir \\
      --fused out/tno_average --json metrics/tno_average.json --csv metrics/tno_average.csv
  mmaif evaluate --prepared prepared/test --fused runs/regression/test_fused --json metrics/regression.json
  mmaif evaluate --dataset ../MEFB --fused fused/mefb --json metrics/mefb.json   # as `mmaif fuse --dataset` wrote
  mmaif evaluate ... --profile cddfuse     # the conventions of CDDFuse's Evaluator.py (MI in nats, ...)

profiles: """ + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score fused images with the fusion metrics (folders or a prepared split)",
        description="Score fused images: EN, SD, SF, AG, MI, SCD, CC, Qabf, Nabf, VIF, SSIM, MEF-SSIM, Qcb, and "
        "PSNR / SSIM to a ground truth where one exists. Files pair by stem (case-insensitive); the fused file "
        "may have any supported extension. Sizes must match exactly (nothing is resized).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=TASKS, help="task of the folder pairs (folder mode), or of a --dataset whose "
                   "folder names do not tell")
    p.add_argument("--a", type=Path, help="first sources (VIF: visible, MEF: under-exposed, MFF: near focus)")
    p.add_argument("--b", type=Path, help="second sources (VIF: infrared, MEF: over-exposed, MFF: far focus)")
    p.add_argument("--target", type=Path, help="ground-truth fused images (adds PSNR and SSIM_gt)")
    p.add_argument("--prepared", type=Path, help="a prepared split folder (with index.json) instead of --a/--b")
    p.add_argument("--dataset", type=Path, help="a benchmark in its native layout (docs/data.md), or a folder of "
                   "several, instead of --a/--b: its fused images are <fused>/<pair>.<ext>, as `mmaif fuse --dataset` "
                   "writes them; its ground truth, where it has one, adds PSNR and SSIM_gt")
    p.add_argument("--split", help="--dataset: the pairs listed in <root>/<split>.txt, or under a <split> folder")
    p.add_argument("--sources", choices=("clean", "degraded"), default="clean",
                   help="prepared split: compare with the clean sources (default) or the degraded inputs")
    p.add_argument("--fused", type=Path, required=True, help="fused images, <stem>.<ext> (prepared: <id>.png)")
    p.add_argument("--profile", default="default", help=f"metric conventions: {', '.join(PROFILES)} (default: default)")
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.add_argument("--csv", type=Path, help="also write the per-image rows here")
    p.add_argument("--summary", type=Path,
                   help="also write a compact JSON (overall and per-task means only): what `dvc metrics` tracks")
    p.add_argument("--device", default="cpu", help="torch device for the metrics (cpu, cuda)")
    p.add_argument("--grid-period", type=int, default=8, metavar="P",
                   help="also report BLK, the block pattern of F on a P-pixel grid (1 = none; a patch model's "
                        "patch x codec factor, 8 for the CPU preset; default 8; 0: off)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------------
# Collecting the work: (id, task, paths, metadata) per image
# ----------------------------------------------------------------------------------------------------


def _list(folder: Path, what: str) -> dict[str, Path]:
    from ..data.io import list_images

    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}")
    found = list_images(folder)
    if not found:
        raise UserError(f"no images in the {what} folder {folder}")
    return found


def folder_items(task: str, a_dir: Path, b_dir: Path, fused_dir: Path, target_dir: Optional[Path]) -> list[dict]:
    a, b, fused = _list(a_dir, "--a"), _list(b_dir, "--b"), _list(fused_dir, "--fused")
    target = _list(target_dir, "--target") if target_dir else {}
    stems = sorted(set(a) & set(b))
    unpaired = sorted(set(a) ^ set(b))
    if not stems:
        raise UserError(f"no file stem appears in both {a_dir} and {b_dir}")
    if unpaired:
        print(f"warning: {len(unpaired)} source file(s) without a partner skipped: {', '.join(unpaired[:5])}"
              + (" ..." if len(unpaired) > 5 else ""), file=sys.stderr)
    missing = [s for s in stems if s not in fused]
    if missing:
        raise UserError(f"{len(missing)} pair(s) have no fused image in {fused_dir}: {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    if target_dir:
        no_gt = [s for s in stems if s not in target]
        if no_gt:
            raise UserError(f"{len(no_gt)} pair(s) have no ground truth in {target_dir}: {', '.join(no_gt[:5])}")
    return [{"id": s, "task": task, "a": a[s], "b": b[s], "fused": fused[s], "target": target.get(s)} for s in stems]


def dataset_items(root: Path, task: Optional[str], split: Optional[str], fused_dir: Path) -> list[dict]:
    """Every pair of a benchmark in its native layout (data.sources.discover) with its fused image
    `<fused>/<pair_id>.<ext>`, as `mmaif fuse --dataset` writes it, and its ground truth where the dataset has one."""
    from ..data.sources import discover

    records = discover(root, task=task, split=split)
    listings: dict[str, dict[str, Path]] = {}  # one listing per layout folder of the fused images
    items, missing = [], []
    for rec in records:
        if rec.group not in listings:
            folder = fused_dir / rec.group
            listings[rec.group] = _list(folder, "--fused") if folder.is_dir() else {}
        fused = listings[rec.group].get(rec.name.lower())
        if fused is None:
            missing.append(rec.pair_id)
            continue
        items.append({"id": rec.pair_id, "task": rec.task, "a": rec.a, "b": rec.b, "fused": fused, "target": rec.gt})
    if missing:
        raise UserError(f"{len(missing)} pair(s) of {root} have no fused image in {fused_dir}: {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else "") + " (write them with `mmaif fuse --dataset`)")
    return items


def prepared_items(split_dir: Path, fused_dir: Path, sources: str) -> list[dict]:
    index_path = split_dir / "index.json"
    if not index_path.is_file():
        raise UserError(f"{split_dir} is not a prepared split: {index_path} not found (run `mmaif data prepare`)")
    try:
        index = json.loads(index_path.read_text())
        samples = index["samples"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{index_path}: not a valid prepared index ({exc})") from None
    if not samples:
        raise UserError(f"{index_path}: the split has no samples")
    fused = _list(fused_dir, "--fused")
    items, missing = [], []
    key_a, key_b = ("a_clean", "b_clean") if sources == "clean" else ("a", "b")
    for s in samples:
        sid = str(s["id"])
        if sid.lower() not in fused:
            missing.append(sid)
            continue
        a_rel = s.get(key_a) or s["a"]  # an index without clean sources falls back to the inputs
        b_rel = s.get(key_b) or s["b"]
        items.append({
            "id": sid, "task": s["task"], "a": split_dir / a_rel, "b": split_dir / b_rel, "fused": fused[sid.lower()],
            "target": split_dir / s["target"] if s.get("target") else None,
            "severity": s.get("severity", "none"),
            "n_degradations": int(s.get("n_degradations", len(s.get("degradations", [])))),
            "degradations": list(dict.fromkeys(d["name"] for d in s.get("degradations", []))),
        })
    if missing:
        raise UserError(f"{len(missing)} sample(s) of {split_dir} have no fused image in {fused_dir}: "
                        f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    return items


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


def _load(path: Path, device: str) -> torch.Tensor:
    from ..data.io import read_image

    return torch.from_numpy(read_image(path)).permute(2, 0, 1).unsqueeze(0).to(device)


def score_items(items: list[dict], profile: str, device: str = "cpu", progress: bool = True,
                grid_period: int = 0) -> list[dict]:
    """One row per item: id, task, metadata, and every metric value (None where undefined); with a
    `grid_period`, also BLK, the block-pattern diagnostic of F on that grid (functional.grid_artifact_ratio)."""
    with_ref = any(it.get("target") for it in items)
    prof = get_profile(profile)
    metrics = fusion_metrics(prof, with_reference=with_ref).to(device)
    rows = []
    start = time.time()
    tty = sys.stderr.isatty()
    for k, it in enumerate(items, 1):
        a, b, f = _load(it["a"], device), _load(it["b"], device), _load(it["fused"], device)
        if a.shape != b.shape:
            raise UserError(f"source sizes differ: {it['a']} is {tuple(a.shape[-2:])}, {it['b']} is {tuple(b.shape[-2:])}")
        if f.shape != a.shape:
            raise UserError(f"fused image {it['fused']} is {f.shape[-1]}x{f.shape[-2]} but its sources are "
                            f"{a.shape[-1]}x{a.shape[-2]} (W x H); evaluate at the source size, nothing is resized")
        t = _load(it["target"], device) if it.get("target") else None
        if t is not None and t.shape != a.shape:
            raise UserError(f"ground truth {it['target']} is {t.shape[-1]}x{t.shape[-2]}, sources {a.shape[-1]}x{a.shape[-2]}")
        row = {key: it[key] for key in ("id", "task", "severity", "n_degradations", "degradations") if key in it}
        planes = [prof.planes(x) for x in (f, a, b)] + [prof.planes(t) if t is not None else None]
        for name, m in metrics.items():
            if m.needs_target and t is None:
                continue
            value = float(m.score_from_planes(*planes)[0])
            row[name] = value if math.isfinite(value) else None
        if grid_period:
            value = float(grid_artifact_ratio(planes[0], grid_period).nanmean())  # over the colour planes
            row[DIAGNOSTIC] = value if math.isfinite(value) else None
        rows.append(row)
        if progress and (tty or k == len(items) or k % max(1, len(items) // 10) == 0):
            eta = (time.time() - start) / k * (len(items) - k)
            lead = "\r" if tty else ""
            print(f"{lead}  scored {k}/{len(items)} ({it['id']}), about {eta:.0f} s left  ",
                  end="" if tty and k < len(items) else "\n", file=sys.stderr, flush=True)
    return rows


def _mean_block(rows: list[dict], names: Iterable[str]) -> dict:
    block: dict = {"n": len(rows), "metrics": {}}
    for n in names:
        vals = [r[n] for r in rows if r.get(n) is not None]
        block["metrics"][n] = float(np.mean(vals)) if vals else None
    return block


def _group(rows: list[dict], key_fn, names: list[str]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        for key in key_fn(r):
            groups.setdefault(str(key), []).append(r)
    return {k: _mean_block(v, names) for k, v in sorted(groups.items())}


def summarize(rows: list[dict], names: list[str], prepared: bool) -> dict:
    out = {"overall": _mean_block(rows, names)["metrics"], "per_task": _group(rows, lambda r: [r["task"]], names)}
    if prepared:
        out["per_degradation"] = _group(rows, lambda r: r["degradations"] or ["clean"], names)
        out["per_n_degradations"] = _group(rows, lambda r: [r["n_degradations"]], names)
        out["per_severity"] = _group(rows, lambda r: [r["severity"]], names)
        out["per_task_degradation"] = _group(
            rows, lambda r: [f"{r['task']}/{d}" for d in (r["degradations"] or ["clean"])], names)
    return out


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_table(summary: dict, names: list[str]) -> str:
    rows = [("all", summary["overall"])] + [(k, v["metrics"]) for k, v in summary["per_task"].items()]
    if len(summary["per_task"]) == 1:
        rows = rows[:1]
    head = ["group"] + [n + ("(↓)" if n in LOWER_IS_BETTER else "") for n in names]
    body = [[g] + [_fmt(vals.get(n)) for n in names] for g, vals in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + body]
    return "\n".join(lines)


def _csv_text(rows: list[dict], names: list[str]) -> str:
    meta = [k for k in ("id", "task", "severity", "n_degradations", "degradations") if any(k in r for r in rows)]
    buf = _io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(meta + names)
    for r in rows:
        cells = ["+".join(r[k]) if k == "degradations" else r.get(k, "") for k in meta]
        writer.writerow(cells + ["" if r.get(n) is None else repr(r[n]) for n in names])
    return buf.getvalue()


def evaluate(items: list[dict], profile: str, mode: str, inputs: dict, device: str = "cpu",
             progress: bool = True, grid_period: int = 0) -> tuple[dict, list[dict], list[str]]:
    """The JSON record of `items` scored with `profile`; `mode` (folders | dataset | prepared) names where they came
    from, and a prepared split adds the means per degradation, count and severity."""
    prof = get_profile(profile)
    rows = score_items(items, prof.name, device, progress, grid_period)
    with_ref = any(it.get("target") for it in items)
    names = metric_names(with_reference=with_ref) + ([DIAGNOSTIC] if grid_period else [])
    result = {
        "created_by": "mmaif evaluate",
        "mode": mode,
        "inputs": {k: (str(v) if v is not None else None) for k, v in inputs.items()},
        "profile": prof.conventions(),
        "grid_period": grid_period or None,
        "n_images": len(rows),
        "metrics": names,
        "lower_is_better": sorted(LOWER_IS_BETTER),
        **summarize(rows, names, mode == "prepared"),
        "per_image": rows,
    }
    return result, rows, names


def compact_summary(result: dict) -> dict:
    """The headline numbers: means over all images and per task (NaN-free, numbers only)."""
    per_task = {task: block["metrics"] for task, block in result["per_task"].items()}
    return {"n_images": result["n_images"], "overall": result["overall"], "per_task": per_task}


def run(args: argparse.Namespace) -> int:
    from ..config import atomic_write_text

    get_profile(args.profile)  # unknown profile: fail before any work
    if args.grid_period == 1 or args.grid_period < 0:
        raise UserError(f"--grid-period must be 0 (off) or at least 2, got {args.grid_period}")
    if args.device == "cpu":
        # The heavy filtering runs in scipy (one thread); torch's elementwise work gains little from a second
        # OpenMP thread and loses several-fold when the cores are shared with other jobs.
        torch.set_num_threads(1)
    if args.prepared and args.dataset:
        raise UserError("give --prepared or --dataset, not both")
    if args.split and not args.dataset:
        raise UserError("--split chooses the pairs of a --dataset")
    if args.prepared:
        if args.a or args.b or args.target:
            raise UserError("--prepared replaces --a/--b/--target; give one or the other")
        items = prepared_items(args.prepared, args.fused, args.sources)
        mode, inputs = "prepared", {"prepared": args.prepared, "fused": args.fused, "sources": args.sources}
    elif args.dataset:
        if args.a or args.b or args.target:
            raise UserError("--dataset replaces --a/--b/--target (its ground truth is found with its pairs); "
                            "give one or the other")
        items = dataset_items(args.dataset, args.task, args.split, args.fused)
        mode, inputs = "dataset", {"dataset": args.dataset, "task": args.task, "split": args.split, "fused": args.fused}
    else:
        if not (args.task and args.a and args.b):
            raise UserError("give --task, --a and --b (folder mode), --prepared SPLIT_DIR or --dataset ROOT")
        items = folder_items(args.task, args.a, args.b, args.fused, args.target)
        mode, inputs = "folders", {"task": args.task, "a": args.a, "b": args.b, "fused": args.fused,
                                   "target": args.target}
    print(f"evaluating {len(items)} image(s) with profile '{args.profile}'", file=sys.stderr)
    start = time.time()
    result, rows, names = evaluate(items, args.profile, mode, inputs, args.device,
                                   grid_period=args.grid_period)
    print(format_table(result, names))
    atomic_write_text(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
    written = [str(args.json)]
    if args.summary:
        atomic_write_text(args.summary, json.dumps(compact_summary(result), indent=1, allow_nan=False) + "\n")
        written.append(str(args.summary))
    if args.csv:
        atomic_write_text(args.csv, _csv_text(rows, names))
        written.append(str(args.csv))
    print(f"evaluated {len(rows)} image(s) in {time.time() - start:.1f} s (profile {args.profile}): "
          f"wrote {' and '.join(written)}")
    return 0
