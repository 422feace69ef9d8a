"""FLOPs of one fusion and of one training image, by part, and what fraction of a device's peak a run reached.

    python benchmarks/flops.py                                     # B preset, GPU codec preset, 1024 px
    python benchmarks/flops.py --size 256 512 1024 2048 --steps 1 4 8
    python benchmarks/flops.py --latency benchmarks/results/h200-2026-11-26/run2_latency_graphs.json
    python benchmarks/flops.py --train --throughput benchmarks/results/h200-2026-11-26/run1_throughput_batch32.json
    python benchmarks/flops.py -c experiments/base.yaml -c experiments/scale/cpu.yaml --size 512 --peak-tflops 0.15

Latency measures time; this says how much work that time bought. The model is built from the config (random
weights, as latency.py builds it), moved to the meta device and run there: torch's FlopCounterMode counts the
matrix products, convolutions and attention (on meta tensors attention runs as two batched matmuls, so it is
counted; elementwise work is not, as in every MFU figure). Nothing is computed, so a 2048 px B fusion is
counted in seconds on any machine.

Printed: GFLOP of encoding both sources, of one DiT forward split by part (attention projections, attention
scores and values, MoE experts, NAFBlock, adaLN, the rest), of decoding; then per variant and step count the
total and the time it would take at `--peak-tflops` (dense bf16 tensor-core peak: 989 for an H100 SXM or an
H200). `--target-ms` adds the fraction of that peak each target requires. `--latency JSON` (latency.py's output)
adds, for each untiled row, the TFLOP/s each part reached and its fraction of the peak. `--train` counts one
training image (the codec encodes a, b and the target; the DiT runs forward and backward) and
`--throughput JSON` (train_throughput.py's output) turns measured images/s into TFLOP/s.

The MoE line also gives the FLOPs of routed experts whose combine weight is zero: dispatch is dense (every
routed expert runs on every token), so (experts - top_k) / experts of the routed work multiplies zeros.
`--sparse-moe` counts the fusions of `mmaif fuse --sparse-moe` instead, which compute each token's top-k
experts and the shared one only (grouped GEMMs); the training image is counted as trained, dense.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from latency import PROMPT, build, codec_label  # noqa: E402

from mmaif_pl import config  # noqa: E402
from mmaif_pl.fused_blocks import GroupedLinear, fuse_blocks  # noqa: E402
from mmaif_pl.models.layers import MoESwiGLU  # noqa: E402

G = 1e9
DIT_PARTS = ("attention projections", "attention scores and values", "MoE experts", "MoE shared expert",
             "NAFBlock", "adaLN", "embeddings, router, final layer")


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each of a convolution's two gradients costs one forward. torch's own formula ignores `groups` and counts
    a depthwise 3x3 conv's weight gradient (the NAFBlock's) as a dense one: 4x the B preset's conv backward."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def grouped_mm_flop(a_shape, b_shape, *_args, out_shape=None, **kwargs) -> int:
    """torch._grouped_mm (M x K rows, G x K x N weights): each row meets one group's K x N matrix, whatever the
    split. FlopCounterMode has no formula for it and would count 0."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


def flops_by_module(fn) -> tuple[object, int, dict[str, int]]:
    """fn's result, its FLOPs, and its FLOPs per enclosing module."""
    formulas = {torch.ops.aten.convolution_backward: conv_backward_flop, torch.ops.aten._grouped_mm: grouped_mm_flop}
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        out = fn()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return out, counter.get_total_flops(), per_module


def split_dit(total: int, per_module: dict[str, int]) -> dict[str, int]:
    """One DiT forward's FLOPs by part, from the module tree FlopCounterMode reports (each op is counted in
    every module that encloses it, so the parts are taken at fixed depths and the rest is what is left)."""
    parts = defaultdict(int)
    for name, n in per_module.items():
        m = re.search(r"\.blocks\.\d+\.(attn|ffn|naf|mod)(?:\.(\w+))?(?:\.(\w+))?$", name)
        if not m:
            continue
        child, sub, leaf = m.groups()
        if child == "attn" and sub is None:
            parts["attention"] += n
        elif child == "attn" and sub in ("qkv", "proj") and leaf is None:
            parts["attention projections"] += n
        elif child == "ffn" and sub == "experts" and leaf is not None and leaf.isdigit():
            parts["MoE experts"] += n
        elif child == "ffn" and sub == "shared" and leaf is None:
            parts["MoE shared expert"] += n
        elif child == "ffn" and sub == "mlp" and leaf is None:  # model.moe=false: one dense SwiGLU
            parts["MoE experts"] += n
        elif child == "ffn" and sub in ("w13", "w2") and leaf is None:  # rewritten (--sparse-moe): shared included
            parts["MoE experts"] += n
        elif child == "naf" and sub is None:
            parts["NAFBlock"] += n
        elif child == "mod" and sub is None:
            parts["adaLN"] += n
    parts["attention scores and values"] = parts.pop("attention", 0) - parts["attention projections"]
    parts["embeddings, router, final layer"] = total - sum(parts[p] for p in DIT_PARTS[:-1])
    return {p: parts[p] for p in DIT_PARTS}


