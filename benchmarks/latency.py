"""End-to-end fusion latency: encode both sources, DiT (regression: one pass; flow: N Euler steps), decode.

    python benchmarks/latency.py                                   # CPU preset, the full table
    python benchmarks/latency.py --device cpu --size 512 --variant regression
    python benchmarks/latency.py --device cuda --preset B -c experiments/scale/gpu.yaml --codec-bf16 --json out.json
    python benchmarks/latency.py --checkpoint runs/regression/checkpoints/last.ckpt --size 1024
    python benchmarks/latency.py --codec-dir checkpoints/codec --size 1024     # trained codec, random DiT

What is timed: `FusionModule.fuse` on tensors already on the device (the model is loaded and warmed up
first; loading, PNG I/O and host transfers are excluded), with a synchronised timer around each part
(`encode_pair`, `sample` = the DiT including the cached prompt embedding, `decode`). A size larger than
`--tile` goes through the `Fuser`'s feathered pixel tiles instead (numpy in, numpy out: one transfer each
way, included; tiles are cut and blended on the device) and the parts are summed over tiles. Each figure is
the median of the repeats after warm-up.
On GPU the DiT runs under bf16 autocast (as `mmaif fuse` does); `--codec-bf16` also runs a learned codec
in bf16. Without --checkpoint the model is built from the config with random weights: latency does not
depend on the weights (dense MoE dispatch, no data-dependent work), and the output says so.

The classical baseline (restoration of both sources by their degradation names, then the per-task rule,
`mmaif_pl.baselines.restore_and_fuse`, OpenCV on the CPU) is timed on the same pair, once per size.

JSON (`--json OUT`): {"device", "cpu", "threads", "weights", "preset", "codec", "codec_layers_per_block", "tile",
..., "results": [{"variant", "size", "steps", "ms", "encode_ms", "dit_ms", "decode_ms", "baseline_ms", "cpu_ms",
"tiles", "repeats", "peak_rss_mb", "peak_gpu_mb"}]}. `cpu_ms` is the process CPU time of a run (all threads): on a shared,
busy machine it shows the work done when wall time is inflated by other processes.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.fuse import Fuser, accelerate, resolve_device  # noqa: E402

PROMPT = "The visible image is noisy and hazy."
BASELINE_TASK, BASELINE_DEGRADATIONS = "vif", ["gaussian_noise", "haze"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / 1024, 1)


def test_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A photograph (scikit-image's astronaut, mirrored to any size) and a gray 'thermal' partner."""
    import cv2
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32) / 255  # 512 x 512
    pad = max(0, size - img.shape[0])
    big = np.pad(img, ((0, pad), (0, pad), (0, 0)), mode="symmetric")[:size, :size]
    a = np.ascontiguousarray(np.clip(big * 0.5, 0, 1))
    gray = cv2.cvtColor(np.ascontiguousarray(big), cv2.COLOR_RGB2GRAY)
    b = np.ascontiguousarray(np.repeat(cv2.GaussianBlur(gray, (0, 0), 2)[..., None], 3, 2))
    return a, b


