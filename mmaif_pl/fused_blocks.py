"""A sampling-time rewrite of a trained FusionDiT into fewer, larger kernels, computing the same function.

At batch 1 on a GPU the DiT is launch-bound: a B forward issues about 1 900 kernels (docs/speed.md,
benchmarks/kernel_count.py), and even a CUDA graph replays each at a few microseconds. `fuse_blocks`
rewrites, in place and from the same weights, the parts that launch most:

  MoE       the routed experts and the shared one as one SwiGLU of their summed width (w_shared = 1,
            `models.layers.wide_swiglu`, on weights concatenated once):
                sum_e w_e (W2_e h_e + b2_e) = [W2_1 ... W2_K] [w_1 h_1; ...; w_K h_K] + sum_e w_e b2_e,
                h_e = SiLU(W1_e x) * W3_e x
            two GEMMs instead of 2K, no T x E x D stack, and no balance loss (a training quantity).
            `sparse_moe=True` instead computes only the experts a token is routed to (SparseMoE below):
            k + 1 of the E + 1 experts' FLOPs, in two grouped GEMMs over the rows sorted by expert.
  RoPE      q and k rotated in one pass, the rotation of a pair (x1, x2) written as
                (x1, x2) * (cos, cos) + (x2, x1) * (-sin, sin),
            its tables cached per token grid.
  NAFBlock  on the tokens as they lie (B x h x w x D): the 1x1 convolutions as Linear layers on the same
            weights, the depthwise 3x3 on a channels-last view; no permute copies around the LayerNorms.
  value residual  lerp(V, V_prev, eta) with eta = sigmoid(a) evaluated once.
  block PE  the table resized to a grid once per grid.
  adaLN     1 + scale folded into the modulation's bias, so that each modulation is one addcmul,
                x * (1 + scale) + shift = addcmul(shift, x, scale'),   scale' = W c + (b + 1),
            and each gated residual another, x + gate * out = addcmul(x, gate, out).

The rewritten modules copy the weights (the adaLN modulation alone is taken as it is, its scale biases
raised by 1 in place): load a checkpoint first, then rewrite (loading into a rewritten DiT fails on its keys).
Sampling only: a DiT with parameters that require grad is refused, and the MoE's auxiliary balance loss is not
computed (the blocks return None for it; the DiT's comes out as 0). Outputs match the original up to float
rounding (tests/test_fused_blocks.py); `store_matmul_weights`, `compile_blocks` and CUDA graphs apply on top.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError
from .models.dit import FusionDiT, FusionDiTBlock
from .models.layers import Attention, BlockPE, MoESwiGLU, NAFBlock, RoPE2D, autocast_on, wide_swiglu


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    """An nn.Linear holding copies of `weight` (out x in, or a 1x1 conv's out x in x 1 x 1) and `bias`."""
    weight = weight.detach().flatten(1)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.detach())
    return layer.requires_grad_(False)


def _cached(cache: dict, key: tuple, make):
    """cache[key], made on first use; computed afresh under torch.compile, which traces `make` instead."""
    if torch.compiler.is_compiling():
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


class FusedMoE(nn.Module):
    """MoESwiGLU as one wide SwiGLU whose hidden units are scaled by their expert's combine weight."""

    def __init__(self, moe: MoESwiGLU):
        super().__init__()
        self.router, self.top_k = moe.router, moe.top_k
        w13, b13, w2, b2 = moe.wide_weights()  # copied once here; training concatenates them at each call
        self.w13 = _linear(w13, b13)
        # an nn.Linear only to hold the weight (store_matmul_weights treats it); forward uses it in one addmm
        self.w2 = _linear(w2, None)
        self.b2 = nn.Parameter(b2.detach(), requires_grad=False)  # K x D, a new tensor (stacked)

    # the routing is MoESwiGLU's own: softmax over the router's logits, top-k, renormalised
    select, route = MoESwiGLU.select, MoESwiGLU.route

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat = x.reshape(-1, x.shape[-1])
        out = wide_swiglu(flat, self.route(flat)[0], self.w13.weight, self.w13.bias, self.w2.weight, self.b2)
        return out.reshape(x.shape[:-1] + out.shape[-1:]), None  # no balance loss: a training quantity


