"""Kernels per DiT forward: how many device operations one denoiser call issues, by kind.

    python benchmarks/kernel_count.py                      # the B preset, regression and flow
    python benchmarks/kernel_count.py --preset tiny --no-autocast
    python benchmarks/kernel_count.py --train                      # one training step, per phase

At batch 1 on a GPU the eager DiT is host-bound: its time follows the number of kernels it launches, not
their size (docs/speed.md: 36 ms at 256 tokens, 48 ms at 4096 on an H200), and even a CUDA graph replays
each kernel at a few microseconds. This counts the aten operations of one forward with a
TorchDispatchMode, on the CPU (the count does not depend on the device), and splits off the view
operations, which launch nothing. Under bf16 autocast (as `mmaif fuse` runs on a GPU), `_to_copy` counts
the casts of float32 weights and activations.
"""
from __future__ import annotations

import argparse
import collections
import copy
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmaif_pl import config  # noqa: E402
from mmaif_pl.fuse import store_matmul_weights  # noqa: E402
from mmaif_pl.fused_blocks import fuse_blocks  # noqa: E402
from mmaif_pl.models.dit import DiTSpec, FusionDiT  # noqa: E402

# aten ops that only re-describe memory (no kernel on any device)
VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "select",
         "split", "split_with_sizes", "unbind", "chunk", "detach", "alias", "as_strided", "reshape", "unflatten",
         "flatten", "narrow"}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(dit: FusionDiT, inputs: int, grid: int, text_dim: int, autocast: bool) -> collections.Counter:
    x = torch.randn(1, dit.latent_channels * inputs, grid, grid)
    t = torch.rand(1) if dit.t_embed is not None else None
    text = torch.randn(1, text_dim)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        dit(x, text, t)  # the steady state of a sampling loop: what a call makes once per grid is made here
        with OpCounter() as counter:
            dit(x, text, t)
    return counter.ops


def count_training_step(dit: FusionDiT, inputs: int, grid: int, text_dim: int, autocast: bool) -> dict:
    """Operations per phase of one training step as `mmaif train` takes it on a GPU (bf16-mixed forward, backward,
    gradient clipping, AdamW with the parameter groups of FusionModule.configure_optimizers and CUDA's default
    multi-tensor implementation, the EMA update), after one step that creates the optimizer state."""
    from mmaif_pl.lit.callbacks import update_ema

    ema = copy.deepcopy(dit).requires_grad_(False)
    decay = [p for p in dit.parameters() if p.dim() >= 2]
    rest = [p for p in dit.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, foreach=True)
    x = torch.randn(2, dit.latent_channels * inputs, grid, grid)
    target = torch.randn(2, dit.latent_channels, grid, grid)
    text, t = torch.randn(2, text_dim), torch.rand(2) if dit.t_embed is not None else None
    phases, loss = {}, None

    def forward():
        nonlocal loss
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, aux = dit(x, text, t)
            loss = (out.float() - target).square().mean() + 0.01 * aux

    steps = {"forward": forward, "backward": lambda: loss.backward(),
             "clip": lambda: torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0),
             "adamw": lambda: (opt.step(), opt.zero_grad(set_to_none=True)),
             "ema": lambda: update_ema(ema, dit, 0.999)}
    for fn in steps.values():  # the first step creates the optimizer state
        fn()
    for name, fn in steps.items():
        with OpCounter() as counter:
            fn()
        phases[name] = counter.ops
    return phases


# aten ops that are host-side bookkeeping: profiler markers, a no-op, reads of a CPU scalar (AdamW's step counters)
HOST = {"_record_function_enter_new", "_record_function_exit", "lift_fresh", "_local_scalar_dense"}


def launches(ops: collections.Counter) -> collections.Counter:
    """The operations that launch a kernel: all but the views and the host-side bookkeeping."""
    return collections.Counter({k: v for k, v in ops.items() if k not in VIEWS | HOST})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="B")
    p.add_argument("--grid", type=int, default=32, help="latent side (32 = a 256 px pair in an f8 latent)")
    p.add_argument("--no-autocast", action="store_true", help="float32, without bf16 autocast's casts")
    p.add_argument("--bf16-weights", action="store_true",
                   help="Linear/Conv2d weights stored in bf16 (mmaif fuse --bf16-weights): autocast's casts of them go")
    p.add_argument("--fused-blocks", action="store_true",
                   help="the sampling rewrite of mmaif fuse --fused-blocks (mmaif_pl/fused_blocks.py)")
    p.add_argument("--sparse-moe", action="store_true",
                   help="the rewrite with only the routed experts computed (mmaif fuse --sparse-moe)")
    p.add_argument("--train", action="store_true",
                   help="one training step instead, per phase (forward, backward, clip, AdamW, EMA)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="model.* overrides, e.g. model.moe=false")
    args = p.parse_args(argv)
    cfg = config.load([], [f"model.preset={args.preset}", *args.overrides])
    spec = DiTSpec.from_config(cfg.model)
    print(f"preset {args.preset} ({spec.hidden} x {spec.depth}, {spec.heads} heads), {args.grid} x {args.grid} "
          f"latent, {'float32' if args.no_autocast else 'bf16 autocast'}{', bf16 weights' if args.bf16_weights else ''}"
          f"{', fused blocks' if args.fused_blocks or args.sparse_moe else ''}"
          f"{', sparse MoE' if args.sparse_moe else ''}")
    if args.train:
        dit = FusionDiT(cfg.codec.channels, 2, 384, spec, timestep=False).train()
        phases = count_training_step(dit, 2, args.grid, 384, not args.no_autocast)
        for name, ops in phases.items():
            kernels = launches(ops)
            multi = sum(v for k, v in kernels.items() if k.startswith("_foreach"))
            notes = [f"{multi} of them multi-tensor: a few kernels each on a GPU"] if multi else []
            notes += [f"{ops['_local_scalar_dense']} host-side scalar reads"] if ops["_local_scalar_dense"] else []
            top = ", ".join(f"{k} {v}" for k, v in kernels.most_common(args.top))
            notes = f" ({'; '.join(notes)})" if notes else ""
            print(f"{name:<9} {kernels.total():>5} kernels{notes}; {top}")
        print(f"training step (regression): {sum(launches(ops).total() for ops in phases.values())} kernels")
        return 0
    for variant, inputs, timestep in (("regression", 2, False), ("flow", 3, True)):
        dit = FusionDiT(cfg.codec.channels, inputs, 384, spec, timestep=timestep).eval().requires_grad_(False)
        if args.fused_blocks or args.sparse_moe:  # before storing weights in bf16, as mmaif_pl.fuse.accelerate does
            fuse_blocks(dit, sparse_moe=args.sparse_moe)
        if args.bf16_weights:
            store_matmul_weights(dit)
        ops = count(dit, inputs, args.grid, 384, not args.no_autocast)
        kernels = launches(ops)
        top = ", ".join(f"{k} {v}" for k, v in kernels.most_common(args.top))
        print(f"{variant:<11} {kernels.total():>5} kernels ({ops.total()} aten ops with views); {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
