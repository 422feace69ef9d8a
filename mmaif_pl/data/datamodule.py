"""Training samples made on the fly, and the frozen validation / test splits read back from disk.

Training (`FusionDataset`): every sample is a pure function of (data.seed, epoch, index): which task,
dataset and pair, the crop, the flip, the degradations and the prompt. `EpochSampler` hands the
DataLoader (epoch, index) keys, so any worker, any number of workers and a resumed run all see the same
samples; there is no global random state anywhere. Crops follow aspect-ratio buckets (`data.buckets`, w:h,
about `data.crop`^2 pixels, sides a multiple of codec.factor x model.patch); the bucket is drawn per batch
so a batch stacks without padding.

Evaluation (`PreparedDataset`): the split `mmaif data prepare` wrote (docs/interfaces.md), unchanged, so
every variant is scored on identical inputs.

Batches are dicts: `a`, `b`, `a_clean`, `b_clean`, `target` (Bx3xHxW float32 in [0, 1]), `prompt`, `task`,
`id` (lists of str), `degradations` (per sample, a list of records). A training batch may carry fewer images:
`FusionDataModule(train_keys=...)`, which `mmaif train` sets to those its loss reads.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ..errors import ConfigError, UserError
from . import teacher
from .io import read_image
from .policy import TASKS, DegradePolicy, apply_records
from .prompts import check_prompt_config, make_prompt
from .sources import PairRecord, discover, load_pair

IMAGE_KEYS = ("a", "b", "a_clean", "b_clean", "target")
# Domain tags in the seed, so the streams of different purposes never share a Generator state.
STREAM_TRAIN, STREAM_VAL, STREAM_BUCKET = 0, 1, 2


def model_multiple(cfg: Any) -> int:
    """Image sides must be a multiple of this: the codec's downsampling times the DiT's patch size."""
    return int(cfg.codec.factor) * int(cfg.model.patch)


@dataclass
class PairGroup:
    """Pairs of one task from one dataset entry, with the probability of drawing from this group."""

    task: str
    dataset: str
    pairs: list[PairRecord]
    prob: float = 0.0


def _plain(x: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def check_dataset_root(root: str) -> Path:
    """`root` as a Path; a UserError naming it if it does not exist (with how to build the embedded default)."""
    if not Path(root).exists():
        hint = " (build the embedded default with `mmaif data build --out data`)" if root == "data" else ""
        raise UserError(f"dataset folder {root} does not exist{hint}")
    return Path(root)


def build_groups(data_cfg: Any, split: str = "train") -> list[PairGroup]:
    """Discover the configured datasets (default: the embedded one under `data.root`) and weight them:
    P(task) follows `data.task_weights`, P(dataset | task) the entries' `weight`, pairs are uniform."""
    task_weights = dict(_plain(data_cfg.task_weights))
    for task, w in task_weights.items():
        if task not in TASKS:
            raise ConfigError(f"unknown task '{task}' in data.task_weights; valid: {', '.join(TASKS)}")
        if float(w) < 0:
            raise ConfigError(f"data.task_weights.{task} = {w}: weights must be >= 0")
    entries = list(_plain(data_cfg.datasets) or []) or [{"root": data_cfg.root, "split": split, "weight": 1.0}]
    groups: dict[tuple[str, str], PairGroup] = {}
    entry_weight: dict[tuple[str, str], float] = {}
    for e in entries:
        root = check_dataset_root(e["root"])
        if float(e.get("weight", 1.0)) < 0:
            raise ConfigError(f"data.datasets: weight of {root} is {e['weight']}; weights must be >= 0")
        entry_split = e.get("split", split) if split == "train" else split
        for rec in discover(root, task=e.get("task"), layout=e.get("layout"), split=entry_split):
            key = (rec.task, rec.dataset or str(root))
            groups.setdefault(key, PairGroup(rec.task, key[1], [])).pairs.append(rec)
            entry_weight[key] = float(e.get("weight", 1.0))
    tasks = sorted({t for t, _ in groups if float(task_weights.get(t, 0.0)) > 0})
    if not tasks:
        raise UserError(f"no training pairs: found tasks {sorted({t for t, _ in groups})}, "
                        f"but data.task_weights gives them no weight ({task_weights})")
    total_task = sum(float(task_weights[t]) for t in tasks)
    out = []
    for (task, name), g in sorted(groups.items()):
        if task not in tasks:
            continue
        same_task = sum(entry_weight[k] for k in groups if k[0] == task)
        g.prob = float(task_weights[task]) / total_task * entry_weight[(task, name)] / max(same_task, 1e-12)
        out.append(g)
    return [g for g in out if g.prob > 0]