class SparseMoE(nn.Module):
    """MoESwiGLU computing each token's top-k experts and the shared one only, not all E with zero weights.

    Each token t makes k (+1) rows, one per expert e it is routed to, with combine weight w_te (1 for the shared
    expert). The rows are sorted by expert, so that expert e's rows are one contiguous run, and each run is
    multiplied by its own expert's weights in one grouped GEMM (torch._grouped_mm, offsets on the device: no
    host sync, so CUDA graphs and compile capture it):

        y_te = w_te (W2_e (SiLU(W1_e x_t) * W3_e x_t) + b2_e),   out_t = sum_e y_te.

    The number of rows, T (k + 1), does not depend on the routing, so every shape is static. Each expert's
    hidden width is padded with zero units to a multiple of 8 (bf16 grouped GEMMs need 16-byte strides); a zero
    unit contributes SiLU(0) * 0 = 0.
    """

    def __init__(self, moe: MoESwiGLU):
        super().__init__()
        self.router, self.top_k, self.routed = moe.router, moe.top_k, moe.experts_n
        experts = [*moe.experts, *([moe.shared] if moe.shared is not None else [])]
        pad = -experts[0].w2.in_features % 8
        rows = (0, 0, 0, pad)  # F.pad of an out x in weight: pad its rows (a bias: its entries, (0, pad))
        w1, w3 = zip(*(e.w13.weight.chunk(2) for e in experts))
        b1, b3 = zip(*(e.w13.bias.chunk(2) for e in experts))
        # [W1_e; W3_e] for each expert, so that one chunk(2) splits the gate from the value
        self.w13 = GroupedLinear(torch.stack([torch.cat([F.pad(a, rows), F.pad(b, rows)]) for a, b in zip(w1, w3)]),
                                 torch.stack([torch.cat([F.pad(a, (0, pad)), F.pad(b, (0, pad))])
                                              for a, b in zip(b1, b3)]))
        self.w2 = GroupedLinear(torch.stack([F.pad(e.w2.weight, (0, pad)) for e in experts]),
                                torch.stack([e.w2.bias for e in experts]))
        # on the router's device: the rewrite may run on a model already on the GPU (accelerate after .cuda())
        self.register_buffer("expert_ids", torch.arange(len(experts), device=moe.router.weight.device),
                             persistent=False)

    select = MoESwiGLU.select  # the routing is MoESwiGLU's own

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat = x.reshape(-1, x.shape[-1])
        _, weight, expert = self.select(flat)  # T x k each
        if len(self.expert_ids) > self.routed:  # the shared expert: every token, weight 1
            expert = F.pad(expert, (0, 1), value=self.routed)
            weight = F.pad(weight, (0, 1), value=1.0)
        slots = expert.shape[1]
        group, order = expert.flatten().sort(stable=True)  # the rows grouped by expert; row r is token r // slots
        ends = torch.searchsorted(group, self.expert_ids, right=True).to(torch.int32)  # where each run ends
        gate, value = self.w13(flat.index_select(0, order // slots), ends, group).chunk(2, dim=-1)
        out = self.w2(F.silu(gate) * value, ends, group)
        out = out * weight.flatten()[order].unsqueeze(-1).to(out.dtype)
        out = torch.empty_like(out).index_copy_(0, order, out).unflatten(0, (-1, slots)).sum(1)  # token order
        return out.reshape(x.shape[:-1] + out.shape[-1:]), None  # no balance loss: a training quantity


class GroupedLinear(nn.Module):
    """G Linear layers (weight G x out x in, bias G x out), layer g applied to the g-th run of rows: rows
    ends[g-1]:ends[g]. One grouped GEMM; `group` names each row's layer, for its bias. Computes in autocast's
    dtype where autocast is on, as nn.Linear does (autocast does not cast grouped GEMMs itself)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)

    def forward(self, rows: torch.Tensor, ends: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        device = rows.device.type
        dtype = torch.get_autocast_dtype(device) if autocast_on(device) else self.weight.dtype
        grouped_mm = torch._grouped_mm if dtype != torch.float32 else grouped_mm_float32
        out = grouped_mm(rows.to(dtype), self.weight.to(dtype).transpose(1, 2), ends)
        return out + self.bias.to(dtype)[group]


@torch.compiler.disable
def grouped_mm_float32(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm outside torch.compile: its float32 kernel (CPU) has no fake-tensor rule, as CUDA's
    grouped GEMM is bf16 only, so dynamo cannot trace it and breaks the graph here instead."""
    return torch._grouped_mm(rows, weight, ends)


class PairRoPE(nn.Module):
    """RoPE2D's angles as the two tables of `rotate_pairs`, (cos, cos) and (-sin, sin): (N x hd/2 x 2) each,
    cached per grid."""

    def __init__(self, rope: RoPE2D):
        super().__init__()
        self.rope = rope
        self.cache: dict = {}

    def forward(self, h: int, w: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            cos, sin = self.rope(h, w, extra)[:2]
            return torch.stack([cos, cos], dim=-1), torch.stack([-sin, sin], dim=-1)

        return _cached(self.cache, (h, w, extra, self.rope.freqs.device), make)


def rotate_pairs(x: torch.Tensor, cos_cos: torch.Tensor, neg_sin_sin: torch.Tensor) -> torch.Tensor:
    """apply_rope on x (... x N x 2 x H x hd, q and k stacked): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # ... N x 2 x H x hd/2 x 2
    cos_cos, neg_sin_sin = cos_cos[:, None, None], neg_sin_sin[:, None, None]  # N x 1 x 1 x hd/2 x 2
    return torch.addcmul(pairs * cos_cos, pairs.flip(-1), neg_sin_sin).flatten(-2).type_as(x)


class FusedAttention(nn.Module):
    """Attention with q and k rotated together (tables from PairRoPE) and the value residual as one lerp."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads, self.qkv, self.proj = attn.heads, attn.qkv, attn.proj
        # a tensor, not a float: dynamo would specialise each block's compiled graph on a float's value
        eta = None if attn.eta_logit is None else torch.sigmoid(attn.eta_logit.detach()).reshape(())
        self.register_buffer("eta", eta)

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                v_prev: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None):
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # B x N x 3 x H x hd
        qk = qkv[:, :, :2] if rope is None else rotate_pairs(qkv[:, :, :2], *rope)
        q, k = qk.permute(2, 0, 3, 1, 4)  # each B x H x N x hd
        v = qkv[:, :, 2].transpose(1, 2)
        if self.eta is not None and v_prev is not None:
            v = torch.lerp(v, v_prev.to(v.dtype), self.eta.to(v.dtype))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).flatten(2)), v


