"""Adapters from the native folder layouts of fusion benchmarks to pair records.

Layouts (found automatically from a root folder, or named with `layout=`):

- `ir_vi`     `ir/` + `vi/` (MSRS, TNO, RoadScene, M3FD) or `infrared/` + `visible/` (LLVIP, which adds a
              `train/` / `test/` level), optional `gt/` or `fused/`. VIF: a = visible, b = infrared.
- `scene_ab`  `<scene>/<scene>_A.*` + `<scene>/<scene>_B.*` (MEFB, MFIFB), or flat `<name>_A.*` + `<name>_B.*`;
              suffix and extension in any letter case. MEF pairs are put darker-first at load time.
- `sequence`  SICE: `<n>/*.JPG` exposure stacks with `Label/<n>.*` ground truth; the darkest and the
              brightest frame form the pair.
- `generic`   `A/` + `B/` (+ `gt/`): what `mmaif data build` writes; RealMFF's `imageA/<n>_A.*` +
              `imageB/<n>_B.*` (+ `Fusion/<n>_F.*`); two-folder copies `UNDER/` + `OVER/` (MEF) and `NEAR/` +
              `FAR/` (MFF); MFI-WHU's `source_1/` + `source_2/` (+ `full_clear/`).

A root that is none of these is searched (three levels deep) for folders that are, so `discover("data")`
finds every task and split of the embedded default. The task comes from `task=` or from a folder name on
the way (`vif`, `mef`, `mff`, or a known dataset name).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .io import list_images, read_image, sorted_entries

TASKS = ("vif", "mef", "mff")
LAYOUTS = ("ir_vi", "scene_ab", "sequence", "generic")

# Folder names that reveal the task when the caller does not give it.
_TASK_HINTS = {
    "vif": {"vif", "msrs", "tno", "roadscene", "m3fd", "llvip", "ivif"},
    "mef": {"mef", "mefb", "sice", "mefdatabase"},
    "mff": {"mff", "mfifb", "lytro", "mffw", "realmff", "mfi-whu", "mfiwhu"},
}
_IR_NAMES = ("ir", "infrared")
_VI_NAMES = ("vi", "vis", "visible")
_GT_NAMES = ("gt", "fused", "label", "groundtruth")
# The generic layout's two source folders (a, b, the task they imply): A/ + B/; RealMFF's imageA/001_A.png +
# imageB/001_B.png (+ Fusion/001_F.png); two-folder copies of MEF and MFF sets (UNDER/ + OVER/, NEAR/ + FAR/);
# MFI-WHU's source_1/ + source_2/ (+ full_clear/)
_SIDE_FOLDERS = (("a", "b", None), ("imagea", "imageb", None), ("under", "over", "mef"), ("near", "far", "mff"),
                 ("source_1", "source_2", "mff"))
_GENERIC_GT_NAMES = _GT_NAMES + ("fusion", "full_clear")
_AB_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<side>[ab])$", re.IGNORECASE)
_GT_SUFFIX = re.compile(r"^(?P<stem>.+?)(?:[_-]gt|_f)$", re.IGNORECASE)  # <stem>_gt, <stem>-gt, <stem>_F


@dataclass(frozen=True)
class PairRecord:
    """Two registered sources of one scene, and the clean fused ground truth when the dataset has one."""

    name: str
    task: str
    a: Path
    b: Path
    gt: Optional[Path] = None
    dataset: str = ""
    order_by_luminance: bool = False  # MEF without a stated order: darker source first, decided at load
    group: str = ""  # the layout folder under the root discover() searched, where it found several ("mef/MEFB")

    @property
    def pair_id(self) -> str:
        """The pair's name, under its layout folder when a root holds several (`vif/TNO/01`): unique within what
        one discover() call returns, and the relative path (without extension) of `mmaif fuse --dataset`'s output."""
        return f"{self.group}/{self.name}" if self.group else self.name


_SPLIT_OR_TASK = {"train", "test", "val", "validation", *TASKS}