def randomize(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give the zero-initialised tensors (adaLN up-projections, gates, output layer, block PE) random values,
    so the timed model computes something non-degenerate, like a trained one."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0, std)


def random_basis(codec) -> None:
    """An orthonormal random basis in place of the linear codec's PCA fit (the same cost)."""
    if codec.linear is not None:
        q = torch.linalg.qr(torch.randn(codec.linear.basis.shape[1], codec.channels))[0]
        codec.linear.basis.copy_(q.T)


def build(cfg, variant: str, checkpoint: str | None, codec_dir: str | None = None):
    from mmaif_pl.lit.fusion import build_module, load_module
    from mmaif_pl.models.codec import LatentCodec
    from mmaif_pl.models.text import TextEncoder

    if checkpoint:
        return load_module(checkpoint), "checkpoint"
    cfg = config.load([], []) if cfg is None else cfg
    cfg.train.variant = variant
    torch.manual_seed(0)
    if codec_dir or cfg.codec.kind == "pretrained":
        codec = LatentCodec.load(codec_dir or cfg.codec.path)
        cfg.codec.factor, cfg.codec.channels = codec.factor, codec.channels
    else:
        codec = LatentCodec.from_config(cfg.codec)
        random_basis(codec)
    module = build_module(cfg, codec, TextEncoder(cfg.text.encoder, cfg.text.max_length, cfg.text.normalize))
    randomize(module.ema)
    return module.eval(), "random (latency does not depend on the weights)"


class PartTimer:
    """Wraps a module's encode_pair / sample / decode with synchronised timers (summed over tiles)."""

    def __init__(self, module, device: torch.device):
        self.device, self.t = device, {"encode": 0.0, "dit": 0.0, "decode": 0.0}
        for name, part in (("encode_pair", "encode"), ("sample", "dit"), ("decode", "decode")):
            setattr(module, name, self._wrap(getattr(module, name), part))

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, fn, part):
        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.t[part] += time.perf_counter() - t0
            return out
        return timed

    def reset(self):
        for k in self.t:
            self.t[k] = 0.0


