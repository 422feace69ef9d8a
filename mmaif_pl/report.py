"""`mmaif report`: evaluation JSONs of every variant and baseline -> one comparison table and plot data.

Reads `metrics/<name>.json` (`mmaif evaluate --prepared ... --summary`, or its full `--json`) and, for trained variants,
`runs/<variant>/train_summary.json` (steps, wall time, parameter count). Writes
- `reports/ablation.md`: one row per variant / baseline: PSNR and SSIM to the target per task and
  their mean, the main reference-free fusion metrics, the delta of each ablation against the full model
  it ablates, training time and parameters; the seed noise of each full model trained with several seeds
  (entries named `<model>-seed<N>`), and whether each ablation falls outside that seed range; then the gap
  of each full model to the best baseline per task;
- `reports/ablation.csv`: the same numbers, one row per entry (for `dvc plots`).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Optional

from .config import atomic_write_text
from .errors import UserError

TASKS = ("vif", "mef", "mff")
REFERENCE_FREE = ("EN", "SF", "Qabf", "VIF", "MEF_SSIM", "BLK")
FULL_MODELS = ("regression", "flow")


def _variant_of(name: str) -> str:
    """`flow-s16` -> `flow`, `regression-ps2` -> `regression`: evaluation names carry the sampling steps
    (`-s<N>`) and the patch-shift ensemble (`-ps<N>`) after the variant."""
    return re.sub(r"(-p?s\d+)+$", "", name)


def _replicate_of(name: str) -> Optional[str]:
    """`regression-seed2` -> `regression`: the same model trained with another train.seed."""
    base, sep, n = name.rpartition("-seed")
    return base if sep and base and n.isdigit() else None


def seed_groups(entries: dict) -> dict[str, list[str]]:
    """Full models with seed replicates -> [model, model-seed1, ...] (present entries only)."""
    groups: dict[str, list[str]] = {}
    for name in sorted(entries):
        base = _replicate_of(name)
        if base is not None and base in entries:
            groups.setdefault(base, [base]).append(name)
    return groups


def load_entries(metrics_dir: Path, runs_dir: Optional[Path]) -> dict[str, dict]:
    entries = {}
    for path in sorted(metrics_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        if "per_task" not in data or "overall" not in data:
            raise UserError(f"{path}: not a prepared-split evaluation (no 'per_task' / 'overall'); "
                            f"run `mmaif evaluate --prepared ...`")
        entry = {"name": path.stem, "overall": data["overall"], "per_task": data["per_task"], "train": None}
        if runs_dir is not None:
            summary = runs_dir / _variant_of(path.stem) / "train_summary.json"
            if summary.is_file():
                entry["train"] = json.loads(summary.read_text())
        entries[path.stem] = entry
    if not entries:
        raise UserError(f"{metrics_dir}: no metrics JSON files found (run the evaluate stage first)")
    return entries


def _get(entry: dict, task: Optional[str], metric: str) -> float:
    block = entry["per_task"].get(task, {}) if task is not None else entry["overall"]
    src = block.get("metrics", block)  # full evaluation JSON or its compact summary
    value = src.get(metric)
    return float(value) if value is not None else math.nan


def mean_psnr(entry: dict) -> float:
    values = [_get(entry, t, "PSNR") for t in TASKS if t in entry["per_task"]]
    return sum(values) / len(values) if values else math.nan


def _fmt(x: float, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _reference_for(name: str, entries: dict) -> Optional[str]:
    """The full model an entry is compared with: ablations -> regression, flow step counts -> flow,
    seed replicates -> the model they replicate."""
    if name in FULL_MODELS or name.startswith("baseline"):
        return None
    replicated = _replicate_of(name)
    if replicated is not None:
        return replicated if replicated in entries else None
    variant = _variant_of(name)
    if variant == "flow":
        return "flow" if name != "flow" and "flow" in entries else None
    return "regression" if "regression" in entries else None


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def seed_noise(entries: dict) -> dict[str, dict]:
    """Per full model with replicates: statistics of mean PSNR (and per task) over its seeds."""
    out = {}
    for model, names in seed_groups(entries).items():
        out[model] = {"names": names, "mean": _stats([mean_psnr(entries[n]) for n in names]),
                      **{t: _stats([_get(entries[n], t, "PSNR") for n in names]) for t in TASKS}}
    return out


def _order(name: str) -> tuple:
    if name in FULL_MODELS or _replicate_of(name) in FULL_MODELS:
        return (0, _replicate_of(name) or name, name)
    return (2 if name.startswith("baseline") else 1, name, name)


def rows(entries: dict, noise: dict[str, dict]) -> list[dict]:
    """One row per entry. Δ of a separately trained model (ablation, seed) is against the reference's seed
    mean where it has replicates (a single run is one draw of that noise), and `seed_range` says whether it
    lies within, below or above the range of the reference's seeds. Δ of a test-time variant of the same
    checkpoint (`-s<N>`, `-ps<N>`) is paired: against that checkpoint's own run, no seed verdict.
    `noise` is `seed_noise(entries)`."""
    order = sorted(entries, key=_order)
    out = []
    for name in order:
        e = entries[name]
        row = {"name": name, "psnr_mean": mean_psnr(e)}
        for t in TASKS:
            row[f"psnr_{t}"] = _get(e, t, "PSNR")
            row[f"ssim_{t}"] = _get(e, t, "SSIM_gt")
        for m in REFERENCE_FREE:
            row[m] = _get(e, None, m)
        ref = name if name in noise else _reference_for(name, entries)  # a seeded model: against its seed mean
        row["reference"] = ref
        paired = ref is not None and _variant_of(name) != name  # same checkpoint, other sampling
        if ref is None:
            ref_mean = math.nan
        elif ref in noise and not paired:
            ref_mean = noise[ref]["mean"]["mean"]
        else:
            ref_mean = mean_psnr(entries[ref])
        row["delta_psnr"] = row["psnr_mean"] - ref_mean
        row["seed_range"] = ""
        if ref in noise and name != ref and _replicate_of(name) is None and not paired:
            lo, hi = noise[ref]["mean"]["min"], noise[ref]["mean"]["max"]
            row["seed_range"] = "below" if row["psnr_mean"] < lo else "above" if row["psnr_mean"] > hi else "within"
        train = e["train"] or {}
        row["params_m"] = train.get("params", math.nan) / 1e6 if train.get("params") else math.nan
        row["train_min"] = train.get("seconds", math.nan) / 60 if train.get("seconds") else math.nan
        row["steps"] = train.get("steps")
        out.append(row)
    return out


def markdown(table: list[dict], entries: dict, noise: dict[str, dict]) -> str:
    lines = ["# Ablation on the embedded test split", "",
             "PSNR / SSIM are to the clean target; the reference-free metrics are means over all test samples "
             "(see docs/metrics.md). Δ is the change in mean PSNR against the full model the row ablates "
             "(regression for `no-*`, against the mean of its seeds where it was trained with several, `*-seed<N>`; "
             "'seeds' says whether the row lies within, below or above the range of those seeds). Rows of the same "
             "checkpoint sampled otherwise are compared with that checkpoint's run (paired): `flow-s<N>` with N "
             "Euler steps, `*-ps<N>` fused with the N-copy patch-shift ensemble (`mmaif fuse --patch-shifts N`). "
             "BLK is the block-pattern diagnostic on the evaluation's grid (1: none; `mmaif evaluate "
             "--grid-period`, docs/metrics.md).", ""]
    head = (["variant", "PSNR mean", "Δ", "seeds"] + [f"PSNR {t}" for t in TASKS] + [f"SSIM {t}" for t in TASKS]
            + list(REFERENCE_FREE) + ["params (M)", "train (min)", "steps"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = ([f"`{r['name']}`", _fmt(r["psnr_mean"]), _fmt(r["delta_psnr"], signed=True), r["seed_range"] or "–"]
                 + [_fmt(r[f"psnr_{t}"]) for t in TASKS] + [_fmt(r[f"ssim_{t}"], 3) for t in TASKS]
                 + [_fmt(r[m], 3) for m in REFERENCE_FREE]
                 + [_fmt(r["params_m"]), _fmt(r["train_min"], 1), str(r["steps"] or "–")])
        lines.append("| " + " | ".join(cells) + " |")
    for model, stats in noise.items():
        m = stats["mean"]
        inside = [r["name"] for r in table if r["reference"] == model and r["seed_range"] == "within"]
        outside = [f"`{r['name']}` ({r['seed_range']})" for r in table
                   if r["reference"] == model and r["seed_range"] in ("below", "above")]
        lines += ["", f"## Seed noise of `{model}`", "",
                  f"The same configuration trained with {m['n']} seeds (`train.seed`; data order and test split "
                  f"fixed): " + ", ".join(f"`{n}`" for n in stats["names"]) + ".", "",
                  "| PSNR | mean | std | min | max | range |", "|---|---|---|---|---|---|"]
        for key, label in [("mean", "mean of tasks")] + [(t, t) for t in TASKS]:
            s = stats[key]
            lines.append(f"| {label} | {_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['min'])} | {_fmt(s['max'])} "
                         f"| {_fmt(s['max'] - s['min'])} |")
        if inside or outside:  # the model has ablations to place
            lines += ["", f"Outside the seed range: {', '.join(outside) if outside else 'none'}. Within it (not "
                          f"distinguishable from seed noise at one run each): "
                          f"{', '.join(f'`{n}`' for n in inside) if inside else 'none'}."]
    baselines = [n for n in entries if n.startswith("baseline")]
    if baselines:
        lines += ["", "## Full models against the classical restoration + fusion baseline", "",
                  "Difference in PSNR to the target (dB), per task; positive means the model is better.", "",
                  "| model | baseline | " + " | ".join(TASKS) + " | mean |", "|---|---|" + "---|" * (len(TASKS) + 1)]
        best = {t: max(_get(entries[b], t, "PSNR") for b in baselines) for t in TASKS}
        references = {b: {t: _get(entries[b], t, "PSNR") for t in TASKS} for b in sorted(baselines)}
        if len(baselines) > 1:
            references["best baseline per task"] = best
        models = {f"`{m}`": {t: _get(entries[m], t, "PSNR") for t in TASKS} for m in FULL_MODELS if m in entries}
        for m, stats in noise.items():
            models[f"`{m}` (mean of {stats['mean']['n']} seeds)"] = {t: stats[t]["mean"] for t in TASKS}
        for model, own in models.items():
            for base, psnr in references.items():
                deltas = [own[t] - psnr[t] for t in TASKS]
                mean = sum(deltas) / len(deltas)
                label = f"`{base}`" if base in entries else base
                lines.append(f"| {model} | {label} | " + " | ".join(_fmt(d, signed=True) for d in deltas)
                             + f" | {_fmt(mean, signed=True)} |")
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    fields = [k for k in table[0] if k != "reference"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else ("" if isinstance(v, float) else v))
                         for k, v in r.items() if k != "reference"})
    return buf.getvalue()


def write_report(metrics_dir: str | Path, out: str | Path, runs_dir: Optional[str | Path] = None) -> list[dict]:
    entries = load_entries(Path(metrics_dir), Path(runs_dir) if runs_dir else None)
    noise = seed_noise(entries)
    table = rows(entries, noise)
    out = Path(out)
    atomic_write_text(out, markdown(table, entries, noise))
    atomic_write_text(out.with_suffix(".csv"), to_csv(table))
    return table


def cmd_report(args) -> int:
    table = write_report(args.metrics, args.out, args.runs)
    print(Path(args.out).read_text())
    print(f"report of {len(table)} entries -> {args.out} (+ {Path(args.out).with_suffix('.csv')})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare variants and baselines: metrics JSONs -> reports/ablation.md",
                       epilog="example: mmaif report --metrics metrics --runs runs --out reports/ablation.md")
    p.add_argument("--metrics", default="metrics", help="folder of evaluation JSONs (default: metrics)")
    p.add_argument("--runs", default="runs", help="training runs folder with train_summary.json (default: runs)")
    p.add_argument("--out", default="reports/ablation.md", help="markdown report (a .csv is written beside it)")
    p.set_defaults(func=cmd_report)
