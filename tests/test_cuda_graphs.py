"""CUDA graphs of the eager DiT and codec (mmaif_pl/cuda_graphs.py, `mmaif fuse --cuda-graphs`).

Without a GPU: refused with a clear error. With one: the same fused images as eager, in float32 and under
bf16 autocast, one graph per image size, results that later replays do not overwrite, and the patch-shift
ensemble. The GPU tests read the text encoder from MMAIF_TEST_TEXT_ENCODER when set (the GPU benchmark
machine has a same-architecture stand-in for the packaged MiniLM).
"""
from types import SimpleNamespace

import pytest
import torch
from conftest import small_fusion_module, text_encoder

from mmaif_pl.cuda_graphs import CUDAGraphed
from mmaif_pl.errors import UserError
from mmaif_pl.fuse import Fuser, accelerate

SMALL = ["model.hidden=64", "model.depth=2", "model.heads=2", "model.pe_grid=8"]
PROMPT = ["Remove the haze."]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def text():
    return text_encoder()


def small_module(variant: str, text):
    """A learned (AutoencoderTiny) codec and a small DiT with random weights in place of the zero-initialised."""
    return small_fusion_module(SMALL + [f"train.variant={variant}"], text, codec="tiny")


def test_cuda_graphs_are_refused_without_a_gpu_or_twice(text):
    m = small_module("regression", text)
    with pytest.raises(UserError, match="CUDA device"):
        Fuser(m, device="cpu", cuda_graphs=True)
    with pytest.raises(UserError, match="reduce-overhead already uses CUDA graphs"):
        accelerate(m, "reduce-overhead", cuda_graphs=True)


def test_graphed_callable_refuses_cpu_tensors_and_autograd():
    doubled = CUDAGraphed(lambda x: 2 * x)
    with pytest.raises(RuntimeError, match="no_grad"):
        doubled(torch.ones(2))
    with torch.no_grad(), pytest.raises(RuntimeError, match="CUDA tensors"):
        doubled(torch.ones(2))
    assert not doubled.graphs


@gpu
@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_cuda_graphs_fuse_like_eager(variant, text):
    m = small_module(variant, text).cuda()
    pairs = {s: torch.rand(2, 1, 3, s, s, device="cuda").unbind(0) for s in (64, 96)}

    def fuse_all(bf16=False, shifts=1):
        m.patch_shifts = shifts
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                return {s: m.fuse(a, b, PROMPT, steps=3) for s, (a, b) in pairs.items()}
        finally:
            m.patch_shifts = 1

    ref, ref_bf16, ref_shifted = fuse_all(), fuse_all(bf16=True), fuse_all(shifts=2)
    accelerate(m, cuda_graphs=True)
    out = fuse_all()
    first = out[64].clone()
    for s in pairs:
        torch.testing.assert_close(out[s], ref[s], rtol=1e-4, atol=1e-5)
    assert len(m.codec.encode.graphs) == len(m.codec.decode.graphs) == len(m.ema.forward.graphs) == 2  # per size
    for s, o in fuse_all(bf16=True).items():
        torch.testing.assert_close(o, ref_bf16[s], rtol=1e-3, atol=2e-3)
    for s, o in fuse_all(shifts=2).items():  # shifted copies: views of graph outputs, averaged
        torch.testing.assert_close(o, ref_shifted[s], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[64], first)  # later replays did not overwrite an earlier result


def test_graphed_callable_keeps_the_most_recent_graphs(monkeypatch):
    """One graph per signature, at most `max_graphs`: a new one drops the least recently replayed (the capture
    itself is replaced by a stand-in here; the GPU tests capture real graphs)."""
    captured = []

    def fake_capture(self, args):
        captured.append(args)
        return [], args, SimpleNamespace(replay=lambda: None)

    monkeypatch.setattr(CUDAGraphed, "_capture", fake_capture)
    graphed = CUDAGraphed(lambda n: n, max_graphs=2)
    with torch.no_grad():
        assert [graphed(n) for n in (1, 2, 1, 3, 1, 2)] == [(n,) for n in (1, 2, 1, 3, 1, 2)]
    assert captured == [(1,), (2,), (3,), (2,)]  # 3 dropped 2 (1 was replayed after it), 2 came back
    assert [key[0] for key in graphed.graphs] == [1, 2]
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphed(lambda: None, max_graphs=0)