def zero_weight_fraction(dit: torch.nn.Module) -> float:
    """Share of the routed experts' FLOPs spent on experts whose combine weight is zero (dense dispatch)."""
    moe = [m for m in dit.modules() if isinstance(m, MoESwiGLU)]
    return (moe[0].experts_n - moe[0].top_k) / moe[0].experts_n if moe else 0.0


def on_meta(cfg, variant: str):
    """The module latency.py times (random weights) and a prompt's embedding, both on the meta device."""
    module, _ = build(cfg.copy(), variant, None)
    cond = tuple(c.to("meta") for c in module.embed_text([PROMPT]))
    module.to("meta")
    module.codec.to("meta")  # the frozen codec is kept outside the module tree (not in checkpoints)
    return module, cond


def count_fusion(cfg, variant: str, size: int, sparse_moe: bool = False) -> dict:
    """GFLOP of encode (both sources), one DiT forward (by part) and decode at size x size, on meta tensors;
    `sparse_moe`: the DiT as `mmaif fuse --sparse-moe` rewrites it."""
    module, cond = on_meta(cfg, variant)
    pair = torch.zeros(2, 3, size, size, device="meta")
    dit = module.ema
    if sparse_moe:
        fuse_blocks(dit, sparse_moe=True)
        for m in dit.modules():  # the grouped GEMM's meta function, like its CUDA kernel, takes bf16 only
            if isinstance(m, GroupedLinear):
                m.to(torch.bfloat16)
    with torch.no_grad():
        z, enc, _ = flops_by_module(lambda: module.codec.encode(pair))
        x = torch.zeros(1, dit.latent_channels * dit.n_inputs, *z.shape[-2:], device="meta")
        t = torch.zeros(1, device="meta") if dit.t_embed is not None else None
        _, fwd, per_module = flops_by_module(lambda: module.denoiser(x, *cond, t=t, model=dit))
        _, dec, _ = flops_by_module(lambda: module.codec.decode(z[:1]))
    return {"variant": variant, "size": size, "encode": enc / G, "dit": fwd / G, "decode": dec / G,
            "dit_parts": {k: v / G for k, v in split_dit(fwd, per_module).items()},
            "zero_weight_fraction": zero_weight_fraction(dit), "latent": list(z.shape[-2:])}


def count_training_image(cfg, crop: int) -> dict:
    """GFLOP of one training image: the frozen codec encodes its images, the DiT runs forward and backward."""
    module, cond = on_meta(cfg, cfg.train.variant)
    images = 3  # compute_loss encodes a, b and the target (the aux loss's decode, off by default, is not counted)
    with torch.no_grad():
        z, enc, _ = flops_by_module(lambda: module.codec.encode(torch.zeros(images, 3, crop, crop, device="meta")))
    dit = module.dit.train()
    x = torch.zeros(1, dit.latent_channels * dit.n_inputs, *z.shape[-2:], device="meta")
    t = torch.zeros(1, device="meta") if dit.t_embed is not None else None

    def step():
        out, balance = module.denoiser(x, *cond, t=t, model=dit)
        (out.float().square().mean() + balance).backward()

    _, fwd_bwd, _ = flops_by_module(step)
    return {"crop": crop, "images_encoded": images, "encode": enc / G, "dit_forward_backward": fwd_bwd / G,
            "total": (enc + fwd_bwd) / G}


def counted_model(cfg, sparse_moe: bool = False) -> dict:
    """The model counted, in the keys latency.py and train_throughput.py write into their JSON."""
    return {"preset": cfg.model.preset, "codec": codec_label(cfg.codec),
            "codec_layers_per_block": config.to_container(cfg)["codec"]["layers_per_block"], "sparse_moe": sparse_moe}


