"""Fuse images with a trained model: a checkpoint in, fused PNGs out, at any size.

Sizes: an image up to `tile` pixels on its longest side is fused in one pass (padded by reflection to
the model's multiple, cropped back). A larger one is cut into overlapping pixel tiles whose outputs are
blended with a feathered (linear ramp) window, so memory stays flat and no seam shows. Nothing is ever
resized.

Colour: `model` keeps the model's RGB, except where neither source has any colour (gray pairs, as TNO's): the
fused image is then its luminance, gray too, instead of the faint tint a model trained on colour leaves; `source-a`
keeps the fused luminance and takes the chroma of source a (the visible image in VIF), the convention of most VIF
papers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .data.color import gray_of, is_gray
from .data.io import list_images, write_image
from .data.sources import TASKS, PairRecord, discover, load_pair
from .errors import UserError

DEFAULT_PROMPT = "Fuse the two images."  # prompts.NEUTRAL[0], as the training prompts of clean samples read
COLOR_POLICIES = ("model", "source-a")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(n: int, overlap: int, device=None) -> torch.Tensor:
    """1-D feather: rises over `overlap` pixels at each end, flat in between, never zero."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    return torch.clamp(torch.minimum(i + 1, n - i) / max(overlap, 1), max=1.0)


def fuse_tiled(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
               tile: int, overlap: int) -> torch.Tensor:
    """Apply `fn` (pair of HxWx3 -> HxWx3) on overlapping tiles and blend them with feathered weights.

    Everything stays on the sources' device: on a GPU the tiles never cross to the host and the blending
    takes milliseconds (a 4096 px pair spent 1.7 of its 3.0 s on host-side tiling, docs/speed.md)."""
    H, W = a.shape[:2]
    if tile <= 0 or (H <= tile and W <= tile):  # tile <= 0: always one pass
        return fn(a, b)
    if overlap >= tile:
        raise UserError(f"tile overlap ({overlap}) must be smaller than the tile ({tile})")
    th, tw = min(tile, H), min(tile, W)
    stride = tile - overlap
    acc = torch.zeros((H, W, 3), dtype=torch.float32, device=a.device)
    weight = torch.zeros((H, W, 1), dtype=torch.float32, device=a.device)
    window = _ramp(th, overlap, a.device)[:, None, None] * _ramp(tw, overlap, a.device)[None, :, None]
    for y in _starts(H, th, stride):
        for x in _starts(W, tw, stride):
            out = fn(a[y:y + th, x:x + tw], b[y:y + th, x:x + tw])
            acc[y:y + th, x:x + tw] += out * window
            weight[y:y + th, x:x + tw] += window
    return acc / weight


