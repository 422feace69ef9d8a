"""FusionDiT and its layers (tiny preset, CPU), plus the flow-matching math."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mmaif_pl.config import ModelConfig
from mmaif_pl.models.dit import PRESETS, DiTSpec, FusionDiT, ensemble_shifts, shift_ensemble
from mmaif_pl.models.flow import LinearPath, LogitNormalTime, euler_sample, euler_times, time_shift
from mmaif_pl.models.layers import (Attention, MoESwiGLU, NAFBlock, RoPE2D, apply_rope, balance_loss)

C, TXT = 4, 24  # latent channels and text width, small for speed


def make(flow=False, **over):
    cfg = OmegaConf.structured(ModelConfig(preset="tiny", hidden=32, depth=2, heads=2, pe_grid=8, **over))
    torch.manual_seed(0)
    return FusionDiT(C, 3 if flow else 2, TXT, DiTSpec.from_config(cfg), timestep=flow)


def inputs(model, h, w, b=2, n_text=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, C * model.n_inputs, h, w, generator=g)
    t = torch.rand(b, generator=g) if model.t_embed is not None else None
    tokens = torch.randn(b, n_text, TXT, generator=g)
    mask = torch.ones(b, n_text, dtype=torch.bool)
    mask[0, 3:] = False
    return x, torch.randn(b, TXT, generator=g), t, tokens, mask


def perturb(model, std=0.05):
    """Move every zero-initialised parameter off zero so that every path carries gradient."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("text_tokens", [False, True])
@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (7, 5), (12, 4)])
def test_shapes_any_grid(flow, text_tokens, hw):
    m = make(flow, text_tokens=text_tokens)
    x, pooled, t, tok, mask = inputs(m, *hw)
    out, aux = m(x, pooled, t, tok, mask)
    assert out.shape == (2, C, *hw)
    assert aux.shape == () and torch.isfinite(aux)


