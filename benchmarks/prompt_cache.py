"""How many distinct prompts a training run meets, and what the text encoder's cache keeps of their reuse.

    python benchmarks/prompt_cache.py                        # 300 000 samples of the GPU preset's prompts
    python benchmarks/prompt_cache.py --samples 50000 --sizes 1024 32768 --json out.json

Draws the prompts the training DataModule draws (degradation policy, then prompt generator; the tasks in turn,
no images), and prints: the distinct prompts after each doubling of the samples; for each cache size, the
fraction of prompts found in a least-recently-used cache of that many (the unbounded one too); and the bytes per
cached entry, measured by encoding 1 000 of them. A run of S samples meets about as many distinct prompts as the
doublings show, and an unbounded cache holds all of them in every training process.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.data.policy import TASKS, DegradePolicy  # noqa: E402
from mmaif_pl.data.prompts import make_prompt  # noqa: E402
from mmaif_pl.models.text import CACHE_SIZE, TextEncoder  # noqa: E402


def draw_prompts(cfg, samples: int, seed: int = 0) -> list[str]:
    policy, rng = DegradePolicy.from_config(cfg.degrade), np.random.default_rng(seed)
    return [make_prompt(policy.sample(TASKS[i % len(TASKS)], rng), rng, cfg.prompts) for i in range(samples)]


def lru_hit_rate(prompts: list[str], size: int | None) -> float:
    """The fraction of `prompts` found in a least-recently-used cache of `size` entries (None: no bound), as
    TextEncoder keeps it."""
    cache: OrderedDict[str, None] = OrderedDict()
    hits = 0
    for p in prompts:
        if p in cache:
            hits += 1
            cache.move_to_end(p)
        else:
            cache[p] = None
            if size is not None and len(cache) > size:
                cache.popitem(last=False)
    return hits / len(prompts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", help="YAML configs (default: base + scale/gpu)")
    p.add_argument("--samples", type=int, default=300_000)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, CACHE_SIZE, 65536],
                   help=f"cache sizes to simulate (TextEncoder's default: {CACHE_SIZE})")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from latency import write_json

    files = args.config or [str(REPO / "experiments/base.yaml"), str(REPO / "experiments/scale/gpu.yaml")]
    cfg = config.load(files, [])
    start = time.perf_counter()
    prompts = draw_prompts(cfg, args.samples)
    print(f"{args.samples} samples' prompts drawn in {time.perf_counter() - start:.0f} s")
    distinct, seen, mark = {}, set(), 1000
    for i, prompt in enumerate(prompts, 1):
        seen.add(prompt)
        if i == mark or i == len(prompts):
            distinct[i] = len(seen)
            mark *= 2
    print("distinct prompts after N samples: " + ", ".join(f"{n}: {d}" for n, d in distinct.items()))
    hit_rates = {str(size): round(lru_hit_rate(prompts, size), 4) for size in args.sizes}
    hit_rates["unbounded"] = round(lru_hit_rate(prompts, None), 4)
    print("found in the cache (LRU of N prompts): " + ", ".join(f"{k}: {v:.1%}" for k, v in hit_rates.items()))

    encoder = TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize)
    sample = sorted(seen)[:1000]
    encoder(sample)
    entry_bytes = sum(t.numel() * t.element_size() for t in encoder._cache.values()) / len(encoder._cache)
    print(f"bytes per cached prompt: {entry_bytes:.0f} ({cfg.text.encoder}); a full cache of {CACHE_SIZE}: "
          f"{CACHE_SIZE * entry_bytes / 2**30:.2f} GiB; all {len(seen)} distinct prompts: "
          f"{len(seen) * entry_bytes / 2**30:.2f} GiB")
    if args.json:
        write_json(Path(args.json), {"samples": args.samples, "distinct_after": distinct, "hit_rate": hit_rates,
                                     "bytes_per_entry": round(entry_bytes), "cache_size": CACHE_SIZE})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