def profile_table(fn, device: torch.device, top: int, calls: int = 3) -> str:
    """torch.profiler over `calls` calls of fn: the `top` operations by self time on the device (on a CPU, by
    CPU self time), headed by the wall time per call against the time the device was busy. Busy far below wall
    means host-bound (launches and Python), busy close to wall means the kernels decide."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        wall_ms = (time.perf_counter() - t0) * 1e3 / calls
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy_ms = sum(getattr(e, key) for e in events) / 1e3 / calls
    head = (f"profile, {calls} calls: wall {wall_ms:.1f} ms per call, "
            f"{'device' if cuda else 'CPU (all ops, self)'} busy {busy_ms:.1f} ms per call")
    return head + "\n" + events.table(sort_by=key, row_limit=top)


def time_model(fuser: Fuser, timer: PartTimer, size: int, steps: int, warmup: int, repeats: int,
               budget_s: float, profile: int = 0) -> dict:
    dev = fuser.device
    a_np, b_np = test_pair(size)
    tiled = fuser.tile > 0 and size > fuser.tile
    if tiled:
        from mmaif_pl.fuse import _starts

        n = len(_starts(size, fuser.tile, fuser.tile - fuser.overlap)) ** 2

        def once():
            fuser(a_np, b_np, PROMPT)
    else:
        n = 1
        a = torch.from_numpy(a_np.transpose(2, 0, 1).copy())[None].to(dev)
        b = torch.from_numpy(b_np.transpose(2, 0, 1).copy())[None].to(dev)

        def once():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=fuser.bf16):
                fuser.module.fuse(a, b, [PROMPT], steps=steps, seed=0)
    fuser.steps = steps
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(warmup):
        once()
    runs = []
    start = time.perf_counter()
    while len(runs) < repeats and (not runs or time.perf_counter() - start < budget_s):
        timer.reset()
        timer.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        once()
        timer.sync()
        runs.append({"ms": (time.perf_counter() - t0) * 1e3, **{f"{k}_ms": v * 1e3 for k, v in timer.t.items()},
                     "cpu_ms": (time.process_time() - c0) * 1e3})
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    if profile:
        print(profile_table(once, dev, profile), flush=True)
    return {**med, "tiles": n, "repeats": len(runs), "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None}


def time_baseline(size: int, repeats: int, budget_s: float) -> float:
    from mmaif_pl.baselines import restore_and_fuse

    a, b = test_pair(size)
    restore_and_fuse(a, b, BASELINE_TASK, BASELINE_DEGRADATIONS)  # warm-up (OpenCV's first calls)
    runs, start = [], time.perf_counter()
    while len(runs) < repeats and (not runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        restore_and_fuse(a, b, BASELINE_TASK, BASELINE_DEGRADATIONS)
        runs.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(runs), 1)


def codec_label(codec) -> str:
    """"tiny f8x16": how the benchmarks' JSONs name a codec (a LatentCodec or a config's codec section), and how
    flops.py checks that a measured run is of the model it counts."""
    return f"{codec.kind} f{codec.factor}x{codec.channels}"


def write_json(out: Path, data: dict) -> None:
    from mmaif_pl.atomic import atomic_write_text  # creates the folder, writes a temporary file, renames

    atomic_write_text(out, json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", type=int, nargs="+", default=[256, 512, 1024, 2048], help="square pair sides (pixels)")
    p.add_argument("--variant", nargs="+", default=["regression", "flow"], choices=["regression", "flow"])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8], help="flow Euler steps")
    p.add_argument("--preset", help="model preset (tiny | S | B | L); default: the config's")
    p.add_argument("-c", "--config", action="append", help="YAML configs (default: base + scale/cpu or scale/gpu)")
    p.add_argument("--checkpoint", help="time a trained checkpoint instead of random weights")
    p.add_argument("--codec-dir", help="a trained codec folder (mmaif train-codec) in place of a random codec")
    p.add_argument("--tile", type=int, help="tile larger sizes at this side (default: 512 on CPU, 2048 on GPU; 0: never)")
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--warmup", type=int, help="untimed runs per setting (default: 2 CPU, 5 GPU)")
    p.add_argument("--repeats", type=int, help="timed runs per setting (default: 5 CPU, 20 GPU)")
    p.add_argument("--budget-s", type=float, default=30.0, help="stop repeating a setting after this long (>= 1 run)")
    p.add_argument("--compile", metavar="MODE", help="torch.compile (default | reduce-overhead | max-autotune)")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA graphs of the eager DiT and codec (GPU)")
    p.add_argument("--bf16-weights", action="store_true", help="the DiT's matmul weights stored in bf16 (GPU bf16)")
    p.add_argument("--bf16-dit", action="store_true",
                   help="the whole DiT stored and run in bf16, without autocast (mmaif fuse --bf16-dit)")
    p.add_argument("--fused-blocks", action="store_true",
                   help="the DiT rewritten into fewer kernels (mmaif fuse --fused-blocks, mmaif_pl/fused_blocks.py)")
    p.add_argument("--sparse-moe", action="store_true",
                   help="--fused-blocks with only the routed experts computed (mmaif fuse --sparse-moe)")
    p.add_argument("--channels-last", action="store_true", help="channels-last codec convolutions")
    p.add_argument("--codec-bf16", action="store_true", help="run a learned codec under bf16 autocast (GPU)")
    p.add_argument("--no-bf16", action="store_true", help="GPU: keep the DiT in float32")
    p.add_argument("--patch-shifts", type=int, default=1, choices=(1, 2, 4),
                   help="test-time patch-shift ensemble (mmaif fuse --patch-shifts): N DiT passes per call")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after each row, the N operations that take the most device time (torch.profiler)")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")
    p.add_argument("--json", help="write the results here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. codec.kind=tiny")
    args = p.parse_intermixed_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.bf16_weights and not (gpu and not args.no_bf16):
        p.error("--bf16-weights needs the DiT under bf16 autocast: a CUDA device, without --no-bf16")
    if args.sparse_moe and gpu and args.no_bf16 and not args.bf16_dit:
        p.error("--sparse-moe on a GPU needs the DiT under bf16 autocast (CUDA's grouped GEMM is bf16 only)")
    if args.threads:  # on a busy machine, 1 thread avoids OpenMP threads spinning at barriers for a descheduled peer
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    files = args.config or [str(REPO / "experiments/base.yaml"), str(REPO / f"experiments/scale/{'gpu' if gpu else 'cpu'}.yaml")]
    overrides = list(args.overrides) + ([f"model.preset={args.preset}"] if args.preset else [])
    cfg = config.load(files, overrides) if not args.checkpoint else None
    tile = args.tile if args.tile is not None else (2048 if gpu else 512)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    repeats = args.repeats if args.repeats is not None else (20 if gpu else 5)
    name = torch.cuda.get_device_name(device) if gpu else cpu_name()
    print(f"device: {name} ({device}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    results, header, baselines = [], None, {}
    for variant in args.variant:
        module, weights = build(cfg, variant, args.checkpoint, args.codec_dir)
        if args.checkpoint and module.variant != variant:
            continue
        module = module.to(device)
        accelerate(module, args.compile, channels_last=args.channels_last, codec_bf16=args.codec_bf16,
                   cuda_graphs=args.cuda_graphs, bf16_weights=args.bf16_weights, fused_blocks=args.fused_blocks,
                   sparse_moe=args.sparse_moe, bf16_dit=args.bf16_dit)
        fuser = Fuser(module, device=str(device), tile=tile, overlap=args.overlap, bf16=gpu and not args.no_bf16,
                      patch_shifts=args.patch_shifts)
        timer = PartTimer(module, device)
        if header is None:
            mc, cc = module.cfg.model, module.codec
            header = {"device": name, "cpu": cpu_name(), "threads": torch.get_num_threads(), "weights": weights,
                      "preset": mc.preset, "codec": codec_label(cc),
                      "codec_layers_per_block": cc.layers_per_block, "tile": tile,
                      "dit_bf16": fuser.bf16, "codec_bf16": args.codec_bf16 and gpu, "compile": args.compile,
                      "cuda_graphs": args.cuda_graphs, "bf16_weights": args.bf16_weights,
                      "bf16_dit": args.bf16_dit,
                      "fused_blocks": args.fused_blocks or args.sparse_moe, "sparse_moe": args.sparse_moe,
                      "channels_last": args.channels_last, "patch_shifts": args.patch_shifts,
                      "baseline": f"restore_and_fuse({BASELINE_TASK!r}, {BASELINE_DEGRADATIONS}) on the CPU "
                      f"(OpenCV, {cpu_name()})"}
            print(f"model: preset {mc.preset}, codec {header['codec']}, weights {weights}; "
                  f"tile {tile or 'off'}, DiT bf16 {'stored, no autocast' if args.bf16_dit else fuser.bf16}, "
                  f"codec bf16 {header['codec_bf16']}, "
                  f"compile {args.compile or 'off'}, CUDA graphs {'on' if args.cuda_graphs else 'off'}, "
                  f"fused blocks {'on' if args.fused_blocks or args.sparse_moe else 'off'}"
                  f"{', sparse MoE' if args.sparse_moe else ''}")
            print(f"{'variant':<11}{'size':>6}{'steps':>6}{'ms':>10}{'encode':>9}{'dit':>9}{'decode':>9}"
                  f"{'cpu ms':>9}{'tiles':>6}{'base ms':>10}{'ratio':>7}{'rss MB':>8}")
        for size in args.size:
            for steps in (args.steps if variant == "flow" else [1]):
                r = time_model(fuser, timer, size, steps, warmup, repeats, args.budget_s, args.profile)
                if not args.no_baseline and size not in baselines:
                    baselines[size] = time_baseline(size, min(repeats, 5), args.budget_s)
                base = baselines.get(size)
                row = {"variant": variant, "size": size, "steps": steps, **r, "baseline_ms": base}
                results.append(row)
                ratio = f"{base / r['ms']:.1f}x" if base else "-"
                print(f"{variant:<11}{size:>6}{steps:>6}{r['ms']:>10.1f}{r['encode_ms']:>9.1f}{r['dit_ms']:>9.1f}"
                      f"{r['decode_ms']:>9.1f}{r['cpu_ms']:>9.0f}{r['tiles']:>6}{base or float('nan'):>10.1f}{ratio:>7}"
                      f"{r['peak_rss_mb']:>8.0f}", flush=True)
                if args.json:  # after every row: a run stopped at a time limit keeps what it measured
                    write_json(Path(args.json), {**header, "results": results})
    if args.json:
        write_json(Path(args.json), {**(header or {"device": name}), "results": results})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
