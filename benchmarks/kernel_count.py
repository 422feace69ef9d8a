"""Kernels per DiT forward: how many device operations one denoiser call issues, by kind, and the bytes they move.

    python benchmarks/kernel_count.py                      # the B preset, regression and flow
    python benchmarks/kernel_count.py --grid 128 --fused-blocks --bf16-weights     # a 1024 px pair, rewritten
    python benchmarks/kernel_count.py --preset tiny --no-autocast
    python benchmarks/kernel_count.py --train --batch 128          # one training step, per phase
    python benchmarks/kernel_count.py --codec --grid 128           # the GPU preset's codec at 1024 px

At batch 1 on a GPU the eager DiT is host-bound: its time follows the number of kernels it launches, not
their size (docs/speed.md: 36 ms at 256 tokens, 48 ms at 4096 on an H200), and even a CUDA graph replays
each kernel at a few microseconds. This counts the aten operations of one forward with a
TorchDispatchMode, on the CPU (the count does not depend on the device), and splits off the view
operations and allocations, which launch nothing. Under bf16 autocast (as `mmaif fuse` runs on a GPU), `_to_copy` counts
the casts of float32 weights and activations.

It also adds up the bytes each kernel reads and writes at the least: every distinct tensor an operation takes
or returns, once. An elementwise kernel moves exactly that; a GEMM or flash attention re-reads tiles from the
cache, not from memory. Divided by the memory's bandwidth (`--bandwidth`, 4.8 TB/s for an H200) it is the time
the kernels need just to move their data, the memory floor beside flops.py's compute floor. The model runs
on fake tensors (shapes and dtypes, no data), so a 1024 px pair or a batch of 128 is counted in seconds.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.fuse import run_in_bf16, store_matmul_weights  # noqa: E402
from mmaif_pl.fused_blocks import fuse_blocks  # noqa: E402
from mmaif_pl.lit.fusion import make_adamw  # noqa: E402
from mmaif_pl.models.dit import DiTSpec, FusionDiT  # noqa: E402

# aten ops that only re-describe memory (no kernel on any device)
VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "select",
         "split", "split_with_sizes", "unbind", "chunk", "detach", "alias", "as_strided", "reshape", "unflatten",
         "flatten", "narrow", "view_as_complex", "view_as_real", "_conj"}
# aten ops that are host-side bookkeeping: profiler markers, a no-op, reads of a CPU scalar (AdamW's step counters),
# a fake tensor's device query, and uninitialised allocations (the caching allocator's, no kernel)
HOST = {"_record_function_enter_new", "_record_function_exit", "lift_fresh", "_local_scalar_dense", "device",
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}

# in-place operations that only write their destination (the others read it too)
WRITE_ONLY = {"copy_", "_foreach_copy_", "fill_", "zero_", "_foreach_zero_", "index_copy_"}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class OpCounter(TorchDispatchMode):
    """Operations by kind, and the bytes each kind's operations read and write: each distinct tensor an operation
    takes or returns once, and the ones it updates in place (AdamW's states, `add_`) once more, as they are read
    and written (a copy's destination only written). A view's bytes are counted where a kernel reads them."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.bytes = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name not in VIEWS | HOST:
            tensors = {id(t): t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)}
            named = dict(zip((a.name for a in func._schema.arguments), args), **(kwargs or {}))
            updated = [named.get(a.name) for a in func._schema.arguments
                       if a.alias_info and a.alias_info.is_write and name not in WRITE_ONLY]
            self.bytes[name] += nbytes(tensors.values()) + nbytes(
                t for t in tree_flatten(updated)[0] if isinstance(t, torch.Tensor))
        return out


def count(dit: FusionDiT, inputs: int, grid: int, text_dim: int, autocast: bool) -> OpCounter:
    """One forward of a pair at batch 1; real or fake tensors, as `dit` was built."""
    x = torch.randn(1, dit.latent_channels * inputs, grid, grid)
    t = torch.rand(1) if dit.t_embed is not None else None
    text = torch.randn(1, text_dim)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        dit(x, text, t)  # the steady state of a sampling loop: what a call makes once per grid is made here
        with OpCounter() as counter:
            dit(x, text, t)
    return counter


def count_training_step(make_dit, inputs: int, grid: int, text_dim: int, autocast: bool, batch: int, train_cfg,
                        fused_adamw: bool, cast_weights: bool) -> dict[str, OpCounter]:
    """Operations per phase of one training step as `mmaif train` takes it on a GPU (bf16-mixed forward, backward,
    gradient clipping, FusionModule's AdamW, fused or multi-tensor, the EMA update), after one step that creates
    the optimizer state. `make_dit()` builds the DiT (twice: the model and its EMA). `cast_weights`: the DiT runs
    on bf16 copies of its matmul weights made in one multi-tensor cast per block (lit/matmul_weights.py), as
    FusionModule trains it under bf16 autocast; else autocast casts each weight."""
    from mmaif_pl.lit.callbacks import update_ema
    from mmaif_pl.lit.matmul_weights import CastMatmulWeights, dit_units

    dit, ema = make_dit().train(), make_dit().requires_grad_(False)
    denoiser = CastMatmulWeights(dit, units=dit_units(dit)) if cast_weights and autocast else dit
    opt = make_adamw(dit, train_cfg, fused=True) if fused_adamw else make_adamw(dit, train_cfg, foreach=True)
    x = torch.randn(batch, dit.latent_channels * inputs, grid, grid)
    target = torch.randn(batch, dit.latent_channels, grid, grid)
    text, t = torch.randn(batch, text_dim), torch.rand(batch) if dit.t_embed is not None else None
    phases, loss = {}, None

    def forward():
        nonlocal loss
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, aux = denoiser(x, text, t)
            loss = (out.float() - target).square().mean() + 0.01 * aux

    steps = {"forward": forward, "backward": lambda: loss.backward(),
             # multi-tensor as on CUDA, which torch picks there by itself (fake tensors would get the per-tensor loop)
             "clip": lambda: torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0, foreach=True),
             "adamw": lambda: (opt.step(), opt.zero_grad(set_to_none=True)),
             "ema": lambda: update_ema(ema, dit, 0.999)}
    for fn in steps.values():  # the first step creates the optimizer state
        fn()
    for name, fn in steps.items():
        with OpCounter() as counter:
            fn()
        phases[name] = counter
    return phases