def measured_model_mismatch(data: dict, counted: dict) -> str | None:
    """Why a latency / throughput JSON is not a run of the model counted here (preset, codec, codec layout, MoE
    dispatch), or None. JSONs written before a key was recorded are taken at their word for it."""
    for key, value in counted.items():
        if key in data and data[key] != value:
            return f"measured with {key}={data[key]}, counting {value}: pass the run's settings (overrides, flags)"
    return None


def ms_at(gflop: float, tflops: float) -> float:
    return gflop / tflops  # GFLOP / (TFLOP/s) = ms


def fusion_table(counts: list[dict], steps: list[int], peak: float, targets_ms: list[float]):
    rows = []
    for c in counts:
        for n in ([1] if c["variant"] == "regression" else steps):
            total = c["encode"] + n * c["dit"] + c["decode"]
            row = {"variant": c["variant"], "size": c["size"], "steps": n, "gflop": round(total, 1),
                   "ms_at_peak": round(ms_at(total, peak), 2)}
            row["peak_fraction_for_ms"] = {ms: round(total / ms / peak, 3) for ms in targets_ms}
            rows.append(row)
    return rows


def compare_latency(data: dict, counts: dict[tuple[str, int], dict], peak: float) -> list[dict]:
    """TFLOP/s and fraction of peak that each part of a measured latency row (latency.py's JSON) reached."""
    shifts = data.get("patch_shifts", 1) or 1
    out = []
    for r in data["results"]:
        c = counts.get((r["variant"], r["size"]))
        if c is None or r.get("tiles", 1) != 1:
            continue
        dit = r["steps"] * shifts * c["dit"]
        parts = {"encode": (c["encode"], r["encode_ms"]), "dit": (dit, r["dit_ms"]),
                 "decode": (c["decode"], r["decode_ms"]), "total": (c["encode"] + dit + c["decode"], r["ms"])}
        row = {"variant": r["variant"], "size": r["size"], "steps": r["steps"]}
        for name, (gflop, ms) in parts.items():
            row[f"{name}_tflops"] = round(gflop / ms, 1) if ms else None
            row[f"{name}_peak_fraction"] = round(gflop / ms / peak, 3) if ms else None
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", help="YAML configs (default: base + scale/gpu)")
    p.add_argument("--preset", help="model preset (tiny | S | B | L); default: the config's")
    p.add_argument("--size", type=int, nargs="+", default=[1024], help="square pair sides (pixels), untiled")
    p.add_argument("--variant", nargs="+", default=["regression", "flow"], choices=["regression", "flow"])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8], help="flow Euler steps")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense peak in TFLOP/s (bf16 tensor cores: 989 H100 SXM / H200, 756 H100 PCIe)")
    p.add_argument("--target-ms", type=float, nargs="*", default=[],
                   help="latency targets: the fraction of peak each requires (a column per target)")
    p.add_argument("--latency", type=Path, help="a latency.py JSON: TFLOP/s each part reached")
    p.add_argument("--sparse-moe", action="store_true", help="count the fusions of mmaif fuse --sparse-moe")
    p.add_argument("--train", action="store_true", help="also count one training image")
    p.add_argument("--crop", type=int, help="training crop (default: data.crop)")
    p.add_argument("--throughput", type=Path, help="a train_throughput.py JSON: TFLOP/s of its images/s")
    p.add_argument("--target-images-per-s", type=float, help="a training target: the fraction of peak it requires")
    p.add_argument("--json", type=Path, help="write everything here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_intermixed_args(argv)

    files = args.config or [str(REPO / "experiments/base.yaml"), str(REPO / "experiments/scale/gpu.yaml")]
    cfg = config.load(files, list(args.overrides) + ([f"model.preset={args.preset}"] if args.preset else []))
    model = counted_model(cfg, args.sparse_moe)
    measured = {}  # path -> the JSON of a measured run, read once
    for path in (args.latency, args.throughput):
        if path is None:
            continue
        if not path.is_file():
            p.error(f"{path}: no such file")
        measured[path] = json.loads(path.read_text())
        mismatch = measured_model_mismatch(measured[path], model)
        if mismatch:
            p.error(f"{path}: {mismatch}")
        if "codec_layers_per_block" not in measured[path]:
            print(f"note: {path} does not record its codec layout; it is taken to be the counted one")
    counts = {(v, s): count_fusion(cfg, v, s, args.sparse_moe) for v in args.variant for s in args.size}
    peak = args.peak_tflops
    print(f"preset {model['preset']}, codec {model['codec']}{', sparse MoE' if args.sparse_moe else ''}; "
          f"GFLOP (matmuls, convolutions, attention); times at a peak of {peak:g} TFLOP/s")
    for c in counts.values():
        h, w = c["latent"]
        print(f"\n{c['variant']}, {c['size']} px pair ({h} x {w} latent): encode both {c['encode']:,.0f}, "
              f"DiT forward {c['dit']:,.0f}, decode {c['decode']:,.0f}")
        for part, g in c["dit_parts"].items():
            extra = ""
            if part == "MoE experts" and c["zero_weight_fraction"]:
                extra = f"  ({c['zero_weight_fraction'] * g:,.0f} on experts whose combine weight is zero)"
            elif part == "MoE experts" and args.sparse_moe:
                extra = "  (each token's top-k experts and the shared one)"
            print(f"  DiT {part:<32} {g:>9,.0f}  {g / c['dit']:6.1%}{extra}")
    rows = fusion_table(list(counts.values()), args.steps, peak, args.target_ms)
    print(f"\n{'variant':<11}{'size':>6}{'steps':>6}{'GFLOP':>10}{'ms at peak':>12}"
          + "".join(f"{'peak for ' + format(ms, 'g') + ' ms':>18}" for ms in args.target_ms))
    for r in rows:
        print(f"{r['variant']:<11}{r['size']:>6}{r['steps']:>6}{r['gflop']:>10,.0f}{r['ms_at_peak']:>12.2f}"
              + "".join(f"{r['peak_fraction_for_ms'][ms]:>18.1%}" for ms in args.target_ms))
    result = {"preset": model["preset"], "codec": model["codec"], "peak_tflops": peak, "counts": list(counts.values()),
              "fusion": rows}

    if args.latency:
        rated = compare_latency(measured[args.latency], counts, peak)
        print(f"\nmeasured ({args.latency}): TFLOP/s reached (fraction of peak)")
        for r in rated:
            parts = "  ".join(f"{k} {r[k + '_tflops']} ({r[k + '_peak_fraction']:.1%})"
                              for k in ("encode", "dit", "decode", "total") if r[k + "_tflops"] is not None)
            print(f"  {r['variant']:<11}{r['size']:>6}{r['steps']:>4}  {parts}")
        result["latency"] = rated

    if args.train or args.throughput:
        crop = args.crop or int(cfg.data.crop)
        t = count_training_image(cfg, crop)
        print(f"\ntraining image ({cfg.train.variant}, {crop} px crop): encode {t['images_encoded']} images "
              f"{t['encode']:,.0f}, DiT forward + backward {t['dit_forward_backward']:,.0f}, total {t['total']:,.0f} "
              f"GFLOP -> at most {peak * 1e3 / t['total']:,.0f} images/s at peak")
        if args.target_images_per_s:
            t["peak_fraction_for_target"] = round(args.target_images_per_s * t["total"] / 1e3 / peak, 3)
            print(f"  {args.target_images_per_s:g} images/s needs {t['peak_fraction_for_target']:.1%} of peak")
        if args.throughput:
            run = measured[args.throughput]
            rates = dict(run["images_per_s"])
            per = {"train": t["total"], "trainer": t["total"], "dit": t["dit_forward_backward"], "codec": t["encode"]}
            for name, r in run.get("codec_fast_paths_images_per_s", {}).items():  # the encodes side by side
                rates[f"codec {name}"], per[f"codec {name}"] = r, t["encode"]
            t["measured"] = {k: {"images_per_s": rates[k], "tflops": round(rates[k] * g / 1e3, 1),
                                 "peak_fraction": round(rates[k] * g / 1e3 / peak, 3)}
                             for k, g in per.items() if k in rates}
            for k, m in t["measured"].items():
                print(f"  measured {k:<26} {m['images_per_s']:>8.1f} images/s = {m['tflops']:>6.1f} TFLOP/s "
                      f"({m['peak_fraction']:.1%} of peak)")
        result["training"] = t

    if args.json:
        from mmaif_pl.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