@pytest.mark.parametrize("text_tokens", [False, True])
def test_block_pe_and_nafblock_touch_only_the_image_tokens(text_tokens):
    """FusionDiTBlock.local adds the block PE and runs the NAFBlock on the image tokens; text tokens pass unchanged.
    Without text tokens nothing is concatenated: the image tokens come back as the NAFBlock left them, contiguous
    (a concatenation with an empty text part would only copy them, a kernel per block)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    m = make(text_tokens=text_tokens)
    perturb(m)
    block, (h, w), extra = m.blocks[0], (4, 6), 5 if text_tokens else 0
    x = torch.randn(2, h * w + extra, 32)
    with torch.no_grad(), Ops() as ops:
        out = block.local(x, (h, w))
    grid = (x[:, : h * w] + block.pe(h, w)).transpose(1, 2).unflatten(2, (h, w))
    torch.testing.assert_close(out[:, : h * w], block.naf(grid).flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, h * w:], x[:, h * w:], rtol=0, atol=0)
    assert out.is_contiguous() and ops.names.count("cat") == int(text_tokens)


def test_zero_init_output_and_identity_blocks():
    m = make(True, text_tokens=True)
    x, pooled, t, tok, mask = inputs(m, 6, 10)
    out, _ = m(x, pooled, t, tok, mask)
    assert torch.count_nonzero(out) == 0
    tokens = torch.randn(2, 15, 32)
    c = torch.randn(2, 32)
    for block in m.blocks:
        y, _, _ = block(tokens, c, (3, 5))
        torch.testing.assert_close(y, tokens)
    naf = NAFBlock(16)
    g = torch.randn(1, 16, 5, 7)
    torch.testing.assert_close(naf(g), g)


def test_unseen_size_after_training_size():
    m = make()
    perturb(m)
    for hw in [(8, 8), (16, 24), (10, 6)]:
        x, pooled, t, tok, mask = inputs(m, *hw, b=1)
        out, _ = m(x, pooled)
        assert out.shape[-2:] == hw and torch.isfinite(out).all()


def test_gradient_reaches_every_parameter():
    m = make(True, text_tokens=True)
    perturb(m)
    x, pooled, t, tok, mask = inputs(m, 6, 10, b=4)
    out, aux = m(x, pooled, t, tok, mask)
    (out.square().mean() + aux).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_shift_ensemble_offsets_exactness_and_smoothing():
    assert ensemble_shifts(2, 1) == [(0, 0)] and ensemble_shifts(2, 2) == [(0, 0), (1, 1)]
    assert ensemble_shifts(4, 4) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    for patch, n in [(2, 3), (1, 2)]:
        with pytest.raises(ValueError):
            ensemble_shifts(patch, n)
    x = torch.randn(2, 3, 6, 10)
    # a shift-equivariant (pointwise) map is unchanged by the ensemble: the shift and its crop cancel
    out, aux = shift_ensemble(lambda z: (z.square(), torch.tensor(1.0)), x, ensemble_shifts(2, 4))
    torch.testing.assert_close(out, x.square())
    assert aux.item() == 1.0

    def blocky(z):  # a per-2x2-patch head, piecewise constant on the patch grid (padded like the DiT)
        h, w = z.shape[-2:]
        z = F.pad(z, (0, w % 2, 0, h % 2), mode="replicate")
        return F.interpolate(F.avg_pool2d(z, 2), scale_factor=2, mode="nearest")[..., :h, :w], 0.0

    ramp = torch.arange(8.0).expand(1, 1, 8, 8)  # a smooth horizontal ramp, step 1 per column
    single, _ = shift_ensemble(blocky, ramp, ensemble_shifts(2, 1))
    both, _ = shift_ensemble(blocky, ramp, ensemble_shifts(2, 2))
    steps_single, steps_both = single.diff(dim=-1)[0, 0, 4], both.diff(dim=-1)[0, 0, 4]
    assert steps_single.tolist() == [0, 2, 0, 2, 0, 2, 0]  # all change at the patch borders
    assert steps_both[1:-1].tolist() == [1, 1, 1, 1, 1]    # the ensemble restores the ramp inside


def names(model):
    return {n for n, _ in model.named_parameters()}


def test_each_switch_changes_the_parameter_set():
    full = names(make())
    assert any(".mod.net.1." in n for n in full) and any(".mod.net.2." in n for n in full)  # LoRA down, up
    plain = names(make(lora_adaln=False))
    assert not any("blocks.0.mod.net.2." in n for n in plain) and "blocks.0.mod.net.1.weight" in plain
    assert make(lora_adaln=False).blocks[0].mod.net[1].weight.shape == (6 * 32, 32)
    assert make().blocks[0].mod.net[1].weight.shape == (8, 32)  # rank = hidden / 4
    assert {n for n in full if ".pe." in n} and not {n for n in names(make(block_pe=False)) if ".pe." in n}
    assert {n for n in full if ".naf." in n} and not {n for n in names(make(nafblock=False)) if ".naf." in n}
    assert "blocks.1.attn.eta_logit" in full and "blocks.0.attn.eta_logit" not in full  # first layer plain
    assert not {n for n in names(make(value_residual=False)) if "eta_logit" in n}
    assert {n for n in full if "router" in n}
    dense = names(make(moe=False))
    assert not {n for n in dense if "router" in n or "experts" in n} and "blocks.0.ffn.mlp.w2.weight" in dense
    assert not {n for n in names(make(shared_expert=False)) if "shared" in n}
    assert {n for n in names(make(text_tokens=True)) - full} == {n for n in names(make(text_tokens=True))
                                                                 if n.startswith("text_proj")}
    assert make(patch_embed="conv").embed.weight.dim() == 4
    # RoPE has no parameters: same set, different function
    assert names(make(rope=False)) == full and make(rope=False).rope is None
    a, b = make(), make(rope=False)
    perturb(a), perturb(b)
    x, pooled, *_ = inputs(a, 6, 6)
    assert not torch.allclose(a(x, pooled)[0], b(x, pooled)[0])


def test_rope_scores_depend_only_on_offset():
    rope = RoPE2D(16)
    cos, sin, rot = rope(12, 12)
    torch.testing.assert_close(rot, torch.complex(cos, sin), rtol=0, atol=0)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(pq, pk):  # positions (row, col) on a 12-wide grid
        iq, ik = pq[0] * 12 + pq[1], pk[0] * 12 + pk[1]
        qr = apply_rope(q[None, None, None], cos[iq:iq + 1], sin[iq:iq + 1])
        kr = apply_rope(k[None, None, None], cos[ik:ik + 1], sin[ik:ik + 1])
        return (qr * kr).sum().item()

    base = score((1, 2), (4, 7))
    for shift in [(0, 3), (5, 0), (6, 4)]:
        moved = score((1 + shift[0], 2 + shift[1]), (4 + shift[0], 7 + shift[1]))
        assert moved == pytest.approx(base, abs=1e-4)
    assert score((1, 2), (4, 8)) != pytest.approx(base, abs=1e-3)  # a different offset does change it
    # norms are kept: a rotation
    qr = apply_rope(q[None, None, None].expand(1, 1, 144, 16), cos, sin)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm().expand(1, 1, 144))


def pairwise_rope(x, cos, sin):
    """The rotation written out pair by pair, in float32 (apply_rope's definition)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_rope_is_the_pairwise_rotation_bit_for_bit_eager_and_compiled(dtype):
    """Eager apply_rope (a complex product) and its compiled form (the pairs) give the pairwise rotation's bits,
    values and gradients, on q and k as Attention slices them from one qkv projection (with text tokens); eager
    also with RoPE2D's complex table, made once for all blocks."""
    torch.manual_seed(0)
    cos, sin, rot = RoPE2D(16)(5, 6, extra=3)
    qkv = torch.randn(2, 33, 3 * 4 * 16).to(dtype)
    grads = torch.randn(2, 2, 4, 33, 16).to(dtype)
    results = []
    for rope in (pairwise_rope, apply_rope, lambda x, c, s: apply_rope(x, c, s, rot),
                 torch.compile(apply_rope, backend="aot_eager", fullgraph=True)):
        leaf = qkv.clone().requires_grad_(True)
        q, k, _ = leaf.unflatten(-1, (3, 4, -1)).permute(2, 0, 3, 1, 4)
        out = torch.stack([rope(q, cos, sin), rope(k, cos, sin)])
        out.backward(grads)
        results.append((out.detach(), leaf.grad))
    for out, grad in results[1:]:
        assert out.dtype == dtype
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


def test_value_residual_mixing_formula():
    first = Attention(16, 2, value_residual=True, first=True)
    assert first.eta_logit is None
    attn = Attention(16, 2, value_residual=True, first=False)
    v, v_prev = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    torch.testing.assert_close(attn.mix_values(v, v_prev), 0.5 * v + 0.5 * v_prev)  # eta = sigmoid(0)
    with torch.no_grad():
        attn.eta_logit.fill_(1.3)
    eta = torch.sigmoid(torch.tensor(1.3))
    torch.testing.assert_close(attn.mix_values(v, v_prev), (1 - eta) * v + eta * v_prev)
    x = torch.randn(1, 5, 16)
    _, v1 = first(x)
    _, v2 = attn(x, v_prev=v1)
    own = attn.qkv(x).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)[2]
    torch.testing.assert_close(v2, (1 - eta) * own + eta * v1)