class TokenNAFBlock(nn.Module):
    """NAFBlock computed on the token layout. FusionDiTBlock hands it the grid as a B x D x h x w view of its
    B x N x D tokens; permuted back, that view is contiguous again, so nothing is copied to change layout."""

    def __init__(self, naf: NAFBlock):
        super().__init__()
        self.norm1, self.norm2 = naf.norm1.norm, naf.norm2.norm
        self.conv1 = _linear(naf.conv1.weight, naf.conv1.bias)
        self.dwconv = naf.dwconv
        self.sca = _linear(naf.sca[1].weight, naf.sca[1].bias)
        self.conv2 = _linear(naf.conv2.weight, naf.conv2.bias)
        self.ffn1 = _linear(naf.ffn1.weight, naf.ffn1.bias)
        self.ffn2 = _linear(naf.ffn2.weight, naf.ffn2.bias)
        self.beta = nn.Parameter(naf.beta.detach().flatten().clone(), requires_grad=False)
        self.gamma = nn.Parameter(naf.gamma.detach().flatten().clone(), requires_grad=False)

    @staticmethod
    def gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * b

    def forward(self, grid: torch.Tensor) -> torch.Tensor:  # B x D x h x w
        x = grid.permute(0, 2, 3, 1)  # B x h x w x D
        y = self.conv1(self.norm1(x))
        y = self.gate(self.dwconv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))  # depthwise conv, channels-last
        y = y * self.sca(y.mean(dim=(1, 2), keepdim=True))  # simplified channel attention
        x = torch.addcmul(x, self.beta, self.conv2(y))
        x = torch.addcmul(x, self.gamma, self.ffn2(self.gate(self.ffn1(self.norm2(x)))))
        return x.permute(0, 3, 1, 2)


