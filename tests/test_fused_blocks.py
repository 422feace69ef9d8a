"""The sampling rewrite (mmaif_pl/fused_blocks.py): the same function as the DiT it rewrites, for every
ablation switch that changes a rewritten part, in float32 and under bf16 autocast; fewer kernels; refused on
a DiT being trained; `mmaif fuse --fused-blocks` on a real pair."""
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize, shared_dataset, small_fusion_module, text_encoder
from torch._subclasses.fake_tensor import FakeTensorMode

from mmaif_pl.config import load
from mmaif_pl.errors import UserError
from mmaif_pl.fuse import Fuser, run_in_bf16, store_matmul_weights
from mmaif_pl.fused_blocks import (FusedAttention, FusedBlock, FusedMoE, PairRoPE, SparseMoE, TokenNAFBlock,
                                   fuse_blocks)
from mmaif_pl.models.dit import DiTSpec, FusionDiT
from mmaif_pl.models.layers import DenseFFN, MoESwiGLU

REPO = Path(__file__).resolve().parent.parent
SMALL = ["model.hidden=64", "model.depth=3", "model.heads=2", "model.pe_grid=8"]
SWITCHES = {  # each changes what a rewritten part computes
    "paper": [],
    "text_tokens": ["model.text_tokens=true"],
    "no_shared_expert": ["model.shared_expert=false", "model.top_k=1"],
    "no_rope_no_value_residual": ["model.rope=false", "model.value_residual=false"],
    "no_moe_no_naf_no_pe": ["model.moe=false", "model.nafblock=false", "model.block_pe=false"],
}


def frozen_dit(overrides: list[str], inputs: int) -> FusionDiT:
    spec = DiTSpec.from_config(load([], SMALL + overrides).model)
    dit = FusionDiT(16, inputs, 384, spec, timestep=inputs == 3).eval().requires_grad_(False)
    randomize(dit)
    return dit


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense_moe", "sparse_moe"])
@pytest.mark.parametrize("inputs", [2, 3], ids=["regression", "flow"])
@pytest.mark.parametrize("switches", list(SWITCHES), ids=list(SWITCHES))
def test_rewrite_computes_the_same_function(switches, inputs, sparse):
    torch.manual_seed(0)
    dit = frozen_dit(SWITCHES[switches], inputs)
    fused = fuse_blocks(copy.deepcopy(dit), sparse_moe=sparse)
    spec = dit.spec
    args = (torch.randn(2, 16 * inputs, 13, 10), torch.randn(2, 384),  # an odd grid: padded, not square
            torch.rand(2) if inputs == 3 else None)
    if spec.text_tokens:
        args += (torch.randn(2, 5, 384), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool())
    with torch.no_grad():
        ref, out = dit(*args)[0], fused(*args)[0]
        out_again = fused(*args)[0]  # the cached PE / RoPE tables are the ones it made
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16, out_bf16 = dit(*args)[0], fused(*args)[0]
    assert relative_error(out, ref) < 1e-5
    torch.testing.assert_close(out_again, out, rtol=0, atol=0)
    # bf16 rounds differently in a different order of operations, but no worse than the original does
    assert relative_error(out_bf16, ref) < 2 * relative_error(ref_bf16, ref) + 1e-3
    blocks = list(fused.blocks)
    assert all(isinstance(b, FusedBlock) and isinstance(b.attn, FusedAttention) for b in blocks)
    assert all(isinstance(b.ffn, DenseFFN if not spec.moe else SparseMoE if sparse else FusedMoE) for b in blocks)
    assert all((b.naf is None) == (not spec.nafblock) and (b.naf is None or isinstance(b.naf, TokenNAFBlock))
               for b in blocks)
    assert isinstance(fused.rope, PairRoPE) if spec.rope else fused.rope is None


