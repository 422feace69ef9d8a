"""`mmaif data prepare`: freeze the validation and test splits, so every variant is scored on identical inputs.

Layout and index format: docs/interfaces.md ("Prepared split"). The test split is organised so results
read per task, per degradation and per number of coexisting degradations, at mild and heavy severity:

- singles: every operator of the task at mild and at heavy, each on `data.test_per_operator` pairs
  (rotating through the test pairs);
- combos: `data.test_combos` random compatible combinations of 2 and of 3 operators, at mild and at heavy;
- clean: `data.test_clean` undegraded samples (the fusion-only reference).

The validation split is smaller: `data.val_samples` per task, drawn with the training policy from the
root's validation pairs (its training pairs when it has no validation split, never its test pairs).
The pairs come from the datasets training reads (`data.datasets`, else the embedded default under `data.root`),
or from `--root`.

Test targets are the dataset's ground truth or null (real pairs have none; the teacher is not truth);
validation targets fall back to the teacher's fusion so a validation loss exists. Images are centre-cropped
to at most `data.eval_crop` and to a multiple of codec.factor x model.patch. Everything is seeded by
`data.seed`; the split is written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import UserError
from . import teacher
from .datamodule import _plain, check_dataset_root, model_multiple
from .degrade import SEVERITIES
from .io import write_image
from .policy import MIXED, TASK_OPERATORS, TASKS, DegradePolicy, apply_records, draw_names
from .prompts import check_prompt_config, make_prompt
from .sources import PairRecord, discover, load_pair

STREAM_PREPARE = 7  # seed domain tag (see datamodule.STREAM_*)
SPLIT_CODES = {"val": 0, "test": 1}
TEST_SEVERITIES = ("mild", "heavy")


def _split_pairs(root: Path, task: Optional[str], split: str, layout: Optional[str] = None,
                 train_split: Optional[str] = "train") -> list[PairRecord]:
    """Pairs of `split` under root. A root without split structure gives all its pairs for test; for val it
    gives the `train_split` pairs if the root has such a split, else all pairs (then val and test share images)."""
    everything = discover(root, task=task, layout=layout)
    for name in ([split] if split == "test" else [split, train_split or "train"]):
        try:
            recs = discover(root, task=task, layout=layout, split=name)
        except UserError:
            continue
        in_split = [r for r in recs if name in [p.lower() for p in r.a.relative_to(root).parts]]
        if in_split or len(recs) < len(everything):
            return in_split or recs
    if split == "val":
        print(f"warning: {root} has no train/val split; validation pairs are drawn from all its pairs",
              file=sys.stderr)
    return everything


def centre_crop(img: np.ndarray, limit: int, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    th = (min(h, limit) if limit > 0 else h) // multiple * multiple
    tw = (min(w, limit) if limit > 0 else w) // multiple * multiple
    if th == 0 or tw == 0:
        raise UserError(f"image of {w}x{h} is smaller than the model multiple {multiple}")
    y, x = (h - th) // 2, (w - tw) // 2
    return img[y:y + th, x:x + tw]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def test_plan(task: str, pairs: Sequence[PairRecord], cfg: Any, rng: np.random.Generator) -> list[tuple]:
    """(severity, operator names, pair) for every test sample of one task."""
    plan: list[tuple] = []
    ops = TASK_OPERATORS[task]
    turn = 0
    for sev in TEST_SEVERITIES:
        for op in ops:
            for _ in range(int(cfg.data.test_per_operator)):
                plan.append((sev, [op], pairs[turn % len(pairs)]))
                turn += 1
    for n in (2, 3):
        for sev in TEST_SEVERITIES:
            seen: set = set()
            for _ in range(int(cfg.data.test_combos)):
                for _attempt in range(20):  # avoid exact repeats of (combo, pair)
                    names = draw_names(ops, n, rng)
                    pair = pairs[int(rng.integers(len(pairs)))]
                    if (tuple(names), pair.name) not in seen:
                        break
                seen.add((tuple(names), pair.name))
                plan.append((sev, names, pair))
    for k in range(int(cfg.data.test_clean)):
        plan.append(("none", [], pairs[(turn + k) % len(pairs)]))
    return plan


def val_plan(task: str, pairs: Sequence[PairRecord], cfg: Any, policy: DegradePolicy,
             rng: np.random.Generator) -> list[tuple]:
    plan = []
    for _ in range(int(cfg.data.val_samples)):
        names = policy.choose(task, rng)
        sev = SEVERITIES[int(rng.integers(len(SEVERITIES)))] if policy.severity == MIXED else policy.severity
        plan.append((sev if names else "none", names, pairs[int(rng.integers(len(pairs)))]))
    return plan


def _write_split(split: str, cfg: Any, folder: Path, by_task: dict[str, list[PairRecord]],
                 log: Callable[[str], None]) -> int:
    policy = DegradePolicy.from_config(cfg.degrade)
    multiple, limit, seed = model_multiple(cfg), int(cfg.data.eval_crop), int(cfg.data.seed)
    samples: list[dict] = []
    ids: set[str] = set()
    cache: dict[PairRecord, tuple] = {}
    for task, pairs in by_task.items():
        plan_rng = np.random.default_rng([STREAM_PREPARE, seed, SPLIT_CODES[split], TASKS.index(task)])
        plan = test_plan(task, pairs, cfg, plan_rng) if split == "test" else val_plan(task, pairs, cfg, policy, plan_rng)
        for k, (sev, names, pair) in enumerate(plan):
            if pair not in cache:
                a, b, gt = load_pair(pair)
                if gt is None and split == "val":
                    gt = teacher.fuse(a, b, task)
                cache[pair] = tuple(None if x is None else centre_crop(x, limit, multiple) for x in (a, b, gt))
            a, b, gt = cache[pair]
            rng = np.random.default_rng([STREAM_PREPARE, seed, SPLIT_CODES[split], TASKS.index(task), 1000 + k])
            records = policy.records_for(task, names, rng, sev) if names else []
            a_deg, b_deg = apply_records(a, b, records)
            prompt = make_prompt(records, rng, cfg.prompts)
            sid = _safe(f"{task}-{len(names)}-{sev}-{'+'.join(names) or 'clean'}-{pair.name}")
            while sid in ids:
                sid += "_"
            ids.add(sid)
            entry = {"id": sid, "task": task, "dataset": pair.dataset, "source_name": pair.name, "severity": sev,
                     "n_degradations": len(names), "prompt": prompt, "degradations": records}
            for key, img in (("a", a_deg), ("b", b_deg), ("a_clean", a), ("b_clean", b), ("target", gt)):
                if img is None:
                    entry[key] = None
                    continue
                write_image(folder / key / f"{sid}.png", img)
                entry[key] = f"{key}/{sid}.png"
            samples.append(entry)
            if sys.stderr.isatty():
                print(f"\r  {split}/{task}: {k + 1}/{len(plan)}", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        log(f"  {split}/{task}: {len(plan)} samples from {len(pairs)} pairs")
    index = {"split": split, "seed": seed, "created_by": "mmaif data prepare", "samples": samples}
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return len(samples)


def split_sources(cfg: Any, root: Optional[str | Path] = None, task: Optional[str] = None) -> list[dict]:
    """The datasets the splits are drawn from, as data.datasets entries (root, task, layout, split): `root` if
    given, else the training sources of `data.datasets`, else the embedded default under `data.root`. Each
    root must exist."""
    configured = list(_plain(cfg.data.datasets) or [])
    if root is not None or not configured:
        entries = [{"root": str(root or cfg.data.root), "task": task}]
    elif task is not None:
        raise UserError("--task goes with --root; the entries of data.datasets name their own task")
    else:
        entries = configured
    for e in entries:
        check_dataset_root(e["root"])
    return entries


def prepare(cfg: Any, out: str | Path, root: Optional[str | Path] = None, task: Optional[str] = None,
            splits: Sequence[str] = ("val", "test"), log: Callable[[str], None] = print) -> dict:
    """Write the prepared `splits` under `out`, drawn from `split_sources`; returns {split: sample count}."""
    DegradePolicy.from_config(cfg.degrade)  # config errors before any work
    check_prompt_config(cfg.prompts)
    sources = split_sources(cfg, root, task)
    for split in splits:
        if split not in SPLIT_CODES:
            raise UserError(f"unknown split '{split}'; valid: {', '.join(SPLIT_CODES)}")
    log(f"preparing {', '.join(splits)} from {', '.join(e['root'] for e in sources)} ...")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts: dict[str, int] = {}
    try:
        for split in splits:
            by_task: dict[str, list[PairRecord]] = {}
            for e in sources:
                for rec in _split_pairs(Path(e["root"]), e.get("task"), split, e.get("layout"), e.get("split")):
                    by_task.setdefault(rec.task, []).append(rec)
            counts[split] = _write_split(split, cfg, tmp / split, dict(sorted(by_task.items())), log)
        for split in splits:  # swap each finished split into place
            old = out / split
            trash = tmp / f".old-{split}"
            if old.exists():
                old.rename(trash)
            (tmp / split).rename(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def _run(args: argparse.Namespace) -> int:
    from .. import config

    cfg = config.load(args.config, args.overrides)
    out = args.out or cfg.data.prepared
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    start = time.perf_counter()
    counts = prepare(cfg, out, args.root, args.task, splits, log=lambda m: print(m, file=sys.stderr))
    done = " and ".join(f"{s} ({n} samples)" for s, n in counts.items())
    print(f"wrote {done} to {out}/ in {time.perf_counter() - start:.1f} s")
    return 0


def add_prepare_parser(data_subparsers: argparse._SubParsersAction) -> None:
    p = data_subparsers.add_parser(
        "prepare", help="freeze the validation and test splits (degraded once, seeded, with metadata)",
        epilog="example: mmaif data prepare -c experiments/base.yaml --out prepared\n"
               "         mmaif data prepare --root ../shared/datasets/mef/MEFB --task mef --splits test --out prepared_mefb",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", default=[], help="config file(s), merged left to right")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.seed=1)")
    p.add_argument("--out", help="output folder (default: data.prepared)")
    p.add_argument("--root", help="dataset root (default: the roots of data.datasets, else data.root); any folder "
                                  "the adapters read")
    p.add_argument("--task", choices=TASKS, help="task of --root (default: from the folder names)")
    p.add_argument("--splits", default="val,test", help="comma-separated splits to write (default: val,test)")
    p.set_defaults(func=_run)