def test_moe_balance_loss_and_routing():
    probs = torch.full((64, 4), 0.25)
    uniform_idx = torch.arange(128).reshape(64, 2) % 4
    assert balance_loss(probs, uniform_idx, 4).item() == pytest.approx(1.0)
    skew = torch.tensor([0.7, 0.2, 0.05, 0.05]).expand(64, 4)
    skew_idx = torch.tensor([0, 1]).expand(64, 2)
    assert balance_loss(skew, skew_idx, 4).item() > 1.5
    moe = MoESwiGLU(32, 64, experts=4, top_k=2, shared=True)
    torch.manual_seed(0)
    x = torch.randn(4, 64, 32)
    out, loss = moe(x)
    weights, _, topi = moe.route(x.reshape(-1, 32))
    assert set(topi.unique().tolist()) == {0, 1, 2, 3}  # every expert receives tokens
    assert ((weights > 0).sum(-1) == 2).all() and torch.allclose(weights.sum(-1), torch.ones(256))
    assert out.shape == x.shape and loss.item() >= 1.0 - 1e-5


@pytest.mark.parametrize("shared", [True, False], ids=["shared_expert", "routed_only"])
def test_moe_trains_as_one_wide_swiglu_under_autocast(shared):
    """Training under bf16 autocast runs the MoE as `wide_swiglu` on freshly concatenated weights: the same
    function as the per-expert form, with gradients reaching every expert through the concatenation, and no
    further from float32 than the per-expert form is (a misplaced expert or unit would be off by O(1)). In
    float32 training keeps the per-expert form, bit for bit (the CPU pipeline's numbers)."""
    import copy

    torch.manual_seed(0)
    moe = MoESwiGLU(96, 256, experts=4, top_k=1 if not shared else 2, shared=shared)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, g = torch.randn(4, 75, 96), torch.randn(4, 75, 96)

    def run(train: bool, autocast: bool):
        m = copy.deepcopy(moe).train(train)
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, aux = m(xx)
        ((out.float() * g).sum() + aux).backward()
        return {"out": out.detach().float(), "x": xx.grad, **{n: p.grad for n, p in m.named_parameters()}}

    reference, per_expert, wide = run(False, False), run(False, True), run(True, True)
    assert set(wide) == set(reference) and all(wide[k] is not None for k in wide)
    for k in reference:
        error = lambda r: float((r[k].float() - reference[k]).norm() / reference[k].norm())
        assert error(wide) <= 1.1 * error(per_expert) + 1e-4, (k, error(wide), error(per_expert))
    float32_training = run(True, False)
    assert all(torch.equal(float32_training[k], reference[k]) for k in reference)