def dataset_name(root: Path) -> str:
    """The dataset a layout folder belongs to: `data/mef/test` -> `data`, `MSRS/test` -> `MSRS`."""
    for part in reversed(root.resolve().parts):
        if part.lower() not in _SPLIT_OR_TASK:
            return part
    return root.name


def _child_dirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted_entries(folder) if p.is_dir() and not p.name.startswith(".")}


def infer_task(path: Path) -> Optional[str]:
    for part in reversed([p.lower() for p in path.resolve().parts]):
        for task, names in _TASK_HINTS.items():
            if part in names:
                return task
    return None


def detect_layout(root: Path) -> Optional[str]:
    """The layout of `root` itself, or None."""
    dirs = _child_dirs(root)
    if any(n in dirs for n in _IR_NAMES) and any(n in dirs for n in _VI_NAMES):
        return "ir_vi"
    if _side_folders(dirs):
        return "generic"
    if "label" in dirs and any(n.isdigit() for n in dirs):
        return "sequence"
    if any(_AB_SUFFIX.match(p.stem) for p in root.iterdir() if p.is_file()):
        return "scene_ab"
    # scene folders, each one pair; a folder of several pairs is a flat dataset of its own, found one level down
    if any(_is_one_pair(_ab_in(d)[0]) for d in dirs.values()):
        return "scene_ab"
    return None


def _read_split_list(root: Path, split: Optional[str]) -> Optional[set[str]]:
    """Names listed in `<root>/<split>.txt` (one per line, extension optional), if such a file exists."""
    if not split:
        return None
    f = root / f"{split}.txt"
    if not f.is_file():
        return None
    names = {Path(line.strip()).stem.lower() for line in f.read_text().splitlines() if line.strip()}
    return names


def _warn_unmatched(root: Path, unmatched: list[str]) -> None:
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:10]) + (" ..." if len(unmatched) > 10 else "")
        warnings.warn(f"{root}: {len(unmatched)} file(s) without a partner: {shown}", stacklevel=3)


def _pick(dirs: dict[str, Path], names: tuple[str, ...]) -> Optional[Path]:
    return next((dirs[n] for n in names if n in dirs), None)


def _ir_vi(root: Path, task: str, split: Optional[str]) -> list[PairRecord]:
    dirs = _child_dirs(root)
    ir, vi, gt = _pick(dirs, _IR_NAMES), _pick(dirs, _VI_NAMES), _pick(dirs, _GT_NAMES)
    assert ir is not None and vi is not None
    # LLVIP keeps train/ and test/ inside infrared/ and visible/.
    if split and (ir / split).is_dir() and (vi / split).is_dir():
        ir, vi = ir / split, vi / split
        gt = gt / split if gt is not None and (gt / split).is_dir() else gt
    irs, vis = list_images(ir), list_images(vi)
    gts = list_images(gt) if gt is not None else {}
    _warn_unmatched(root, [irs[k].name for k in irs.keys() - vis.keys()] + [vis[k].name for k in vis.keys() - irs.keys()])
    return [
        PairRecord(name=vis[k].stem, task=task, a=vis[k], b=irs[k], gt=gts.get(k), dataset=dataset_name(root))
        for k in sorted(irs.keys() & vis.keys())
    ]


def _side_folders(dirs: dict[str, Path]) -> Optional[tuple[Path, Path, Optional[str]]]:
    """The generic layout's source folders a and b, and the task their names imply, if `dirs` has a pair."""
    return next(((dirs[a], dirs[b], task) for a, b, task in _SIDE_FOLDERS if a in dirs and b in dirs), None)


def _implied_task(root: Path) -> Optional[str]:
    """The task the generic layout's folder names imply (UNDER/ + OVER/: mef), if any."""
    sides = _side_folders(_child_dirs(root))
    return sides[2] if sides else None