def test_rewrite_launches_fewer_kernels():
    """Counted as benchmarks/kernel_count.py counts them (aten operations that are not views), B preset."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from kernel_count import count, launches

    spec = DiTSpec.from_config(load([], ["model.preset=B"]).model)
    torch.manual_seed(0)
    dit = FusionDiT(16, 2, 384, spec, timestep=False).eval().requires_grad_(False)
    fused = fuse_blocks(copy.deepcopy(dit))
    kernels = {}
    for name, model, autocast in (("fp32", dit, False), ("bf16", dit, True), ("fused_fp32", fused, False)):
        kernels[name] = launches(count(model, 2, 8, 384, autocast).ops).total()
    whole = copy.deepcopy(fused)
    store_matmul_weights(fused)
    kernels["fused_bf16"] = launches(count(fused, 2, 8, 384, True).ops).total()
    assert kernels["fused_fp32"] < 0.6 * kernels["fp32"], kernels  # measured: 555 of 1052
    assert kernels["fused_bf16"] < 0.42 * kernels["bf16"], kernels  # with bf16 weights: 689 of 1736
    run_in_bf16(whole)  # no autocast casts left, bar the float32 RoPE and router
    kernels["fused_bf16_dit"] = launches(count(whole, 2, 8, 384, True).ops).total()
    assert kernels["fused_bf16_dit"] < 0.92 * kernels["fused_bf16"], kernels  # 605 of 689
    with FakeTensorMode(allow_non_fake_inputs=True):  # at a 64 x 64 latent the activations outweigh the weights
        moved = {name: count(model, 2, 64, 384, True).bytes.total()
                 for name, model in (("fused", fused), ("whole", whole))}
    assert moved["whole"] < 0.85 * moved["fused"], moved  # the residual stream in bf16: 12.0 of 14.9 GB at 128
    sparse = fuse_blocks(copy.deepcopy(dit), sparse_moe=True)
    store_matmul_weights(sparse)
    kernels["sparse_bf16"] = launches(count(sparse, 2, 8, 384, True).ops).total()
    # the grouped dispatch's sort, gathers and scatter: 9 kernels more per block than the dense rewrite
    assert kernels["fused_bf16"] < kernels["sparse_bf16"] < 0.47 * kernels["bf16"], kernels  # 797 of 1736


def test_sparse_moe_rewritten_in_place_keeps_its_device():
    """The rewrite of a MoE already on a device (accelerate after .cuda()) puts every tensor there: the expert
    ids the dispatch searches were left on the CPU (found on an H200; the meta device stands in for it)."""
    sparse = SparseMoE(MoESwiGLU(48, 100, experts=4, top_k=2).to("meta"))
    assert {t.device.type for t in [*sparse.parameters(), *sparse.buffers()]} == {"meta"}


@pytest.mark.parametrize("routing", ["random", "two_experts_empty"])
def test_sparse_moe_is_the_moe(routing):
    """SparseMoE against the MoESwiGLU it rewrites, on an expert width that needs padding (33 -> 40) and with
    experts that get no token (empty groups in the grouped GEMM); its FLOPs are those of the top-k experts and
    the shared one, padded."""
    torch.manual_seed(0)
    moe = MoESwiGLU(48, 100, experts=4, top_k=2).eval().requires_grad_(False)
    randomize(moe)
    x = torch.randn(2, 37, 48)
    if routing == "two_experts_empty":  # one large feature the router reads as "experts 0 and 1"
        x[..., 0] = 10.0
        moe.router.weight[:, 0] = torch.tensor([5.0, 4.0, -5.0, -5.0])
    sparse = SparseMoE(moe)
    assert sparse.w2.weight.shape == (5, 48, 40) and sparse.w13.weight.shape == (5, 80, 48)
    with torch.no_grad():
        ref, balance = moe(x)
        out, aux = sparse(x)
        if routing == "two_experts_empty":
            assert set(moe.route(x.reshape(-1, 48))[2].flatten().tolist()) == {0, 1}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16, out_bf16 = moe(x)[0], sparse(x)[0]
    assert relative_error(out, ref) < 1e-6 and aux is None and float(balance) > 0
    assert out_bf16.dtype == ref_bf16.dtype == torch.bfloat16
    assert relative_error(out_bf16, ref) < 2 * relative_error(ref_bf16, ref) + 1e-3

    sys.path.insert(0, str(REPO / "benchmarks"))
    from flops import flops_by_module

    with torch.no_grad():
        dense_flops = flops_by_module(lambda: moe(x))[1] - 2 * 74 * 48 * 4  # less the router
        sparse_flops = flops_by_module(lambda: sparse(x))[1] - 2 * 74 * 48 * 4
    assert sparse_flops == dense_flops * 3 / 5 * 40 / 33  # 3 of 5 experts per token, 40 hidden units for 33


def test_rewrite_refuses_a_dit_being_trained():
    dit = frozen_dit([], 2).requires_grad_(True)
    with pytest.raises(UserError, match=r"require grad \(e\.g\. embed\.weight\)"):
        fuse_blocks(dit)


def fusion_module(variant: str, overrides: tuple[str, ...] = ()):
    """A small FusionModule (linear codec, random weights in place of the zero-initialised ones)."""
    m = small_fusion_module([*SMALL, f"train.variant={variant}", *overrides], text_encoder())
    with torch.no_grad():
        m.ema.final.linear.weight.normal_(0, 0.1)  # a fused latent of image-like magnitude
    return m


@pytest.mark.parametrize("switch, moe", [("fused_blocks", FusedMoE), ("sparse_moe", SparseMoE)],
                         ids=["dense_moe", "sparse_moe"])
@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_fuser_with_fused_blocks_on_a_real_pair(variant, switch, moe):
    """A RoadScene visible / infrared pair fused with and without the rewrite (dense or sparse MoE): the same
    image; the trained DiT is left alone; bf16 weights stay bit-exact on top of the rewrite, and bf16 stays
    near float32."""
    from mmaif_pl.data.io import read_image

    root = shared_dataset("vif/RoadScene")
    a, b = (read_image(root / kind / "FLIR_00211.jpg") for kind in ("vi", "ir"))
    ref = Fuser(fusion_module(variant), device="cpu", steps=2, tile=0)(a, b, "Remove the noise.")
    m = fusion_module(variant)
    out = Fuser(m, device="cpu", steps=2, tile=0, **{switch: True})(a, b, "Remove the noise.")
    assert out.shape == a.shape and out.std() > 0.01
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert isinstance(m.ema.blocks[0].ffn, moe) and not isinstance(m.dit.blocks[0].ffn, moe)
    bf16, bf16_weights = (Fuser(fusion_module(variant), device="cpu", steps=2, tile=0, bf16=True,
                                bf16_weights=weights, **{switch: True})(a, b, "Remove the noise.")
                          for weights in (False, True))
    np.testing.assert_array_equal(bf16_weights, bf16)
    assert np.abs(bf16 - ref).max() < 0.02


def test_sparse_moe_on_a_gpu_needs_bf16():
    """CUDA's grouped GEMM is bf16 only: a float32 GPU Fuser is refused before the model is touched."""
    m = fusion_module("regression")
    with pytest.raises(UserError, match="--sparse-moe on a GPU needs the DiT under bf16 autocast"):
        Fuser(m, device="cuda", bf16=False, sparse_moe=True)
    assert m.device.type == "cpu" and isinstance(m.ema.blocks[0].ffn, MoESwiGLU)


