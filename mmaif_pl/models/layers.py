"""The MMAIF blocks (DESIGN.md §5), each with the plain fallback its ablation switch selects.

Read top-down: conditioning (LoRA-adaLN), positions (per-block PE, 2D RoPE), the NAFBlock, value-residual
attention, the MoE SwiGLU. Shapes: tokens are B x N x D; the image grid is h x w tokens (N = h*w, any h, w).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this kind of device; False where autocast is not defined for it (the meta device
    of the FLOP and kernel counts, on which torch.is_autocast_enabled raises)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------------------------------
# Conditioning: adaLN-Zero, optionally factorised (LoRA-adaLN)
# ----------------------------------------------------------------------------------------------------


class AdaLNModulation(nn.Module):
    """c -> `chunks` modulation vectors of size D.

    LoRA-adaLN (rank r):  Up(Down(SiLU(c)))  with Down: D -> r, Up: r -> chunks*D  (Cosmos / W.A.L.T.).
    Plain adaLN-Zero (rank None): Linear(SiLU(c)) D -> chunks*D (DiT).
    The last linear is zero-initialised, so all shifts, scales and gates start at 0: the block is identity.
    """

    def __init__(self, dim: int, chunks: int, rank: Optional[int] = None):
        super().__init__()
        self.chunks = chunks
        if rank:
            self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, rank, bias=False), nn.Linear(rank, chunks * dim))
        else:
            self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(c).chunk(self.chunks, dim=-1)


# ----------------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------------


class BlockPE(nn.Module):
    """Learnable 2D table at a base grid, resized (bicubic) to the token grid; added before a block.

    Zero-initialised so that a fresh block is exactly the identity; learning moves it away from zero.
    """

    def __init__(self, dim: int, grid: int = 32):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, dim, grid, grid))

    def forward(self, h: int, w: int) -> torch.Tensor:  # 1 x hw x D
        pe = self.table
        if pe.shape[-2:] != (h, w):
            pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
        return pe.flatten(2).transpose(1, 2)


def sincos_pe_2d(dim: int, h: int, w: int, device=None) -> torch.Tensor:
    """Fixed 2D sin-cos table (MAE/DiT), the absolute-PE fallback when per-block PE is off. hw x D."""
    assert dim % 4 == 0, "hidden size must be a multiple of 4 for 2D sin-cos PE"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    out = [f(pos.reshape(-1, 1) * omega) for pos in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(out, dim=1)


class RoPE2D(nn.Module):
    """Axial 2D rotary embedding: the first half of each head's channels rotates with the row index,
    the second half with the column index (base 10000). For a pair of tokens, q.k then depends on their
    positions only through the offset (dy, dx): attention is translation-equivariant on the grid.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 4 == 0, "RoPE2D needs head_dim divisible by 4"
        quarter = head_dim // 4
        self.register_buffer("freqs", 1.0 / base ** (torch.arange(quarter).float() / quarter), persistent=False)

    def forward(self, h: int, w: int, extra: int = 0) -> tuple[torch.Tensor, ...]:
        """cos, sin of shape (h*w + extra) x head_dim/2; `extra` trailing tokens (text) are not rotated. Eager, also
        cos + i sin, the complex form apply_rope multiplies by: made here once for every block's q and k."""
        ys, xs = torch.meshgrid(torch.arange(h, device=self.freqs.device), torch.arange(w, device=self.freqs.device),
                                indexing="ij")
        ang = torch.cat([ys.reshape(-1, 1) * self.freqs, xs.reshape(-1, 1) * self.freqs], dim=1)
        if extra:
            ang = torch.cat([ang, ang.new_zeros(extra, ang.shape[1])])
        cos, sin = ang.cos(), ang.sin()
        return (cos, sin) if torch.compiler.is_compiling() else (cos, sin, torch.complex(cos, sin))


def _as_complex(pairs: torch.Tensor) -> torch.Tensor:
    """float32 ... x 2 pairs as complex numbers: a view where the layout allows one (x's own layout), else a copy."""
    strides = (*pairs.stride()[:-1], pairs.storage_offset())
    viewable = pairs.stride(-1) == 1 and all(s % 2 == 0 for s in strides)
    return torch.view_as_complex(pairs if viewable else pairs.contiguous())