def _generic(root: Path, task: str, split: Optional[str]) -> list[PairRecord]:
    dirs = _child_dirs(root)
    a_dir, b_dir, _ = _side_folders(dirs)
    a_s, b_s = list_images(a_dir), list_images(b_dir)
    gt_dir = _pick(dirs, _GENERIC_GT_NAMES)
    gts = list_images(gt_dir) if gt_dir is not None else {}
    # Files named by their folder as well (RealMFF's 001_A / 001_B / 001_F) pair without those suffixes; only when
    # every file has its side's, so that names the two folders share keep pairing as they are
    stems_a, stems_b = ({k: _side_stem(k, side) for k in files} for side, files in (("a", a_s), ("b", b_s)))
    suffixed = None not in stems_a.values() and None not in stems_b.values()
    if suffixed:
        a_s, b_s = ({stems[k]: v for k, v in files.items()} for stems, files in ((stems_a, a_s), (stems_b, b_s)))
        gts = {_gt_stem(k) or k: v for k, v in gts.items()}
    _warn_unmatched(root, [a_s[k].name for k in a_s.keys() - b_s.keys()] + [b_s[k].name for k in b_s.keys() - a_s.keys()])
    return [
        PairRecord(name=a_s[k].stem[:-2] if suffixed else a_s[k].stem, task=task, a=a_s[k], b=b_s[k], gt=gts.get(k),
                   dataset=dataset_name(root))
        for k in sorted(a_s.keys() & b_s.keys())
    ]


def _side_stem(key: str, side: str) -> Optional[str]:
    """`key`'s stem if it ends in `side`'s suffix (`001_a` -> `001` for "a"), else None."""
    m = _AB_SUFFIX.match(key)
    return m["stem"] if m and m["side"].lower() == side else None


def _gt_stem(key: str) -> Optional[str]:
    """`key`'s stem if it names a ground truth (`001_f`, `sky_gt` -> `001`, `sky`), else None."""
    m = _GT_SUFFIX.match(key)
    return m["stem"] if m else None


def _ab_in(folder: Path) -> tuple[dict[str, dict[str, Path]], dict[str, Path]]:
    """Group `<stem>_A` / `<stem>_B` files of one folder by lower-case stem; the folder's other images by stem
    (ground truths among them)."""
    groups: dict[str, dict[str, Path]] = {}
    others: dict[str, Path] = {}
    for key, path in list_images(folder).items():
        m = _AB_SUFFIX.match(key)
        if not m:
            others[key] = path
            continue
        groups.setdefault(m["stem"], {}).setdefault(m["side"].lower(), path)
    return groups, others


def _is_one_pair(groups: dict[str, dict[str, Path]]) -> bool:
    """One `_A` and one `_B` file, whatever their prefixes."""
    return sorted(side for sides in groups.values() for side in sides) == ["a", "b"]


def _scene_ab(root: Path, task: str, split: Optional[str]) -> list[PairRecord]:
    records, unmatched = [], []
    folders = [root] + list(_child_dirs(root).values())
    for folder in folders:
        groups, others = _ab_in(folder)
        # A scene folder holds one pair, named by the folder whatever its files' prefixes say (MEFB's
        # `Sky/sKY_a.png` with `Sky_B.png`); a folder of several pairs (the root, or a flat dataset inside it)
        # names each by its stem.
        scene = folder != root and _is_one_pair(groups)
        if scene:
            groups = {folder.name.lower(): {side: path for sides in groups.values() for side, path in sides.items()}}
        gts: dict[str, Path] = {}  # stem -> its ground truth, the first in the folder's order
        for key, path in others.items():
            stem = _gt_stem(key)
            if stem is not None:
                gts.setdefault(stem, path)
        for stem, sides in sorted(groups.items()):
            if "a" in sides and "b" in sides:
                name = folder.name if scene else sides["a"].stem[:-2]
                gt = gts.get(stem)
                records.append(
                    PairRecord(name=name, task=task, a=sides["a"], b=sides["b"], gt=gt, dataset=dataset_name(root),
                               order_by_luminance=(task == "mef"))
                )
            else:
                unmatched += [p.name for p in sides.values()]
    _warn_unmatched(root, unmatched)
    return records