def test_presets_grow():
    sizes = []
    for preset in PRESETS:
        spec = DiTSpec.from_config(OmegaConf.structured(ModelConfig(preset=preset)))
        sizes.append(spec.hidden * spec.depth)
    assert sizes == sorted(sizes)
    with pytest.raises(ValueError, match="unknown model preset"):
        DiTSpec.from_config(OmegaConf.structured(ModelConfig(preset="XXL")))


# ---------------------------------------------------------------------------------------------- flow math


def test_linear_path_endpoints_and_estimate():
    x1, x0 = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    path = LinearPath()
    torch.testing.assert_close(path.sample(x1, x0, torch.zeros(3)).z_t, x0)
    torch.testing.assert_close(path.sample(x1, x0, torch.ones(3)).z_t, x1)
    t = torch.tensor([0.2, 0.5, 0.9])
    ps = path.sample(x1, x0, t)
    torch.testing.assert_close(ps.velocity, x1 - x0)
    torch.testing.assert_close(path.clean_estimate(ps.z_t, ps.velocity, t), x1)



def test_velocity_from_data_is_the_path_velocity_below_the_clamp():
    """x-prediction: (x1 - z_t) / (1 - t) equals x1 - x0 on the path; near t = 1 the clamp keeps it finite."""
    x1, x0 = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0.0, 0.3, 0.9, 0.999])
    ps = LinearPath().sample(x1, x0, t)
    v = LinearPath.velocity_from_data(x1, ps.z_t, t, eps=0.05)
    torch.testing.assert_close(v[:3], ps.velocity[:3])
    torch.testing.assert_close(v[3], (x1 - ps.z_t)[3] / 0.05)
    assert torch.isfinite(LinearPath.velocity_from_data(x1, x1, torch.ones(4))).all()


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 1.0), (7, 3.0)])
def test_euler_with_perfect_velocity_recovers_target(steps, shift):
    target, noise = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)

    def velocity(z, t):  # the exact conditional velocity towards `target` from the current point
        return (target - z) / (1 - t).clamp_min(1e-6).reshape(-1, 1, 1, 1)

    torch.testing.assert_close(euler_sample(velocity, noise, steps, shift), target, atol=1e-4, rtol=1e-4)


def test_time_shift_and_sampler():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(time_shift(t, 1.0), t)
    s = time_shift(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s[1:-1] < t[1:-1]).all() and (s.diff() > 0).all()
    ts = euler_times(4, 3.0)
    assert len(ts) == 5 and ts[0] == 0 and ts[-1] == 1
    u = LogitNormalTime()(20000, torch.Generator().manual_seed(0))
    assert 0 < u.min() and u.max() < 1 and abs(u.median().item() - 0.5) < 0.02