class ComplexRotation(torch.autograd.Function):
    """pairs (x1, x2) -> (x1 + i x2) * rot, and the gradient * conj(rot): one complex product each way, in the
    layout the tensors come in (autograd's own view_as_real would first copy the gradient to a contiguous one)."""

    @staticmethod
    def forward(ctx, pairs: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rot)
        return torch.view_as_real(_as_complex(pairs) * rot)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rot,) = ctx.saved_tensors
        return torch.view_as_real(_as_complex(grad) * rot.conj()), None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rot: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rotate consecutive channel pairs (x1, x2) of x (B x H x N x hd) by the angles behind cos/sin (N x hd/2):

        (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos),   in float32, i.e. (x1 + i x2) (cos + i sin).

    Eager, as that complex product (ComplexRotation) by `rot` = cos + i sin (RoPE2D's, else made here): one kernel
    forward and one backward where the pairwise form takes nine and more, with the same float32 products and sums,
    so the same bits (tests/test_dit.py). Under torch.compile, the pairwise form: inductor fuses it into one kernel,
    and has no code generation for complex tensors."""
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        x1, x2 = pairs.unbind(-1)
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    else:
        out = ComplexRotation.apply(pairs, torch.complex(cos, sin) if rot is None else rot)
    return out.flatten(-2).type_as(x)


# ----------------------------------------------------------------------------------------------------
# Biased-inductive NAFBlock (Chen et al. 2022), on the token grid
# ----------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x C x H x W
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """x + beta * [1x1 -> dw3x3 -> SimpleGate -> SCA -> 1x1](LN x);  then  + gamma * [1x1 -> SG -> 1x1](LN x).

    beta and gamma start at 0, so the block starts as identity. Not modulated by c (the paper's figure
    draws no conditioning arrow into it).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1))  # simplified channel attention
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim)
        self.ffn1 = nn.Conv2d(dim, 2 * dim, 1)  # FFN half: expand 2x, gate back to D
        self.ffn2 = nn.Conv2d(dim, dim, 1)
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x D x h x w
        y = self.gate(self.dwconv(self.conv1(self.norm1(x))))
        x = x + self.beta * self.conv2(y * self.sca(y))
        return x + self.gamma * self.ffn2(self.gate(self.ffn1(self.norm2(x))))