def count_codec(codec, size: int, autocast: bool) -> dict[str, OpCounter]:
    """Encoding a pair (one call, as FusionModule.encode_pair) and decoding one image at size x size; real or fake
    tensors, as the caller runs it. `autocast`: bf16, as `mmaif fuse --codec-bf16` runs the codec on a GPU."""
    pair = torch.rand(2, 3, size, size)
    counters = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with OpCounter() as counters["encode"]:
            z = codec.encode(pair)
        with OpCounter() as counters["decode"]:
            codec.decode(z[:1])
    return counters


def launches(ops: collections.Counter) -> collections.Counter:
    """The operations that launch a kernel: all but the views and the host-side bookkeeping."""
    return collections.Counter({k: v for k, v in ops.items() if k not in VIEWS | HOST})


def traffic(counter: OpCounter, bandwidth: float) -> str:
    """'X GB = Y ms': the bytes the kernels move, and the time at `bandwidth` TB/s."""
    gb = counter.bytes.total() / 1e9
    return f"{gb:,.2f} GB = {gb / bandwidth:,.2f} ms at {bandwidth:g} TB/s"


def print_counter(name: str, counter: OpCounter, args, width: int, aside: str = "", notes: str = "") -> None:
    """A counted call's line: its kernels, the bytes they move and their time at --bandwidth, the most frequent
    kinds; then the kinds that move the most bytes."""
    kernels = launches(counter.ops)
    top = ", ".join(f"{k} {v}" for k, v in kernels.most_common(args.top))
    print(f"{name:<{width}} {kernels.total():>5} kernels{aside}, {traffic(counter, args.bandwidth)}{notes}; {top}")
    heaviest = ", ".join(f"{k} {v / 1e9:,.2f}" for k, v in counter.bytes.most_common(args.top))
    print(f"{'':<{width}} GB by kind: {heaviest}")


