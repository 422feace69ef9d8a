"""Inference at any size and the fast paths: tiled vs untiled output, one-call encoding of both sources,
compile / channels-last switches, memory of a large tiled fusion."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_basis, randomize, small_fusion_module, text_encoder, text_encoder_overrides

from mmaif_pl.config import load
from mmaif_pl.errors import UserError
from mmaif_pl.fuse import Fuser, _starts, accelerate, fuse_tiled
from mmaif_pl.lit.fusion import build_module
from mmaif_pl.models.codec import LatentCodec

REPO = Path(__file__).resolve().parent.parent
SMALL = ["model.hidden=64", "model.depth=2", "model.heads=2", "model.pe_grid=8"]


def photo_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real photograph (a) and a blurred gray 'thermal' partner (b), HxWx3 float32."""
    import cv2
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32)[:size, :size] / 255
    gray = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (0, 0), 2)
    return np.clip(img * 0.6, 0, 1), np.repeat(gray[..., None], 3, 2)


@pytest.fixture(scope="module")
def text():
    return text_encoder()


@pytest.fixture(scope="module")
def module(text):
    """A small regression model whose output depends on the content (random weights in place of the
    zero-initialised ones; the output layer scaled so the fused latent has image-like magnitude)."""
    torch.manual_seed(0)
    a, b = photo_pair(512)
    imgs = [torch.from_numpy(x.transpose(2, 0, 1).copy())[None] for x in (a, b)]
    codec = LatentCodec("linear", 4, 16)
    codec.fit_linear(imgs)
    codec.measure_stats(imgs)
    m = build_module(load([], SMALL), codec, text).eval()
    randomize(m.ema)
    with torch.no_grad():
        m.ema.final.linear.weight.normal_(0, 0.1)
    return m


def test_encode_pair_is_two_encodes(module):
    a, b = torch.rand(2, 1, 3, 64, 48).unbind(0)
    za, zb = module.encode_pair(a, b)
    torch.testing.assert_close(za, module.encode(a))
    torch.testing.assert_close(zb, module.encode(b))


def test_encode_pair_learned_codec_batch_invariant():
    """The one-call path is exact for a conv autoencoder too (GroupNorm is per sample)."""
    torch.manual_seed(0)
    codec = LatentCodec("tiny", 4, 4, block_channels=[16, 16, 16], residual=False).eval()
    a, b = torch.rand(2, 1, 3, 32, 32).unbind(0)
    with torch.no_grad():
        both = codec.encode(torch.cat([a, b]))
        torch.testing.assert_close(both[:1], codec.encode(a), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[1:], codec.encode(b), rtol=1e-4, atol=1e-5)


def test_tile_zero_means_one_pass():
    calls = []

    def fn(x, y):
        calls.append(x.shape)
        return (x + y) / 2

    a, b = torch.rand(2, 300, 200, 3).unbind(0)
    torch.testing.assert_close(fuse_tiled(fn, a, b, 0, 64), (a + b) / 2)
    assert calls == [(300, 200, 3)]


def block_mean(img: np.ndarray, f: int = 4) -> np.ndarray:
    """Mean over aligned f x f blocks: the codec's own f-pixel patch structure averages out."""
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, -1).mean((1, 3))


def steps_across(diff: np.ndarray, axis: int) -> np.ndarray:
    """Mean |first difference| of a difference image across `axis`, per column (axis=1) or row (axis=0)."""
    d = np.abs(np.diff(diff.mean(2), axis=axis))
    return d.mean(0 if axis == 1 else 1)


