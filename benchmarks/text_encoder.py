"""The text encoder's host time for one training batch of new prompts, by part, with and without busy cores.

    python benchmarks/text_encoder.py                                  # CPU, MiniLM, batch 128
    python benchmarks/text_encoder.py --device cuda --busy 14 text.encoder=/path/to/encoder

A training step encodes the batch's prompts it has not met (most of them, for a long time: benchmarks/
prompt_cache.py) and assembles the padded token states on the host. On 2026-11-28 an H200 run of
benchmarks/train_throughput.py spent 638 of the 905 host ms per step of the B preset in `embed_text`, while 14
loader workers shared the machine's 16 cores. This times the parts of one such call (tokenize; the encoder with its
copies in and out; the cache fill; the assembly and its copy to the device) as medians over --repeats batches of
prompts the encoder has not seen, in each condition: cores idle or --busy processes spinning (the loader's
workers at work), PyTorch's intra-op threads at their default or 1, and (on a GPU) the step's stream idle or
queued with --queued-ms of matrix products (the previous step's backward). Then a CPU profile of one call in the
slowest condition with busy cores: which operations take the host's time.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.models.text import TextEncoder  # noqa: E402
from prompt_cache import draw_prompts  # noqa: E402
from train_throughput import timed  # noqa: E402


def spin() -> None:  # a busy core, as a loader worker decoding and degrading images is
    while True:
        pass


def queue_work(device: torch.device, ms: float) -> None:
    """About `ms` of matrix products queued on the current stream (measured once, then scaled)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(4):
        a @ a
    torch.cuda.synchronize(device)
    per = (time.perf_counter() - start) / 4 * 1e3
    for _ in range(max(1, round(ms / per))):
        a @ a


def parts_of_one_call(te: TextEncoder, prompts: list[str], device: torch.device) -> dict[str, float]:
    """Host ms of te(prompts), for prompts it has not met, and of its parts, timed through instance attributes
    over the tokenizer and the methods (removed after): tokenize; the encoder with its copies in and out; the
    cache fill (each prompt's real tokens cut from the batch); the padded batch assembled and sent to the device."""
    store: dict[str, list[float]] = {}
    tokenizer = te.tokenizer
    te.tokenizer = timed(store, "tokenize", tokenizer)
    te._run_encoder = timed(store, "run_encoder", te._run_encoder)
    te._encode_new = timed(store, "encode_new", te._encode_new)
    try:
        timed(store, "all", te)(prompts, device=device)
    finally:
        te.tokenizer = tokenizer
        del te._run_encoder, te._encode_new
    ms = {k: v[0] * 1e3 for k, v in store.items()}  # each called once
    return {"tokenize": ms["tokenize"], "encoder": ms["run_encoder"] - ms["tokenize"],
            "cache_fill": ms["encode_new"] - ms["run_encoder"],
            "assemble_and_copy": ms["all"] - ms["encode_new"], "all": ms["all"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--busy", type=int, default=None, help="spinning processes (default: all cores but 2)")
    p.add_argument("--queued-ms", type=float, default=300.0, help="GPU work queued before each call (GPU only)")
    p.add_argument("--profile", type=int, default=15, metavar="N", help="rows of the CPU profile (0: none)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. text.encoder=PATH")
    args = p.parse_args(argv)
    cfg = config.load([REPO / "experiments/base.yaml", REPO / "experiments/scale/gpu.yaml"], args.overrides)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    busy = args.busy if args.busy is not None else max(0, (mp.cpu_count() or 2) - 2)
    te = TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize).to(device)
    rounds = 2 * 2 * (2 if gpu else 1) * (args.repeats + 1) + 2
    prompts = iter(np.array_split(draw_prompts(cfg, args.batch * rounds, seed=1), rounds))
    te(list(next(prompts)), device=device)  # warm-up: kernels, allocator, tokenizer
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name}; batch {args.batch}; {mp.cpu_count()} cores, {busy} busy processes when busy; "
          f"intra-op threads by default: {torch.get_num_threads()}", flush=True)
    default_threads = torch.get_num_threads()
    worst, worst_ms = None, -1.0
    for cores in ("idle", "busy"):
        spinners = [mp.get_context("fork").Process(target=spin, daemon=True) for _ in range(busy if cores == "busy"
                                                                                             else 0)]
        for s in spinners:
            s.start()
        try:
            for threads in (default_threads, 1):
                torch.set_num_threads(threads)
                for queued in ((False, True) if gpu else (False,)):
                    rows = []
                    for _ in range(args.repeats):
                        sync()
                        if queued:
                            queue_work(device, args.queued_ms)
                        rows.append(parts_of_one_call(te, list(next(prompts)), device))
                    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                    label = f"cores {cores}, {threads} threads" + (", stream queued" if queued else "")
                    print(f"  {label}: host ms " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
                    if cores == "busy" and med["all"] > worst_ms:  # the slowest condition with busy cores
                        worst, worst_ms = (threads, queued), med["all"]
            if args.profile and cores == "busy":
                from torch.profiler import ProfilerActivity, profile
                slow_threads, slow_queued = worst
                torch.set_num_threads(slow_threads)
                sync()
                if slow_queued:
                    queue_work(device, args.queued_ms)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    parts_of_one_call(te, list(next(prompts)), device)
                print(f"CPU profile of one call (cores busy, {slow_threads} threads"
                      + (", stream queued" if slow_queued else "") + ")")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile), flush=True)
        finally:
            for s in spinners:
                s.kill()
            torch.set_num_threads(default_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