class FusedBlock(nn.Module):
    """FusionDiTBlock with its modulations and gated residuals as one addcmul each (module docstring). It takes the
    block's parts; the modulation's scale biases get 1 added, in place."""

    def __init__(self, block: FusionDiTBlock):
        super().__init__()
        self.pe, self.naf, self.norm1, self.attn = block.pe, block.naf, block.norm1, block.attn
        self.norm2, self.ffn, self.mod = block.norm2, block.ffn, block.mod
        with torch.no_grad():  # chunks: shift1, scale1, gate1, shift2, scale2, gate2
            bias = self.mod.net[-1].bias.unflatten(0, (6, -1))
            bias[1] += 1
            bias[4] += 1

    local = FusionDiTBlock.local  # the block PE and NAFBlock on the image tokens, as the block adds them

    def forward(self, x, c, hw, rope=None, v_prev=None, attn_mask=None):
        x = self.local(x, hw)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None] for m in self.mod(c))
        out, v = self.attn(torch.addcmul(shift1, self.norm1(x), scale1), rope, v_prev, attn_mask)
        x = torch.addcmul(x, gate1, out)
        out, _ = self.ffn(torch.addcmul(shift2, self.norm2(x), scale2))
        return torch.addcmul(x, gate2, out), v, None  # no balance loss to add up: 2 kernels fewer per block


class CachedBlockPE(nn.Module):
    """BlockPE with its resized table kept per grid (a sampled image size keeps its grid)."""

    def __init__(self, pe: BlockPE):
        super().__init__()
        self.pe = pe
        self.cache: dict = {}

    def forward(self, h: int, w: int) -> torch.Tensor:
        return _cached(self.cache, (h, w, self.pe.table.device, self.pe.table.dtype), lambda: self.pe(h, w))


def fuse_blocks(dit: FusionDiT, sparse_moe: bool = False) -> FusionDiT:
    """Rewrite a trained, frozen FusionDiT in place for sampling (module docstring); returns it. `sparse_moe`:
    the MoE as SparseMoE (only the routed experts computed) instead of FusedMoE (all, zero-weighted)."""
    trainable = [name for name, p in dit.named_parameters() if p.requires_grad]
    if trainable:
        raise UserError(f"fuse_blocks rewrites a DiT for sampling, but {len(trainable)} of its parameters require "
                        f"grad (e.g. {trainable[0]}); rewrite a frozen copy, e.g. the EMA DiT")
    if dit.rope is not None and not isinstance(dit.rope, PairRoPE):
        dit.rope = PairRoPE(dit.rope)
    for i, block in enumerate(dit.blocks):
        if isinstance(block.pe, BlockPE):
            block.pe = CachedBlockPE(block.pe)
        if isinstance(block.naf, NAFBlock):
            block.naf = TokenNAFBlock(block.naf)
        if isinstance(block.attn, Attention):
            block.attn = FusedAttention(block.attn)
        if isinstance(block.ffn, MoESwiGLU):
            block.ffn = SparseMoE(block.ffn) if sparse_moe else FusedMoE(block.ffn)
        if isinstance(block, FusionDiTBlock):
            dit.blocks[i] = FusedBlock(block)
    return dit