# ----------------------------------------------------------------------------------------------------
# Attention with value residual
# ----------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention (scaled_dot_product_attention), optional RoPE on q, k, optional value residual:

        V_l = (1 - eta_l) * W_V x + eta_l * V_{l-1},   eta_l = sigmoid(a_l), a_l = 0 at init (eta = 1/2).

    The first layer (no V_{l-1}) uses its own values and has no eta. Returns the output and V_l for the
    next layer.
    """

    def __init__(self, dim: int, heads: int, value_residual: bool = False, first: bool = True):
        super().__init__()
        assert dim % heads == 0, f"hidden {dim} not divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.eta_logit = nn.Parameter(torch.zeros(1)) if value_residual and not first else None

    def mix_values(self, v: torch.Tensor, v_prev: Optional[torch.Tensor]) -> torch.Tensor:
        if self.eta_logit is None or v_prev is None:
            return v
        eta = torch.sigmoid(self.eta_logit)
        return (1 - eta) * v + eta * v_prev

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, ...]] = None,
                v_prev: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # each B x H x N x hd
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        v = self.mix_values(v, v_prev)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).flatten(2)), v


# ----------------------------------------------------------------------------------------------------
# Feed-forward: dense SwiGLU and the MoE of SwiGLU experts
# ----------------------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """W2 (SiLU(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """LLaMA sizing: 2/3 of the dense MLP width keeps SwiGLU's FLOPs equal to a GELU MLP's."""
    return max(8, int(2 * mlp_ratio * dim / 3))


def balance_loss(probs: torch.Tensor, topk_idx: torch.Tensor, experts: int) -> torch.Tensor:
    """Switch/GShard load-balancing loss  E * sum_i f_i P_i.

    f_i: fraction of the top-k assignments that go to expert i; P_i: mean router probability of i.
    Equals 1 when routing is uniform (its minimum for a given P when f = P); grows with imbalance.
    """
    f = torch.zeros(experts, device=probs.device, dtype=probs.dtype)
    f.scatter_add_(0, topk_idx.reshape(-1), torch.ones_like(topk_idx.reshape(-1), dtype=probs.dtype))
    f = f / topk_idx.numel()
    return experts * (f * probs.mean(0)).sum()


def wide_swiglu(flat: torch.Tensor, weights: torch.Tensor, w13: torch.Tensor, b13: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor) -> torch.Tensor:
    """K SwiGLU experts mixed by `weights` (T x E, the routed ones; experts E+1.. are shared, weight 1) as one
    SwiGLU of their summed width, its hidden units scaled by their expert's weight:

        sum_e w_e (W2_e h_e + b2_e) = [W2_1 ... W2_K] [w_1 h_1; ...; w_K h_K] + sum_e w_e b2_e,
        h_e = SiLU(W1_e x) * W3_e x,

    two GEMMs instead of 2K and no T x K x D stack. w13: rows [W1_1 .. W1_K, W3_1 .. W3_K] (one chunk(2) splits
    the gates from the values), b13 alike; w2: D x K*width; b2: K x D."""
    gate, value = F.linear(flat, w13, b13).chunk(2, dim=-1)
    hidden = F.silu(gate) * value  # T x K*width
    # cast once to the hidden units' dtype (bf16 under autocast, as the product with b2 would cast it there)
    mix = F.pad(weights, (0, b2.shape[0] - weights.shape[-1]), value=1.0).to(hidden.dtype)
    hidden = (hidden.unflatten(-1, (mix.shape[-1], -1)) * mix.unsqueeze(-1)).flatten(1)
    return torch.addmm(mix @ b2, hidden, w2.t())


class MoESwiGLU(nn.Module):
    """Token-level mixture of SwiGLU experts: top-k routed experts (renormalised softmax weights) plus
    an always-on shared expert. Capacity-free dense dispatch: every expert runs on every token and the
    combine weights are zero off the top-k (cheap at these sizes, no token dropping, no scatter).
    Each expert is (k + shared) times narrower than the dense SwiGLU, so active FLOPs match it.

    Training under autocast (bf16-mixed) computes the same function as `wide_swiglu` on the experts' weights
    concatenated afresh at each call (gradients reach each expert through the concatenation): at a training
    batch the T x E x D stack, its products and sum, and the per-expert casts and launches outweigh copying the
    weights. It rounds less than the per-expert form (one bf16 rounding of the mixed output instead of one per
    expert output, product and sum); float32 training and evaluation keep the per-expert form and its bits.
    """

    def __init__(self, dim: int, hidden: int, experts: int = 4, top_k: int = 2, shared: bool = True):
        super().__init__()
        self.experts_n, self.top_k = experts, top_k
        expert_hidden = max(8, hidden // (top_k + int(shared)))
        self.router = nn.Linear(dim, experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)  # not zero: ties would send every token to experts 0..k-1
        self.experts = nn.ModuleList(SwiGLU(dim, expert_hidden) for _ in range(experts))
        self.shared = SwiGLU(dim, expert_hidden) if shared else None

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: T x D -> (router probs T x E, the top-k experts' renormalised weights T x k, their indices T x k)."""
        probs = self.router(x).float().softmax(-1)
        topv, topi = probs.topk(self.top_k, dim=-1)
        return probs, topv / topv.sum(-1, keepdim=True), topi

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: T x D -> (combine weights T x E, zero off the top k; router probs T x E; top-k indices T x k)."""
        probs, topw, topi = self.select(x)
        return torch.zeros_like(probs).scatter(-1, topi, topw), probs, topi

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1, x.shape[-1])
        weights, probs, topi = self.route(flat)
        if self.training and autocast_on(flat.device.type):
            out = wide_swiglu(flat, weights, *self.wide_weights())
        else:
            out = torch.stack([e(flat) for e in self.experts], dim=1)  # T x E x D
            out = (weights.unsqueeze(-1).to(out.dtype) * out).sum(1)
            if self.shared is not None:
                out = out + self.shared(flat)
        return out.reshape_as(x), balance_loss(probs, topi, self.experts_n)

    def wide_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The experts' (routed, then shared) weights laid out for `wide_swiglu`: w13, b13, w2, b2."""
        experts = [*self.experts, *([self.shared] if self.shared is not None else [])]
        w1, w3 = zip(*(e.w13.weight.chunk(2) for e in experts))
        b1, b3 = zip(*(e.w13.bias.chunk(2) for e in experts))
        return (torch.cat([*w1, *w3]), torch.cat([*b1, *b3]), torch.cat([e.w2.weight for e in experts], dim=1),
                torch.stack([e.w2.bias for e in experts]))


class DenseFFN(nn.Module):
    """The MoE fallback: one SwiGLU, no auxiliary loss."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mlp(x), x.new_zeros(())


# ----------------------------------------------------------------------------------------------------
# Timestep embedding (diffusers' sinusoid + MLP)
# ----------------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> D. Scaled by 1000 so the sinusoid frequencies see the range DiT's were tuned for."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.freq = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.mlp = TimestepEmbedding(freq_dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.freq(t * 1000).to(self.mlp.linear_1.weight.dtype))


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