def print_codec(args) -> int:
    from latency import codec_label, random_basis

    from mmaif_pl.models.codec import LatentCodec

    cfg = config.load([str(REPO / "experiments/base.yaml"), str(REPO / "experiments/scale/gpu.yaml")], args.overrides)
    codec = LatentCodec.from_config(cfg.codec).eval()  # built for real, run on fake inputs
    random_basis(codec)
    if args.bf16_weights and codec.ae is not None:  # as accelerate stores them with --codec-bf16 on a GPU
        store_matmul_weights(codec.ae)
    size = args.grid * codec.factor
    with FakeTensorMode(allow_non_fake_inputs=True):
        counters = count_codec(codec, size, not args.no_autocast)
    print(f"codec {codec_label(cfg.codec)} (layers per block {codec.layers_per_block}), {size} px, "
          f"{'float32' if args.no_autocast else 'bf16 autocast'}{', bf16 weights' if args.bf16_weights else ''}")
    for name, counter in counters.items():
        print_counter(name, counter, args, 7)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="B")
    p.add_argument("--grid", type=int, default=32, help="latent side (32 = a 256 px pair in an f8 latent)")
    p.add_argument("--no-autocast", action="store_true", help="float32, without bf16 autocast's casts")
    p.add_argument("--bf16-weights", action="store_true",
                   help="Linear/Conv2d weights stored in bf16 (mmaif fuse --bf16-weights): autocast's casts of them go")
    p.add_argument("--bf16-dit", action="store_true",
                   help="the whole DiT stored and run in bf16 without autocast (mmaif fuse --bf16-dit)")
    p.add_argument("--fused-blocks", action="store_true",
                   help="the sampling rewrite of mmaif fuse --fused-blocks (mmaif_pl/fused_blocks.py)")
    p.add_argument("--sparse-moe", action="store_true",
                   help="the rewrite with only the routed experts computed (mmaif fuse --sparse-moe)")
    p.add_argument("--train", action="store_true",
                   help="one training step instead, per phase (forward, backward, clip, AdamW, EMA)")
    p.add_argument("--batch", type=int, default=32, help="training batch (--train; the GPU preset's: 32)")
    p.add_argument("--foreach-adamw", action="store_true",
                   help="--train: torch's multi-tensor AdamW, as mmaif train ran on a GPU before the fused one")
    p.add_argument("--per-weight-casts", action="store_true",
                   help="--train: autocast casts each matmul weight (and each gradient back), as mmaif train did "
                        "before its multi-tensor casts (one per block)")
    p.add_argument("--codec", action="store_true",
                   help="the GPU preset's codec instead (experiments/scale/gpu.yaml; overrides: codec.*): encoding a "
                        "pair and decoding one, at grid x factor pixels")
    p.add_argument("--bandwidth", type=float, default=4.8,
                   help="memory bandwidth in TB/s for the memory floor (4.8 H200, 3.35 H100 SXM, 2.0 H100 PCIe)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="model.* overrides, e.g. model.moe=false (codec.* with --codec)")
    args = p.parse_args(argv)
    if args.codec:
        return print_codec(args)
    cfg = config.load([], [f"model.preset={args.preset}", *args.overrides])
    spec = DiTSpec.from_config(cfg.model)
    precision = "the whole DiT in bf16, no autocast" if args.bf16_dit else \
        "float32" if args.no_autocast else "bf16 autocast"
    print(f"preset {args.preset} ({spec.hidden} x {spec.depth}, {spec.heads} heads), {args.grid} x {args.grid} "
          f"latent, {precision}{', bf16 weights' if args.bf16_weights and not args.bf16_dit else ''}"
          f"{', fused blocks' if args.fused_blocks or args.sparse_moe else ''}"
          f"{', sparse MoE' if args.sparse_moe else ''}")
    if args.train:
        def make_dit():
            return FusionDiT(cfg.codec.channels, 2, 384, spec, timestep=False)

        with FakeTensorMode():  # shapes and dtypes only: nothing is computed
            phases = count_training_step(make_dit, 2, args.grid, 384, not args.no_autocast, args.batch, cfg.train,
                                         fused_adamw=not args.foreach_adamw, cast_weights=not args.per_weight_casts)
        for name, counter in phases.items():
            multi = sum(v for k, v in launches(counter.ops).items() if k.startswith(("_foreach", "_fused")))
            notes = [f"{multi} of them multi-tensor: a few kernels each on a GPU"] if multi else []
            reads = counter.ops["_local_scalar_dense"]
            notes += [f"{reads} host-side scalar reads"] if reads else []
            print_counter(name, counter, args, 9, notes=f" ({'; '.join(notes)})" if notes else "")
        step = OpCounter()
        for counter in phases.values():
            step.ops.update(counter.ops)
            step.bytes.update(counter.bytes)
        adamw = "multi-tensor" if args.foreach_adamw else "fused"
        casts = "per-weight casts" if args.per_weight_casts else "one cast of the matmul weights per block"
        print(f"training step (regression, batch {args.batch}, {casts}, {adamw} AdamW): "
              f"{launches(step.ops).total()} kernels, {traffic(step, args.bandwidth)}")
        return 0
    for variant, inputs, timestep in (("regression", 2, False), ("flow", 3, True)):
        # built and rewritten for real (module conversions do not take fake parameters), then run on fake inputs
        dit = FusionDiT(cfg.codec.channels, inputs, 384, spec, timestep=timestep).eval().requires_grad_(False)
        if args.fused_blocks or args.sparse_moe:  # before storing weights in bf16, as mmaif_pl.fuse.accelerate does
            fuse_blocks(dit, sparse_moe=args.sparse_moe)
        if args.bf16_dit:
            run_in_bf16(dit)
        elif args.bf16_weights:
            store_matmul_weights(dit)
        with FakeTensorMode(allow_non_fake_inputs=True):
            counter = count(dit, inputs, args.grid, 384, not args.no_autocast)
        print_counter(variant, counter, args, 11, aside=f" ({counter.ops.total()} aten ops with views)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