def _mean_luminance(path: Path) -> float:
    """Mean gray level of a reduced copy (JPEG draft mode keeps this cheap for big exposure stacks)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (im.width // 8 or 1, im.height // 8 or 1))
        return float(np.asarray(im.convert("L"), dtype=np.float32).mean())


def _sequence(root: Path, task: str, split: Optional[str]) -> list[PairRecord]:
    dirs = _child_dirs(root)
    labels = list_images(dirs["label"])
    records = []
    for key, folder in sorted(dirs.items(), key=lambda kv: (len(kv[0]), kv[0])):
        if key == "label":
            continue
        frames = list(list_images(folder).values())
        if len(frames) < 2:
            continue
        lum = sorted(frames, key=_mean_luminance)
        records.append(PairRecord(name=folder.name, task=task, a=lum[0], b=lum[-1], gt=labels.get(key), dataset=dataset_name(root)))
    return records


_ADAPTERS = {"ir_vi": _ir_vi, "scene_ab": _scene_ab, "sequence": _sequence, "generic": _generic}


def _find_layout_roots(root: Path, depth: int = 3) -> list[Path]:
    if detect_layout(root) is not None:
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in _child_dirs(root).values():
        found += _find_layout_roots(child, depth - 1)
    return found


def discover(
    root: str | os.PathLike,
    task: Optional[str] = None,
    layout: Optional[str] = None,
    split: Optional[str] = None,
) -> list[PairRecord]:
    """All pairs under `root`. `split` keeps the names in `<root>/<split>.txt` when present, and when
    `root` holds several layout folders, only those under a folder named `split` (embedded default)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset folder")
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task '{task}'; valid: {', '.join(TASKS)}")
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}'; valid: {', '.join(LAYOUTS)}")

    roots = [root] if layout else _find_layout_roots(root)
    if not roots:
        raise UserError(f"{root}: no known dataset layout found (expected one of: {', '.join(LAYOUTS)}; see docs/data.md)")
    if split and roots != [root]:
        in_split = [r for r in roots if split in [p.lower() for p in r.relative_to(root).parts]]
        roots = in_split or roots
    records: list[PairRecord] = []
    for r in roots:
        r_task = task or infer_task(r) or _implied_task(r)
        if r_task is None:
            raise UserError(f"{r}: cannot tell the task from the folder names; pass --task vif|mef|mff")
        found = _ADAPTERS[layout or detect_layout(r)](r, r_task, split)  # type: ignore[index]
        keep = _read_split_list(r, split)
        if keep is not None:
            found = [rec for rec in found if rec.name.lower() in keep]
        if len(roots) > 1:
            found = [replace(rec, group=r.relative_to(root).as_posix()) for rec in found]
        records += found
    if not records:
        raise UserError(f"{root}: no image pairs found")
    return records


def load_pair(rec: PairRecord, with_gt: bool = True) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Read a pair (and its ground truth, unless `with_gt` is False: fusing needs the sources only) as HxWx3
    float32; sources of different sizes are an error."""
    a, b = read_image(rec.a), read_image(rec.b)
    if a.shape != b.shape:
        raise UserError(f"size mismatch: {rec.a} is {a.shape[1]}x{a.shape[0]} but {rec.b} is {b.shape[1]}x{b.shape[0]}")
    gt = read_image(rec.gt) if rec.gt is not None and with_gt else None
    if gt is not None and gt.shape != a.shape:
        raise UserError(f"size mismatch: ground truth {rec.gt} is {gt.shape[1]}x{gt.shape[0]}, sources are {a.shape[1]}x{a.shape[0]}")
    if rec.order_by_luminance and a.mean() > b.mean():
        a, b = b, a
    return a, b, gt


def with_task(records: list[PairRecord], task: str) -> list[PairRecord]:
    return [replace(r, task=task) for r in records]