def seam_ratio(diff: np.ndarray, edges: list[int], f: int = 4) -> float:
    """Largest step of the (block-averaged) difference image across a tile border, in units of its
    median step: about 1 when the borders are invisible in the difference."""
    blocks = block_mean(diff, f)
    worst = 0.0
    for axis in (0, 1):
        prof = steps_across(blocks, axis)
        worst = max(worst, float(prof[[e // f - 1 for e in edges]].max() / (np.median(prof) + 1e-9)))
    return worst


def tile_edges(size: int, tile: int, overlap: int) -> list[int]:
    starts = _starts(size, tile, tile - overlap)
    return sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size})


def test_tiled_matches_untiled_without_seams(module):
    """384 px: one pass vs four 256 px tiles (overlap 64, feathered). Same model; only the context each
    tile sees differs (attention is global), so the outputs differ a little. A tile border would show as
    a step in the difference image across the columns / rows where a tile starts or ends: those steps
    must be like the steps elsewhere (the difference is measured on 4x4 blocks, the codec's patches)."""
    a, b = photo_pair(384)
    one = Fuser(module, device="cpu", tile=0)(a, b, "Remove the noise.")
    tiled = Fuser(module, device="cpu", tile=256, overlap=64)(a, b, "Remove the noise.")
    assert one.shape == tiled.shape == a.shape
    assert one.std() > 0.05, "the test model should produce structured output"
    diff = tiled - one
    assert np.abs(diff).mean() < 0.02, np.abs(diff).mean()
    assert np.abs(diff).max() < 0.25, np.abs(diff).max()
    edges = tile_edges(384, 256, 64)
    assert edges == [128, 256]
    assert seam_ratio(diff, edges) < 2.5, seam_ratio(diff, edges)


def test_feathering_hides_context_dependent_tiles():
    """The worst case of global context: each tile's output carries an offset that depends on the whole
    tile. Feathered blending turns the offsets into ramps (no step at any border); flat weights leave
    steps. This is what keeps a model's tile-to-tile disagreement from showing as seams."""
    a, b = (torch.from_numpy(x) for x in photo_pair(384))

    def context_fn(x, y):
        return (x + y) / 2 + 0.5 * (x.mean() - y.mean())

    exact = (a + b) / 2 + 0.5 * (a.mean() - b.mean())
    edges = tile_edges(384, 256, 64)

    def max_step(out):
        d = (out - exact).mean(2).numpy()
        return max(np.abs(np.diff(d, axis=0)).max(), np.abs(np.diff(d, axis=1)).max())

    feathered = max_step(fuse_tiled(context_fn, a, b, 256, 64))
    flat = max_step(fuse_tiled(context_fn, a, b, 256, 0))  # overlap 0: equal weights, hard tile edges
    assert flat > 1e-3, "the tiles should disagree"
    assert feathered < flat / 8, (feathered, flat)
    assert edges == [128, 256]


def test_flow_tiles_share_the_noise_seed(text):
    """Flow sampling draws its noise per tile from the same seed: tiled output stays deterministic."""
    m = small_fusion_module(SMALL + ["train.variant=flow"], text)
    a, b = photo_pair(200)
    f = Fuser(m, device="cpu", tile=128, overlap=32, steps=2)
    np.testing.assert_array_equal(f(a, b), f(a, b))


def test_compile_and_channels_last_keep_outputs(text):
    """The GPU fast paths are switchable and do not break (or change) CPU inference. The `eager` backend
    traces the model with dynamo (graph breaks, guards) without paying for code generation here."""
    m = small_fusion_module(SMALL, text, codec="tiny")
    a, b = torch.rand(2, 1, 3, 64, 64).unbind(0)
    ref = m.fuse(a, b, ["Remove the haze."])
    keys = set(m.state_dict())
    accelerate(m, "default", backend="eager", channels_last=True)
    compiled = [part._compiled_call_impl is not None for part in [*m.ema.blocks, m.ema.final, m.ema, m.dit]]
    assert compiled == [True] * (len(m.ema.blocks) + 1) + [False, False]  # regional: the blocks, not the model
    out = m.fuse(a, b, ["Remove the haze."])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert set(m.state_dict()) == keys  # checkpoints stay loadable
    m.codec_bf16 = True  # a no-op on CPU: the codec stays in float32 there
    torch.testing.assert_close(m.fuse(a, b, ["Remove the haze."]), ref, rtol=1e-4, atol=1e-5)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, numpy as np, torch
    from mmaif_pl.config import load
    from mmaif_pl.fuse import Fuser
    from mmaif_pl.lit.fusion import build_module
    from mmaif_pl.models.codec import LatentCodec
    from mmaif_pl.models.text import TextEncoder
    size = int(sys.argv[1])
    torch.manual_seed(0)
    codec = LatentCodec("linear", 4, 16)
    codec.linear.basis.copy_(torch.linalg.qr(torch.randn(48, 16))[0].T)
    cfg = load([], ["model.hidden=32", "model.depth=1", "model.heads=2", "model.pe_grid=8"])
    fuser = Fuser(build_module(cfg, codec, TextEncoder()), device="cpu", tile=256, overlap=32)
    small = np.random.rand(256, 256, 3).astype(np.float32)
    fuser(small, small)  # every one-off allocation (model, text, oneDNN) before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a = np.random.rand(size, size, 3).astype(np.float32)
    b = np.random.rand(size, size, 3).astype(np.float32)
    out = fuser(a, b)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mb": before, "after_mb": after, "shape": list(out.shape)}))
""")


def test_large_tiled_fusion_memory_is_image_buffers_only():
    """A 1536 px pair through 256 px tiles: peak memory grows by the image-sized buffers (sources, the
    accumulator, the weights, the output: under 12 float32 images), not with the number of tiles.
    The 4096 px figure (< 8 GB on CPU) is measured by benchmarks/latency.py --size 4096 (docs/speed.md)."""
    size = 1536
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(size)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["shape"] == [size, size, 3]
    image_mb = size * size * 3 * 4 / 2**20
    assert info["after_mb"] - info["before_mb"] < 12 * image_mb, info


def fuse_command_inputs(tmp_path, text) -> list[str]:
    """A saved checkpoint (small DiT, random linear codec) and a 300 px pair: `mmaif fuse` arguments for them."""
    from mmaif_pl.data.io import write_image

    torch.manual_seed(0)
    codec = LatentCodec("linear", 4, 16)
    random_basis(codec)
    codec.save(tmp_path / "codec")
    m = build_module(load([], SMALL + [f"codec.path={tmp_path / 'codec'}"] + text_encoder_overrides()), codec, text)
    randomize(m.ema)
    torch.save({"state_dict": m.state_dict(), "mmaif": m.checkpoint_meta()}, tmp_path / "m.ckpt")
    a, b = photo_pair(300)
    write_image(tmp_path / "a.png", a)
    write_image(tmp_path / "b.png", b[..., :1].repeat(3, 2))
    return ["fuse", "--checkpoint", str(tmp_path / "m.ckpt"), "--a", str(tmp_path / "a.png"), "--b",
            str(tmp_path / "b.png")]


def test_fuse_command_tiles_a_large_pair(tmp_path, text, capsys):
    """`mmaif fuse` end to end on a checkpoint: a pair larger than --tile, the fast-path flag accepted; `--fast` on
    the CPU a note and the same image; the codec's bf16 autocast (CUDA only) refused on the CPU with a one-line
    error and nothing written."""
    from mmaif_pl.cli import main
    from mmaif_pl.data.io import read_image

    command = fuse_command_inputs(tmp_path, text)
    tiles = ["--tile", "192", "--overlap", "32", "--device", "cpu"]
    assert main(command + ["--out", str(tmp_path / "f.png"), "--channels-last", *tiles]) == 0
    assert read_image(tmp_path / "f.png").shape == (300, 300, 3)
    capsys.readouterr()
    assert main(command + ["--out", str(tmp_path / "fast.png"), "--fast", *tiles]) == 0
    assert "--fast switches on GPU fast paths" in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(tmp_path / "fast.png"), read_image(tmp_path / "f.png"))
    rc = main(command + ["--out", str(tmp_path / "g.png"), "--codec-bf16", "--device", "cpu"])
    assert rc == 1 and "--codec-bf16 runs the codec under bf16 autocast on a GPU" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_a_gray_pair_is_fused_gray_and_a_colour_source_keeps_the_models_colour(module):
    """Where neither source has colour (TNO's gray pairs) the fused image has none: the luminance of the model's
    output in all three channels, not the faint tint a model trained on colour leaves; with one colour source the
    model's RGB is kept as it is."""
    from mmaif_pl.data.color import gray_of, is_gray

    a, b = photo_pair(64)
    gray_a = gray_of(a)
    fuser = Fuser(module, device="cpu", tile=0)
    raw = fuser._fuse_one(torch.from_numpy(gray_a), torch.from_numpy(b), "Fuse the two images.").numpy()
    assert not is_gray(raw)  # the model itself gives a gray pair some colour
    out = fuser(gray_a, b, "Fuse the two images.")
    assert is_gray(out) and np.array_equal(out, gray_of(raw))
    np.testing.assert_allclose(out[..., 0], 0.299 * raw[..., 0] + 0.587 * raw[..., 1] + 0.114 * raw[..., 2],
                               atol=1e-6)
    np.testing.assert_array_equal(fuser(a, b, "Fuse the two images."),
                                  fuser._fuse_one(torch.from_numpy(a), torch.from_numpy(b),
                                                  "Fuse the two images.").numpy())


def test_skip_existing_fuses_only_the_pairs_without_an_output(tmp_path, text, capsys):
    """`--skip-existing` resumes an interrupted folder run: pairs whose output exists are left as they are (an
    output is written whole, so one that exists is complete), the others fused; without it every pair is."""
    from mmaif_pl.cli import main
    from mmaif_pl.data.io import read_image, write_image

    command = fuse_command_inputs(tmp_path, text)[:3]
    a, b = photo_pair(96)
    for k in range(3):
        write_image(tmp_path / "A" / f"p{k}.png", np.roll(a, 8 * k, axis=1))
        write_image(tmp_path / "B" / f"p{k}.png", b)
    out = tmp_path / "out"
    run = command + ["--a", str(tmp_path / "A"), "--b", str(tmp_path / "B"), "--out", str(out), "--device", "cpu"]
    assert main(run) == 0
    first = {k: read_image(out / f"p{k}.png") for k in range(3)}
    (out / "p1.png").unlink()
    write_image(out / "p2.png", np.zeros_like(a))  # stands for an output this run must not touch
    capsys.readouterr()
    assert main(run + ["--skip-existing"]) == 0
    printed = capsys.readouterr()
    assert "2 of 3 fused image(s) already in" in printed.err and "fused 1 pair(s)" in printed.out
    np.testing.assert_array_equal(read_image(out / "p1.png"), first[1])
    assert read_image(out / "p2.png").max() == 0
    assert main(run + ["--skip-existing"]) == 0 and "nothing to fuse" in capsys.readouterr().out
    assert main(run) == 0  # without the flag: every pair again
    np.testing.assert_array_equal(read_image(out / "p2.png"), first[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fuse_command_fast_on_the_gpu(tmp_path, text, capsys, monkeypatch):
    """`mmaif fuse --fast` on a GPU switches on every path of FAST_PATHS and writes the plain command's image up to
    bf16 rounding (the bound of test_codec_bf16_on_the_gpu_stays_close_to_float32: the bf16 codec dominates)."""
    from mmaif_pl import fuse
    from mmaif_pl.cli import main
    from mmaif_pl.data.io import read_image

    command = fuse_command_inputs(tmp_path, text) + ["--device", "cuda"]
    switches = []
    real_accelerate = fuse.accelerate
    monkeypatch.setattr(fuse, "accelerate", lambda *a, **k: switches.append(k) or real_accelerate(*a, **k))
    assert main(command + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(command + ["--out", str(tmp_path / "fast.png"), "--fast"]) == 0
    assert "note" not in capsys.readouterr().err and len(switches) == 1
    assert all(switches[0][name] for name in fuse.FAST_PATHS), switches
    diff = np.abs(read_image(tmp_path / "fast.png") - read_image(tmp_path / "plain.png"))
    assert diff.mean() < 0.015 and diff.max() < 0.15



def test_patch_shifts_run_the_dit_on_shifted_copies(module):
    """The wiring of `--patch-shifts` (the smoothing itself: tests/test_dit.py, on a per-patch head): N DiT
    passes per fusion, the extra ones on the latent shifted by half a patch; N = 1 is the plain pass."""
    a, b = photo_pair(256)  # a 64 x 64 latent; a shift pads one cell at the top and / or left
    expected = {1: [(64, 64)], 2: [(64, 64), (65, 65)], 4: [(64, 64), (64, 65), (65, 64), (65, 65)]}
    grids = []
    hook = module.ema.register_forward_hook(lambda mod, args, out: grids.append(tuple(args[0].shape[-2:])))
    try:
        out = {}
        for n in (1, 2, 4):
            grids.clear()
            out[n] = Fuser(module, device="cpu", tile=0, patch_shifts=n)(a, b, "Remove the noise.")
            assert sorted(grids) == expected[n], grids
        with pytest.raises(UserError, match="--patch-shifts"):
            Fuser(module, device="cpu", patch_shifts=3)
    finally:
        hook.remove()
        module.patch_shifts = 1
    assert out[2].shape == out[1].shape and not np.allclose(out[2], out[1])
    again = Fuser(module, device="cpu", tile=0)(a, b, "Remove the noise.")
    np.testing.assert_array_equal(again, out[1])  # the default is the single pass again


@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_bf16_weights_give_the_same_bits_under_bf16_autocast(text, variant):
    """`--bf16-weights` stores the DiT's Linear/Conv2d weights as autocast would cast them on every call:
    the fused image is bit-identical, and every other parameter stays float32."""
    m = small_fusion_module(SMALL + [f"train.variant={variant}"], text)
    a, b = photo_pair(96)
    ref = Fuser(m, device="cpu", bf16=True)(a, b)
    with pytest.raises(UserError, match="bf16 autocast"):
        Fuser(m, device="cpu", bf16_weights=True)  # float32 inputs would meet bf16 weights
    out = Fuser(m, device="cpu", bf16=True, bf16_weights=True)(a, b)
    block = m.ema.blocks[1]
    assert block.attn.qkv.weight.dtype == block.naf.conv1.bias.dtype == torch.bfloat16
    assert block.pe.table.dtype == block.naf.beta.dtype == block.attn.eta_logit.dtype == torch.float32
    assert m.dit.blocks[1].attn.qkv.weight.dtype == torch.float32  # the trained DiT is not touched
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("fused_blocks", [False, True], ids=["plain", "fused_blocks"])
@pytest.mark.parametrize("variant", ["regression", "flow"])
def test_bf16_dit_runs_the_whole_dit_in_bf16(text, variant, fused_blocks):
    """`--bf16-dit` stores every DiT parameter in bf16 and runs it without autocast: each block's output, the
    residual stream, is bf16; the RoPE tables stay float32 and exact; the trained DiT is untouched. The fused image
    stays near float32's, about as near as bf16 autocast's."""
    from mmaif_pl.models.layers import RoPE2D

    def fused(**switches):
        m = small_fusion_module(SMALL + [f"train.variant={variant}"], text)
        return m, Fuser(m, device="cpu", tile=0, steps=3, fused_blocks=fused_blocks, **switches)(a, b)

    a, b = photo_pair(96)
    _, ref = fused()
    _, autocast = fused(bf16=True)
    m, out = fused(bf16_dit=True)
    streams = []
    hooks = [block.register_forward_hook(lambda mod, args, out: streams.append(out[0].dtype)) for block in m.ema.blocks]
    try:
        Fuser(m, device="cpu", tile=0, steps=1)(a[:32, :32], b[:32, :32])
    finally:
        for hook in hooks:
            hook.remove()
    assert streams and set(streams) == {torch.bfloat16}
    ropes = [mod for mod in m.ema.modules() if isinstance(mod, RoPE2D)]
    assert ropes and all(r.freqs.dtype == torch.float32 for r in ropes)
    torch.testing.assert_close(ropes[0](48, 40), m.dit.rope(48, 40), rtol=0, atol=0)
    assert {p.dtype for p in m.ema.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.dit.parameters()} == {torch.float32}
    err, err_autocast = np.abs(out - ref).mean(), np.abs(autocast - ref).mean()
    assert 0 < err < 3 * err_autocast + 1e-4 and np.abs(out - ref).max() < 0.01, (err, err_autocast)


def test_codec_bf16_weights_give_the_same_bits_under_bf16_autocast(text):
    """With `--codec-bf16 --bf16-weights` on a GPU the learned codec's Linear/Conv2d weights are stored in bf16 too,
    as autocast casts them on every call: the same encode and decode, bit for bit (CPU autocast here). `accelerate`
    does it on a GPU only, where the codec runs under autocast."""
    from mmaif_pl.fuse import store_matmul_weights

    m = small_fusion_module(SMALL, text, codec="tiny")
    randomize(m.codec.ae)  # the residual head starts at zero: random values make every layer count
    a, b = photo_pair(64)
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref_z = m.codec.encode(x)
        ref = m.codec.decode(ref_z)
    accelerate(m, codec_bf16=True, bf16_weights=True)
    assert all(p.dtype == torch.float32 for p in m.codec.parameters())  # on the CPU the codec has no autocast
    store_matmul_weights(m.codec.ae)
    assert all(c.weight.dtype == torch.bfloat16 for c in m.codec.ae.modules() if isinstance(c, torch.nn.Conv2d))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = m.codec.encode(x)
        out = m.codec.decode(z)
    assert torch.equal(z, ref_z) and torch.equal(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_codec_bf16_weights_on_the_gpu_give_codec_bf16s_fusion(text):
    """`--codec-bf16 --bf16-weights` on a GPU: the codec's weights in bf16, the fused image that of `--codec-bf16`."""
    import copy

    m = small_fusion_module(SMALL, text, codec="tiny")
    randomize(m.codec.ae)
    a, b = photo_pair(128)
    ref = Fuser(copy.deepcopy(m), device="cuda", tile=0, codec_bf16=True)(a, b)
    fuser = Fuser(copy.deepcopy(m), device="cuda", tile=0, codec_bf16=True, bf16_weights=True)
    out = fuser(a, b)
    convs = [c.weight for c in fuser.module.codec.ae.modules() if isinstance(c, torch.nn.Conv2d)]
    assert convs and all(w.dtype == torch.bfloat16 for w in convs)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiles_are_cut_and_blended_on_the_gpu(module):
    """On a GPU the sources go over once, every tile is cut and blended there, the fused image comes back once;
    the result is the CPU's, up to the GPU's float rounding."""
    a, b = photo_pair(320)
    ref = Fuser(module, device="cpu", tile=192, overlap=32)(a, b)
    fuser = Fuser(module, device="cuda", tile=192, overlap=32, bf16=False)
    seen = []
    fuse = fuser.module.fuse
    fuser.module.fuse = lambda x, y, *args, **kw: seen.append(x.device.type) or fuse(x, y, *args, **kw)
    try:
        out = fuser(a, b)
    finally:  # the module is shared with the other tests of this file
        del fuser.module.fuse
        module.cpu()
    assert seen == ["cuda"] * 4 and out.shape == a.shape and isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, ref, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_codec_bf16_on_the_gpu_stays_close_to_float32(module):
    """`--codec-bf16`: the codec runs under bf16 autocast (the output changes) and stays within bf16's rounding of
    the float32 codec's fusion (the DiT in float32 in both, so only the codec differs)."""
    import copy

    a, b = photo_pair(256)
    ref = Fuser(copy.deepcopy(module), device="cuda", tile=0, bf16=False)(a, b)
    fuser = Fuser(copy.deepcopy(module), device="cuda", tile=0, bf16=False, codec_bf16=True)
    out = fuser(a, b)
    assert fuser.module.codec_bf16 and out.shape == ref.shape and not np.array_equal(out, ref)
    # CPU bf16 autocast in place of CUDA's (a throw-away run of this model and pair): mean 0.005, max 0.046; this
    # random DiT's scaled output layer amplifies the bf16 rounding of the linear codec's latents; bounds at 3x
    assert np.abs(out - ref).mean() < 0.015 and np.abs(out - ref).max() < 0.15