def crop_size(bucket: Sequence[float], area_side: int, multiple: int, max_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a w:h bucket with about area_side^2 pixels, sides multiples of `multiple`, fitting the image."""
    w_r, h_r = float(bucket[0]), float(bucket[1])
    h = area_side * math.sqrt(h_r / w_r)
    w = area_side * math.sqrt(w_r / h_r)
    shrink = min(1.0, max_hw[0] / h, max_hw[1] / w)  # a small image gets a smaller crop of the same shape
    fit = lambda v, limit: max(multiple, min(int(v * shrink // multiple), int(limit // multiple)) * multiple)  # noqa: E731
    return fit(h, max_hw[0]), fit(w, max_hw[1])


class _PairCache:
    """Decoded clean pairs (and teacher targets) kept per worker process up to a memory budget. Stored as
    uint16, which is exact for 8- and 16-bit sources and half the size of float32. A hit returns the stored
    uint16 arrays, so that only the crop a sample takes is converted to float (`to_float`), not the whole
    pair; a miss returns the decoded float32 arrays."""

    def __init__(self, budget_mb: float):
        self.budget = budget_mb * 2**20
        self.used = 0
        self.items: OrderedDict[PairRecord, tuple] = OrderedDict()

    def get(self, rec: PairRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if rec in self.items:
            self.items.move_to_end(rec)
            return self.items[rec]
        a, b, gt = load_pair(rec)
        if gt is None:  # real pairs without a fused ground truth: the classical teacher's fusion
            gt = teacher.fuse(a, b, rec.task)
        stored = tuple(np.round(np.clip(x, 0, 1) * 65535).astype(np.uint16) for x in (a, b, gt))
        size = sum(x.nbytes for x in stored)
        if size <= self.budget:
            while self.used + size > self.budget and self.items:
                self.used -= sum(x.nbytes for x in self.items.popitem(last=False)[1])
            self.items[rec] = stored
            self.used += size
        return a, b, gt


def to_float(img: np.ndarray) -> np.ndarray:
    """A (cropped) image from _PairCache as a contiguous float32 array in [0, 1]: x / 65535 in one pass."""
    if img.dtype == np.uint16:
        return np.ascontiguousarray(np.divide(img, np.float32(65535), dtype=np.float32))
    return np.ascontiguousarray(img)


def to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


class FusionDataset(Dataset):
    """`length` samples per epoch, each made from (seed, epoch, index); indexed by an int (uses `self.epoch`)
    or by an (epoch, index) pair from `EpochSampler`."""

    def __init__(self, cfg: Any, groups: Optional[list[PairGroup]] = None, length: Optional[int] = None,
                 stream: int = STREAM_TRAIN, batch_size: Optional[int] = None,
                 image_keys: Sequence[str] = IMAGE_KEYS):
        self.cfg = cfg
        # the images each sample carries: a training loader ships only what the loss reads (each 256 px image
        # is 0.8 MB that the worker copies, the loader passes through shared memory and Lightning sends to the GPU)
        if not set(image_keys) <= set(IMAGE_KEYS) or not {"a", "b", "target"} <= set(image_keys):
            raise ValueError(f"image_keys {tuple(image_keys)}: a subset of {IMAGE_KEYS} with a, b and target")
        self.image_keys = tuple(k for k in IMAGE_KEYS if k in image_keys)
        self.groups = groups if groups is not None else build_groups(cfg.data)
        self.probs = np.array([g.prob for g in self.groups]) / sum(g.prob for g in self.groups)
        self.length = int(length if length is not None else cfg.data.samples_per_epoch)
        self.stream = stream
        self.seed = int(cfg.data.seed)
        self.batch_size = int(batch_size or cfg.data.batch_size)
        self.multiple = model_multiple(cfg)
        self.policy = DegradePolicy.from_config(cfg.degrade)
        check_prompt_config(cfg.prompts)
        self.buckets = [list(map(float, b)) for b in _plain(cfg.data.buckets)]
        if not self.buckets or any(len(b) != 2 or min(b) <= 0 for b in self.buckets):
            raise ConfigError(f"data.buckets = {self.buckets}: give a list of [w, h] aspect ratios, both > 0")
        if int(cfg.data.crop) < self.multiple:
            raise ConfigError(f"data.crop = {cfg.data.crop} is smaller than the model multiple {self.multiple}")
        self.epoch = 0
        self._cache = _PairCache(float(getattr(cfg.data, "cache_mb", 256)))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.stream, self.seed, epoch, index])

    def bucket(self, epoch: int, index: int) -> list[float]:
        """The aspect ratio of this index's batch: the same for every sample of a batch."""
        rng = np.random.default_rng([STREAM_BUCKET, self.stream, self.seed, epoch, index // self.batch_size])
        return self.buckets[int(rng.integers(len(self.buckets)))]

    def clean_crop(self, epoch: int, index: int, rng: np.random.Generator) -> tuple[PairGroup, PairRecord, list]:
        """Pick a pair and cut the same random crop (and flip) out of a, b and the target."""
        group = self.groups[int(rng.choice(len(self.groups), p=self.probs))]
        rec = group.pairs[int(rng.integers(len(group.pairs)))]
        a, b, gt = self._cache.get(rec)
        h, w = crop_size(self.bucket(epoch, index), int(self.cfg.data.crop), self.multiple, a.shape[:2])
        if h > a.shape[0] or w > a.shape[1]:
            raise UserError(f"{rec.a}: image {a.shape[1]}x{a.shape[0]} is smaller than the model multiple {self.multiple}")
        y = int(rng.integers(a.shape[0] - h + 1))
        x = int(rng.integers(a.shape[1] - w + 1))
        flip = bool(self.cfg.data.flip) and rng.random() < 0.5  # horizontal only: haze depth assumes sky on top
        images = [to_float(im[y:y + h, x:x + w]) for im in (a, b, gt)]
        if flip:  # OpenCV's flip: numpy's copy of a reversed H x W x 3 view is 4x slower
            images = [cv2.flip(im, 1) for im in images]
        return group, rec, images

    def make_sample(self, epoch: int, index: int, names: Optional[Sequence[str]] = None,
                    severity: Optional[str] = None) -> dict:
        """One sample; `names` (and `severity`) force the degradations instead of the policy's draw."""
        rng = self.rng(epoch, index)
        group, rec, (a, b, gt) = self.clean_crop(epoch, index, rng)
        if names is None:
            records = self.policy.sample(group.task, rng)
        else:
            records = self.policy.records_for(group.task, names, rng, severity)
        a_deg, b_deg = apply_records(a, b, records)
        prompt = make_prompt(records, rng, self.cfg.prompts)
        images = {"a": a_deg, "b": b_deg, "a_clean": a, "b_clean": b, "target": gt}
        return {
            **{k: to_chw(images[k]) for k in self.image_keys},
            "prompt": prompt, "task": group.task, "degradations": records,
            "id": f"{rec.name}@{epoch}:{index}", "dataset": group.dataset,
        }

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, (tuple, list)) else (self.epoch, key)
        return self.make_sample(int(epoch), int(index))


class EpochSampler(DistributedSampler):
    """Yields (epoch, index) keys, whole batches of consecutive indices per rank. A DistributedSampler
    subclass so Lightning calls `set_epoch` on it and does not replace it under DDP. Every rank gets the same
    number of batches per epoch (a remainder that would give one rank an extra step, and stall the others at
    their next all-reduce, is left out).

    `position` (a callable; the DataModule passes the trainer's global step, one batch per optimizer step)
    makes the keys a function of the run's batch number g: epoch g // n, that epoch's batch g % n, for n
    batches per rank and epoch. Each iterator starts at the batch after the last one trained and ends with its
    epoch, so a run resumed from any checkpoint, mid-epoch or not, sees the batches the uninterrupted run saw,
    however Lightning's restarted loop counts epochs (its epoch, given by `set_epoch`, is then not used).
    Without `position`: the epoch `set_epoch` gave, from its first batch."""

    def __init__(self, length: int, batch_size: int, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 position=None):
        # Deliberately not calling DistributedSampler.__init__: it needs a dataset and an initialised process group.
        self.length, self.batch_size = int(length), int(batch_size)
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.epoch = 0
        self.position = position
        if not self._batches():
            n_batches = math.ceil(self.length / self.batch_size)
            raise ConfigError(f"data.samples_per_epoch = {self.length} makes {n_batches} batches of data.batch_size = "
                              f"{self.batch_size}, fewer than the {self.num_replicas} ranks that share them")

    def _batches(self) -> range:
        """This rank's batches of an epoch."""
        per_rank = math.ceil(self.length / self.batch_size) // self.num_replicas
        return range(self.rank, per_rank * self.num_replicas, self.num_replicas)

    def _keys(self, epoch: int, batches: range) -> list[tuple[int, int]]:
        bs = self.batch_size
        return [(epoch, i) for b in batches for i in range(b * bs, min((b + 1) * bs, self.length))]

    def __iter__(self):
        batches = self._batches()
        if self.position is None:
            return iter(self._keys(self.epoch, batches))
        epoch, done = divmod(int(self.position()), len(batches))
        return iter(self._keys(epoch, batches[done:]))

    def __len__(self) -> int:
        return len(self._keys(0, self._batches()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


@contextmanager
def opencv_threads(n: int):
    """OpenCV's thread count set to `n` in this process within the block, restored after."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes run OpenCV on one thread each. The workers are the parallelism: with
    OpenCV's pool of one thread per core in each of N workers, the machine runs N x cores threads, and a sample
    costs a third more CPU time for the pool's upkeep (16 threads, benchmarks/data_throughput.py), taken from the
    other workers and from the main process, which launches the training step. A forked worker cannot set
    this itself (`cv2.setNumThreads` deadlocks in the child of a process that has used the pool), so this process
    sets one thread while its iterator forks the workers, which keep it, and restores its own count after.
    Samples are the same bits on any number of OpenCV threads (OpenCV splits an image in stripes)."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with opencv_threads(1):
            return super().__iter__()


class ResumableLoader(WorkerLoader):
    """The training DataLoader with Lightning's `state_dict` / `load_state_dict`, so that a mid-epoch resume is
    known to be exact. Its position is the number of batches trained, which the checkpoint restores with the
    trainer's global step before the loader's iterator is made (the EpochSampler reads it from there); the state
    records it, and loading checks that the two agree."""

    def state_dict(self) -> dict:
        return {"batches_trained": int(self.sampler.position())}

    def load_state_dict(self, state: dict) -> None:
        saved, now = int(state["batches_trained"]), int(self.sampler.position())
        if saved != now:
            raise RuntimeError(f"the checkpoint's training loader had served {saved} batches, the restored trainer "
                               f"is at step {now}: the run cannot resume on the batches it would have seen")


def collate(samples: Sequence[dict]) -> dict:
    """Stack images (centre-cropping to the smallest common size if a batch mixes sizes) and list the rest. In a
    loader worker, torch's default_collate stacks the images straight into shared memory, where torch.stack's batch
    would be copied there once more to reach the main process (0.3 GB per batch of 128 at 256 px)."""
    batch: dict[str, Any] = {}
    keys = [k for k in IMAGE_KEYS if all(s.get(k) is not None for s in samples)]
    h = min(s["a"].shape[1] for s in samples)
    w = min(s["a"].shape[2] for s in samples)
    for k in keys:
        crops = []
        for s in samples:
            t = s[k]
            y, x = (t.shape[1] - h) // 2, (t.shape[2] - w) // 2
            crops.append(t[:, y:y + h, x:x + w])
        batch[k] = default_collate(crops)
    for k in ("prompt", "task", "degradations", "id", "dataset"):
        batch[k] = [s.get(k) for s in samples]
    return batch


class PreparedDataset(Dataset):
    """A split written by `mmaif data prepare`: `<dir>/index.json` and its images."""

    def __init__(self, split_dir: str | Path):
        self.dir = Path(split_dir)
        index = self.dir / "index.json"
        if not index.is_file():
            raise UserError(f"{index} not found: run `mmaif data prepare` first")
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{index}: not valid JSON ({exc})") from None
        self.meta = meta
        self.samples: list[dict] = meta.get("samples", [])
        if not self.samples:
            raise UserError(f"{index}: the split has no samples")

    def __len__(self) -> int:
        return len(self.samples)

    def same_size(self) -> bool:
        from PIL import Image

        sizes = {Image.open(self.dir / s["a"]).size for s in self.samples}
        return len(sizes) == 1

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        item = {k: (to_chw(read_image(self.dir / s[k])) if s.get(k) else None) for k in IMAGE_KEYS}
        item.update(prompt=s["prompt"], task=s["task"], degradations=s["degradations"], id=s["id"],
                    dataset=s.get("dataset", ""))
        return item


class FusionDataModule(L.LightningDataModule):
    """Train on the fly; validate and test on the prepared split (or, with data.val_fraction > 0, validate on
    that fraction of samples_per_epoch drawn on the fly with a fixed seed)."""

    def __init__(self, cfg: Any, train_keys: Sequence[str] = IMAGE_KEYS):
        """`train_keys`: the images of a training batch (validation and test batches carry all of them)."""
        super().__init__()
        self.cfg = cfg
        self.train_keys = tuple(train_keys)
        DegradePolicy.from_config(cfg.degrade)  # bad configs fail here, not in a worker
        check_prompt_config(cfg.prompts)
        if not 0.0 <= float(cfg.data.val_fraction) <= 1.0:
            raise ConfigError(f"data.val_fraction = {cfg.data.val_fraction} is out of range; valid range: [0, 1]")
        self.train_set: Optional[FusionDataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[PreparedDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = FusionDataset(self.cfg, image_keys=self.train_keys)
        if stage in (None, "validate") and self.val_set is None:  # built lazily by val_dataloader() during fit
            if float(self.cfg.data.val_fraction) > 0:
                groups = self.train_set.groups if self.train_set is not None else None
                n = max(1, round(float(self.cfg.data.val_fraction) * int(self.cfg.data.samples_per_epoch)))
                self.val_set = FusionDataset(self.cfg, groups, length=n, stream=STREAM_VAL)
            else:
                self.check_validation_split()
                self.val_set = PreparedDataset(Path(self.cfg.data.prepared) / "val")
        if stage in (None, "test") and self.test_set is None:
            self.test_set = PreparedDataset(Path(self.cfg.data.prepared) / "test")

    def check_validation_split(self) -> None:
        """A UserError where validation would read a prepared split that is not there (data.val_fraction 0)."""
        val_dir = Path(self.cfg.data.prepared) / "val"
        if float(self.cfg.data.val_fraction) == 0 and not (val_dir / "index.json").is_file():
            raise UserError(f"{val_dir}/index.json not found: run `mmaif data prepare`, "
                            "or set data.val_fraction > 0 to validate on samples drawn on the fly")

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, kind=WorkerLoader) -> DataLoader:
        workers = int(self.cfg.data.num_workers)
        # torch makes each worker single-threaded for torch, WorkerLoader for OpenCV
        return kind(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                    collate_fn=collate, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        bs = int(self.cfg.data.batch_size)
        if self.trainer is None:  # outside a fit (tests, benchmarks): epochs by set_epoch
            return self._loader(self.train_set, bs, EpochSampler(len(self.train_set), bs))
        return self._loader(self.train_set, bs, EpochSampler(len(self.train_set), bs, position=self._batches_trained),
                            kind=ResumableLoader)

    def _batches_trained(self) -> int:
        return self.trainer.global_step  # one batch per optimizer step (no gradient accumulation)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        # Every rank of a multi-device run evaluates the whole split, in order, as one device does: the metrics
        # then mean the same for any number of devices (and under train.val_batches the same first batches),
        # where Lightning's sharding would score each rank's shard, padded with repeats to equal lengths. Its own
        # DistributedSampler (of one replica) keeps Lightning from putting in one of its own.
        whole = None
        if self.trainer is not None and self.trainer.world_size > 1:
            whole = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
        batch_size = int(self.cfg.data.batch_size)
        if isinstance(dataset, PreparedDataset) and not dataset.same_size():  # variable sizes: one image at a time
            batch_size = 1
        return self._loader(dataset, batch_size, whole)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._eval_loader(self.test_set)