def test_fuse_command_with_fused_blocks(tmp_path):
    """`mmaif fuse --fused-blocks` (and `--sparse-moe`) on a checkpoint and a real pair writes the image the plain
    command writes; with `--bf16-dit` too, up to bf16's rounding."""
    from mmaif_pl.cli import main
    from mmaif_pl.data.io import read_image

    root = shared_dataset("vif/RoadScene")
    m = fusion_module("regression")
    m.codec.save(tmp_path / "codec")
    torch.save({"state_dict": m.state_dict(), "mmaif": m.checkpoint_meta()}, tmp_path / "m.ckpt")
    common = ["fuse", "--checkpoint", str(tmp_path / "m.ckpt"), "--codec", str(tmp_path / "codec"),
              "--a", str(root / "vi" / "FLIR_00977.jpg"), "--b", str(root / "ir" / "FLIR_00977.jpg"), "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(common + ["--out", str(tmp_path / "fused.png"), "--fused-blocks"]) == 0
    assert main(common + ["--out", str(tmp_path / "sparse.png"), "--sparse-moe"]) == 0
    assert main(common + ["--out", str(tmp_path / "bf16.png"), "--fused-blocks", "--bf16-dit"]) == 0
    plain = read_image(tmp_path / "plain.png")
    for name in ("fused", "sparse"):  # at most one 8-bit level, where rounding tips over
        assert np.abs(read_image(tmp_path / f"{name}.png") - plain).max() <= 1 / 255 + 1e-6, name
    bf16 = np.abs(read_image(tmp_path / "bf16.png") - plain)
    assert 0 < bf16.mean() < 1 / 255 and bf16.max() <= 12 / 255  # measured: 0.36 and 6 levels


@pytest.mark.parametrize("sparse, bf16, bf16_dit", [(False, False, False), (True, True, False), (True, False, False),
                                                    (False, False, True)],
                         ids=["dense_moe", "sparse_moe_bf16", "sparse_moe_float32", "dense_moe_bf16_dit"])
def test_rewrite_compiles_regionally(sparse, bf16, bf16_dit):
    """`accelerate(fused_blocks=True, compile)`: dynamo traces the rewritten blocks and gives the rewritten
    model's output (the caches are bypassed while compiling). The blocks still share their graphs: three for
    five blocks (block 0 has no value residual, block 1 gets block 0's strided values) and one for the final
    layer; a per-block constant (a float eta) would make one graph per block and, past dynamo's recompile
    limit, fall back to eager. A counting backend stands in for inductor's code generation. The sparse MoE's
    grouped GEMM is traced in bf16, as CUDA runs it; in float32 (the CPU's) it has no fake-tensor rule, so
    the graph breaks around it, and the output is still the eager one. A DiT stored in bf16 (`bf16_dit`) compiles
    the same way."""
    import torch._dynamo

    from mmaif_pl.fuse import accelerate

    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = fusion_module("regression", ["model.depth=5"])
    a, b = torch.rand(2, 1, 3, 64, 48).unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        switches = dict(fused_blocks=True, sparse_moe=sparse, bf16_dit=bf16_dit)
        ref = accelerate(copy.deepcopy(m), **switches).fuse(a, b, ["Remove the haze."])
        accelerate(m, "default", backend=counting_backend, **switches)
        assert all(block._compiled_call_impl is not None for block in m.ema.blocks)
        out = m.fuse(a, b, ["Remove the haze."])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    breaks = sparse and not bf16
    assert len(graphs) > 4 if breaks else len(graphs) == 4, [len(g.graph.nodes) for g in graphs]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("weights", ["bf16_weights", "bf16_dit"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense_moe", "sparse_moe"])
@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_rewrite_under_cuda_graphs_and_bf16_weights(variant, sparse, weights):
    """The GPU fast paths together (the latency benchmark's), with the matmul weights or the whole DiT in bf16, on
    a model already on the GPU: replays give the same image, and it is as close to float32's as eager bf16's is
    (a fixed tolerance against eager bf16 fails on a few pixels, as two bf16 roundings of one image differ by up
    to 0.02 there). With the sparse MoE, CUDA's bf16 grouped GEMM runs and is captured: its group offsets stay
    on the device."""
    from mmaif_pl.fuse import accelerate

    m = fusion_module(variant).cuda()
    a, b = torch.rand(2, 1, 3, 96, 64, device="cuda").unbind(0)
    float32 = m.fuse(a, b, ["Remove the haze."], steps=3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = m.fuse(a, b, ["Remove the haze."], steps=3)
        accelerate(m, cuda_graphs=True, fused_blocks=True, sparse_moe=sparse, **{weights: True})
        out = [m.fuse(a, b, ["Remove the haze."], steps=3) for _ in range(2)]
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)
    eager_error, fast_error = (eager - float32).abs(), (out[0] - float32).abs()
    errors = f"mean / max error vs float32: eager bf16 {eager_error.mean():.2e} / {eager_error.max():.3f}, " \
             f"fast {fast_error.mean():.2e} / {fast_error.max():.3f}"
    assert fast_error.mean() <= 3 * eager_error.mean() + 1e-4, errors  # bf16_dit on the CPU: 1.7x
    assert fast_error.max() <= 0.05, errors  # a wrong block or expert moves whole regions by 0.1 and more