def keep_chroma_of(fused: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Fused luminance (BT.601 Y) with the chroma (Cr, Cb) of `source`."""
    import cv2

    f = cv2.cvtColor(np.ascontiguousarray(fused, np.float32), cv2.COLOR_RGB2YCrCb)
    s = cv2.cvtColor(np.ascontiguousarray(source, np.float32), cv2.COLOR_RGB2YCrCb)
    s[..., 0] = f[..., 0]
    return np.clip(cv2.cvtColor(s, cv2.COLOR_YCrCb2RGB), 0.0, 1.0)


def store_matmul_weights(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """Keep the weights and biases of `module`'s Linear and Conv2d layers in `dtype`, in place.

    Under autocast to `dtype` this changes no output bit: autocast casts exactly these tensors to `dtype` on
    every call (one kernel each: 490 of the 1 882 kernels of a B forward, benchmarks/kernel_count.py), and
    every other parameter stays float32. Without that autocast the layers would get float32 inputs: only
    for inference under it."""
    from .fused_blocks import GroupedLinear  # the stacked experts of `--sparse-moe`: Linear layers too
    from .lit.matmul_weights import MATMUL_LAYERS  # the tensors training casts once per step

    for m in module.modules():
        if isinstance(m, (*MATMUL_LAYERS, GroupedLinear)):
            m.to(dtype)


class InBf16:
    """A FusionDiT's forward on bf16 inputs with autocast off, for a DiT stored in bf16 (`run_in_bf16`). The
    latents and text states are cast on entry; the flow time t stays float32, as the timestep sinusoid of
    t * 1000 needs more than bf16's 8 bits, and the text mask stays boolean."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, x, text, t=None, text_tokens=None, text_mask=None):
        def bf16(v):
            return None if v is None else v.to(torch.bfloat16)

        with torch.autocast(x.device.type, enabled=False):
            return self.forward(bf16(x), bf16(text), t, bf16(text_tokens), text_mask)


def run_in_bf16(dit: torch.nn.Module) -> None:
    """Store a sampling FusionDiT in bf16 and run it without autocast, in place: every activation, the residual
    stream included, stays bf16, so none of autocast's casts remain and the elementwise traffic halves. Unlike
    `store_matmul_weights` this changes the output (measured in docs/speed.md). The RoPE frequencies stay
    float32: in bf16 a position's angle would be off by up to a quarter radian on a 64-token side. The output is
    bf16, as under autocast."""
    from .models.layers import RoPE2D

    ropes = {m: m.freqs for m in dit.modules() if isinstance(m, RoPE2D)}
    dit.to(torch.bfloat16)
    for rope, freqs in ropes.items():
        rope.freqs = freqs
    dit.forward = InBf16(dit.forward)


def compile_blocks(dit: torch.nn.Module, backend: str = "inductor", mode: Optional[str] = None) -> None:
    """Regional torch.compile of a FusionDiT, in place: each block and the final layer. The blocks share their
    code, so dynamo compiles three graphs for the twelve (block 0 has no value residual, block 1 gets block
    0's strided values) instead of tracing the unrolled model (B preset, CPU: 26 s against 66 s; the whole
    model ran past 150 s on an H200)."""
    for part in [*dit.blocks, dit.final]:
        part.compile(backend=backend, mode=mode)


def accelerate(module, compile_mode: Optional[str] = None, backend: str = "inductor",
               channels_last: bool = False, codec_bf16: bool = False, cuda_graphs: bool = False,
               bf16_weights: bool = False, fused_blocks: bool = False, sparse_moe: bool = False,
               bf16_dit: bool = False):
    """Opt-in inference fast paths that keep the module's behaviour (state_dict keys, outputs up to float
    rounding): `torch.compile` of the sampling denoiser (the EMA DiT) and of a learned codec's encoder and
    decoder (in place, `nn.Module.compile`; `compile_mode` e.g. "default", "max-autotune"), CUDA graphs of
    the denoiser and codec (`cuda_graphs`: one capture per image size, of the eager or the compiled code),
    bf16 storage of the denoiser's matmul weights (`bf16_weights`: bit-exact under bf16 autocast, which the
    caller must run it under; see `store_matmul_weights`; with `codec_bf16` on a GPU, the learned codec's too),
    the denoiser rewritten into fewer kernels
    (`fused_blocks`: mmaif_pl/fused_blocks.py, the same function up to float rounding; `sparse_moe`: the same
    rewrite with only the routed experts computed, implies `fused_blocks`), the denoiser stored and run in bf16
    without autocast (`bf16_dit`: see `run_in_bf16`; not bit-exact), channels-last memory
    for the codec's convolutions, and bf16 autocast for a learned codec on GPU. All are off by default; each
    pays on GPU, none pays for the CPU preset (measured in docs/speed.md)."""
    if cuda_graphs:
        if compile_mode == "reduce-overhead":
            raise UserError("compile mode reduce-overhead already uses CUDA graphs: use it or cuda_graphs, not both")
        if module.device.type != "cuda":
            raise UserError(f"CUDA graphs need the model on a CUDA device, it is on {module.device}")
    ae = getattr(module.codec, "ae", None)
    if channels_last and ae is not None:
        ae.to(memory_format=torch.channels_last)
    if fused_blocks or sparse_moe:  # first: the rewrite makes new Linear layers, which the steps below then treat
        from .fused_blocks import fuse_blocks

        fuse_blocks(module.ema, sparse_moe=sparse_moe)
    if bf16_dit:  # before compiling or capturing, as below; every weight in bf16, the matmul ones included
        run_in_bf16(module.ema)
    elif bf16_weights:  # before compiling or capturing, which would bake in the casts of float32 weights
        store_matmul_weights(module.ema)
    if bf16_weights and codec_bf16 and ae is not None and module.device.type == "cuda":  # codec autocast: CUDA only
        store_matmul_weights(ae)
    if compile_mode:
        mode = None if compile_mode == "default" else compile_mode
        compile_blocks(module.ema, backend, mode)
        if ae is not None:
            for part in (getattr(ae, "encoder", None), getattr(ae, "decoder", None)):
                if part is not None:
                    part.compile(backend=backend, mode=mode)
    if cuda_graphs:  # the sampling denoiser and the codec; the DiT being trained (module.dit) is left alone
        from .cuda_graphs import CUDAGraphed

        module.ema.forward = CUDAGraphed(module.ema.forward)
        module.codec.encode = CUDAGraphed(module.codec.encode)
        module.codec.decode = CUDAGraphed(module.codec.decode)
    module.codec_bf16 = codec_bf16
    return module


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch spells it (cpu, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Fuser:
    """A trained model ready to fuse pairs: `Fuser(ckpt)(a, b, prompt) -> fused` (numpy HxWx3 in [0, 1]).

    `checkpoint` may also be a FusionModule already in memory (tests, benchmarks). It is used, not copied:
    the Fuser moves it to the device, puts it in eval mode, sets its `patch_shifts`, and the fast paths
    change its EMA DiT and codec in place (pass a deep copy to keep the original). `compile` (a torch.compile
    mode, e.g. "default"), `cuda_graphs`, `bf16_weights`, `fused_blocks`, `sparse_moe`, `channels_last` and
    `codec_bf16`, `bf16_dit` switch on the fast paths of `accelerate`."""

    def __init__(self, checkpoint, device: str = "auto", steps: Optional[int] = None,
                 tile: int = 512, overlap: int = 64, color: str = "model", seed: int = 0,
                 codec_path: Optional[str] = None, bf16: Optional[bool] = None,
                 compile: Optional[str] = None, channels_last: bool = False, time_shift: Optional[float] = None,
                 patch_shifts: int = 1, cuda_graphs: bool = False, bf16_weights: bool = False,
                 fused_blocks: bool = False, sparse_moe: bool = False, codec_bf16: bool = False,
                 bf16_dit: bool = False):
        from .lit.fusion import FusionModule, load_module
        from .models.dit import ensemble_shifts

        if color not in COLOR_POLICIES:
            raise UserError(f"unknown colour policy '{color}'; valid: {', '.join(COLOR_POLICIES)}")
        self.device = resolve_device(device)
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        if bf16_weights and not self.bf16:
            raise UserError("bf16 weights need the DiT under bf16 autocast (the GPU default; bf16=True on a CPU)")
        if sparse_moe and self.device.type == "cuda" and not (self.bf16 or bf16_dit):
            raise UserError("--sparse-moe on a GPU needs the DiT under bf16 autocast: CUDA's grouped GEMM is bf16 only")
        if codec_bf16 and self.device.type != "cuda":
            raise UserError(f"--codec-bf16 runs the codec under bf16 autocast on a GPU; the device is {self.device}")
        module = checkpoint if isinstance(checkpoint, FusionModule) else load_module(checkpoint, codec_path=codec_path)
        self.module = module.eval().to(self.device)
        try:
            ensemble_shifts(self.module.spec.patch, patch_shifts)
        except ValueError as exc:
            raise UserError(f"--patch-shifts: {exc}") from None
        self.module.patch_shifts = patch_shifts
        if compile or channels_last or cuda_graphs or bf16_weights or fused_blocks or sparse_moe or codec_bf16 \
                or bf16_dit:
            accelerate(self.module, compile, channels_last=channels_last, cuda_graphs=cuda_graphs,
                       bf16_weights=bf16_weights, fused_blocks=fused_blocks, sparse_moe=sparse_moe,
                       codec_bf16=codec_bf16, bf16_dit=bf16_dit)
        self.steps, self.tile, self.overlap, self.color, self.seed = steps, tile, overlap, color, seed
        self.time_shift = time_shift
        self.variant = self.module.variant

    @torch.no_grad()
    def _fuse_one(self, a: torch.Tensor, b: torch.Tensor, prompt: str) -> torch.Tensor:
        """HxWx3 sources (tiles) on the device -> the HxWx3 fused image there, in [0, 1]."""
        ta, tb = (x.permute(2, 0, 1).contiguous()[None] for x in (a, b))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.module.fuse(ta, tb, [prompt], steps=self.steps, seed=self.seed, shift=self.time_shift)
        return out[0].float().permute(1, 2, 0)

    def __call__(self, a: np.ndarray, b: np.ndarray, prompt: str = DEFAULT_PROMPT) -> np.ndarray:
        if a.shape != b.shape:
            raise UserError(f"sources differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device) for x in (a, b))
        fused = fuse_tiled(lambda x, y: self._fuse_one(x, y, prompt), ta, tb, self.tile, self.overlap).cpu().numpy()
        if self.color == "source-a":
            return keep_chroma_of(fused, a)
        return gray_of(fused) if is_gray(a) and is_gray(b) else fused


# ----------------------------------------------------------------------------------------------------
# `mmaif fuse`
# ----------------------------------------------------------------------------------------------------


def _jobs(args) -> list[tuple[PairRecord, str, Path]]:
    """(pair, prompt, output path) for every pair the arguments describe."""
    out = Path(args.out)
    given = [flag for flag, value in (("--a/--b", args.a or args.b), ("--prepared", args.prepared),
                                      ("--dataset", args.dataset)) if value]
    if len(given) > 1:
        raise UserError(f"give one of --a/--b, --prepared and --dataset, not {' and '.join(given)}")
    if (args.task or args.split) and not args.dataset:
        raise UserError("--task and --split choose the pairs of a --dataset")
    if (args.prepared or args.dataset or (args.a and Path(args.a).is_dir())) and out.suffix.lower() == ".png":
        raise UserError(f"--out {out}: the fused images of several pairs go into a folder; name one without .png")
    if args.prepared:
        import json

        split = Path(args.prepared)
        index = split / "index.json"
        if not index.is_file():
            raise UserError(f"{index} not found: run `mmaif data prepare` first")
        samples = json.loads(index.read_text())["samples"]
        return [(PairRecord(s["id"], s["task"], split / s["a"], split / s["b"]), args.prompt or s["prompt"],
                 out / f"{s['id']}.png") for s in samples]
    prompt = args.prompt or DEFAULT_PROMPT
    if args.dataset:
        # a benchmark in its native layout (docs/data.md); MEF pairs darker first, as in training
        records = discover(args.dataset, task=args.task, split=args.split)
        return [(r, prompt, out / f"{r.pair_id}.png") for r in records]
    if not (args.a and args.b):
        raise UserError("give --a and --b (two images or two folders), --prepared SPLIT_DIR or --dataset ROOT")
    a, b = Path(args.a), Path(args.b)
    if a.is_dir() != b.is_dir():
        raise UserError(f"--a {a} and --b {b} must both be images or both be folders")
    if a.is_file() or not a.exists():
        if out.suffix.lower() != ".png":
            raise UserError(f"--out {out}: a single fused image is written as .png")
        return [(PairRecord(a.stem, "", a, b), prompt, out)]
    la, lb = list_images(a), list_images(b)
    common = sorted(la.keys() & lb.keys())
    if not common:
        raise UserError(f"no images with the same name in {a} and {b}")
    missing = sorted(la.keys() ^ lb.keys())
    if missing:
        print(f"warning: {len(missing)} image(s) without a partner skipped: {', '.join(missing[:8])}", file=sys.stderr)
    return [(PairRecord(k, "", la[k], lb[k]), prompt, out / f"{la[k].stem}.png") for k in common]


# `mmaif fuse --fast`: the fast paths that keep the output (bit-exact or up to float rounding; the bf16 codec
# 0.01-0.03 dB of reconstruction PSNR), the configuration of docs/speed.md's GPU latency table
FAST_PATHS = ("cuda_graphs", "bf16_weights", "fused_blocks", "channels_last", "codec_bf16")


def cmd_fuse(args) -> int:
    jobs = _jobs(args)
    if args.skip_existing:  # outputs are written whole (temporary name, then rename): one that exists is complete
        todo = [job for job in jobs if not job[2].exists()]
        if len(todo) < len(jobs):
            print(f"--skip-existing: {len(jobs) - len(todo)} of {len(jobs)} fused image(s) already in {args.out}, "
                  f"kept", file=sys.stderr)
        if not todo:
            print(f"nothing to fuse: every output is in {args.out}")
            return 0
        jobs = todo
    if args.fast:
        if resolve_device(args.device).type == "cuda":
            for name in FAST_PATHS:
                setattr(args, name, True)
        else:
            print("note: --fast switches on GPU fast paths; on a CPU none pays, so it changes nothing here",
                  file=sys.stderr)
    fuser = Fuser(args.checkpoint, device=args.device, steps=args.steps, time_shift=args.time_shift,
                  tile=args.tile, overlap=args.overlap,
                  color=args.color, seed=args.seed, codec_path=args.codec, compile=args.compile,
                  channels_last=args.channels_last, patch_shifts=args.patch_shifts, cuda_graphs=args.cuda_graphs,
                  bf16_weights=args.bf16_weights, fused_blocks=args.fused_blocks, sparse_moe=args.sparse_moe,
                  codec_bf16=args.codec_bf16, bf16_dit=args.bf16_dit)
    start = time.perf_counter()
    for i, (pair, prompt, dest) in enumerate(jobs, 1):
        a, b, _ = load_pair(pair, with_gt=False)
        write_image(dest, fuser(a, b, prompt))
        if sys.stderr.isatty():
            print(f"\rfused {i}/{len(jobs)} {pair.pair_id}", end="\n" if i == len(jobs) else "", file=sys.stderr,
                  flush=True)
        elif i % max(1, len(jobs) // 10) == 0 or i == len(jobs):
            print(f"  fused {i}/{len(jobs)}", file=sys.stderr, flush=True)
    steps = f", {args.steps or fuser.module.cfg.train.sample_steps} steps" if fuser.variant == "flow" else ""
    where = jobs[0][2] if len(jobs) == 1 else Path(args.out)
    print(f"fused {len(jobs)} pair(s) with {fuser.variant}{steps} on {fuser.device.type} in "
          f"{time.perf_counter() - start:.1f} s -> {where}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse", help="fuse image pairs with a trained checkpoint (any size, tiled when large)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  mmaif fuse --checkpoint runs/regression/checkpoints/last.ckpt --a vis.png --b ir.png "
               "--prompt 'Remove the haze.' --out fused.png\n"
               "  mmaif fuse --checkpoint runs/flow/checkpoints/last.ckpt --steps 4 --prepared prepared/test "
               "--out fused/flow\n"
               "  mmaif fuse --checkpoint runs/regression/checkpoints/last.ckpt --dataset ../MEFB --out fused/mefb")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `mmaif train`")
    p.add_argument("--a", help="source a (VIF: visible, MEF: under-exposed, MFF: near focus): image or folder")
    p.add_argument("--b", help="source b (VIF: infrared, MEF: over-exposed, MFF: far focus): image or folder")
    p.add_argument("--prepared", help="a prepared split folder (its prompts are used unless --prompt is given)")
    p.add_argument("--dataset", help="a benchmark in its native layout (MSRS, TNO, MEFB, MFIFB, ...: docs/data.md), "
                   "or a folder of several: every pair, written as <out>/<pair>.png (<out>/<folder>/<pair>.png for "
                   "several), as `mmaif evaluate --dataset` reads them")
    p.add_argument("--task", choices=TASKS, help="--dataset: its task, where the folder names do not tell")
    p.add_argument("--split", help="--dataset: the pairs listed in <root>/<split>.txt, or under a <split> folder")
    p.add_argument("--out", required=True, help="output .png (one pair) or folder")
    p.add_argument("--skip-existing", action="store_true", help="leave the pairs whose output exists as they are "
                   "(resume an interrupted run; they are not checked against this run's settings)")
    p.add_argument("--prompt", help=f"text prompt (default: the split's, else '{DEFAULT_PROMPT}')")
    p.add_argument("--steps", type=int, help="flow sampling steps (default: the checkpoint's train.sample_steps)")
    p.add_argument("--time-shift", type=float, metavar="S", help="flow: SD3 shift of the Euler schedule, > 1 "
                   "spends more steps near the noise end (default: the checkpoint's train.time_shift)")
    p.add_argument("--patch-shifts", type=int, default=1, choices=(1, 2, 4), metavar="N",
                   help="test-time ensemble of the DiT over N copies shifted by half a patch (1, 2 or 4; "
                        "default 1): removes most of the patch-border block pattern, N x the DiT time")
    p.add_argument("--tile", type=int, default=512,
                   help="largest side fused in one pass; larger images are tiled (0: never tile)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (feathered)")
    p.add_argument("--color", choices=COLOR_POLICIES, default="model", help="model: the model's RGB, gray where both "
                   "sources are gray; source-a: the fused luminance with the chroma of source a (default: model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the flow sampler")
    p.add_argument("--codec", help="codec folder (default: the one named in the checkpoint)")
    speed = p.add_argument_group("speed", "fast paths for a GPU; none pays on a CPU (measured in docs/speed.md)")
    speed.add_argument("--fast", action="store_true", help="on a GPU, the fast paths docs/speed.md times: "
                       f"{' '.join('--' + name.replace('_', '-') for name in FAST_PATHS)} (the same output up to "
                       "float rounding, and 0.01-0.03 dB of the codec's PSNR); on a CPU, a note and nothing else")
    speed.add_argument("--compile", metavar="MODE", help="torch.compile the denoiser and a learned codec "
                       "(default | reduce-overhead | max-autotune); pays on GPU for many pairs of one size")
    speed.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs of the DiT and the codec (GPU; "
                       "one capture per image size, with or without --compile): removes the launch overhead of batch 1")
    speed.add_argument("--bf16-weights", action="store_true", help="keep the DiT's matmul weights in bf16 (GPU), "
                       "and a learned codec's with --codec-bf16: the same output bits under the GPU's bf16 autocast, "
                       "without casting them on every call")
    speed.add_argument("--bf16-dit", action="store_true", help="store and run the whole DiT in bf16, its residual "
                       "stream included, without autocast: fewer kernels and half the elementwise traffic, at a small "
                       "cost in fidelity to float32 (docs/speed.md)")
    speed.add_argument("--fused-blocks", action="store_true", help="rewrite the DiT's MoE, attention and NAFBlocks "
                       "into fewer, larger kernels from the same weights (about half a B forward's kernels, fewer still "
                       "with --bf16-weights: docs/speed.md; the same output up to float rounding)")
    speed.add_argument("--sparse-moe", action="store_true", help="--fused-blocks with each token's MoE computed by "
                       "its top-k experts and the shared one only, in grouped GEMMs, instead of all experts")
    speed.add_argument("--channels-last", action="store_true", help="channels-last memory for a learned codec (GPU)")
    speed.add_argument("--codec-bf16", action="store_true", help="run the codec under bf16 autocast (GPU): on the GPU "
                       "preset's codec, 0.01-0.03 dB of reconstruction PSNR (docs/speed.md)")
    p.set_defaults(func=cmd_fuse)
