"""FusionDiT: the MMAIF "modernized DiT" over codec latents (DESIGN.md §5, paper spec §3).

    input   channel-concatenated latents: regression [z_a, z_b], flow [z_t, z_a, z_b]; patch p (linear or conv)
    c       MLP(pooled text) [+ MLP(sinusoid(t)) for flow]
    block   x += PE_l (per-block, interpolated)   | absolute sin-cos PE once at the input
            x  = NAFBlock(x) on the token grid     | nothing
            x += a1 * Attn(mod(LN x; g1, b1))      RoPE 2D | none;  value residual | plain values
            x += a2 * MoE-SwiGLU(mod(LN x; g2, b2))          4 routed top-2 + shared | dense SwiGLU
            (g1, b1, a1, g2, b2, a2) = LoRA-adaLN(c)        | adaLN-Zero
    text    optional projected prompt tokens appended to the sequence (joint attention), stripped at the end
    output  adaLN final layer -> linear to p*p*C -> unpatchify (zero-init: the initial output is 0)

Any latent grid works, square or not, seen or unseen in training: a grid that is not a multiple of p is
padded (replicate) and cropped back, the per-block PE is resized, RoPE is computed for the grid.

`shift_ensemble` (test time only): the per-token output head leaves a faint block pattern at the patch
borders (p x codec-factor pixels); averaging the DiT over inputs shifted by p/2 latent cells moves those
borders between the copies and is a small ensemble as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (AdaLNModulation, Attention, BlockPE, DenseFFN, MoESwiGLU, NAFBlock, RoPE2D,
                     TimestepEmbedder, modulate, sincos_pe_2d, swiglu_hidden)

PRESETS = {  # hidden, depth, heads
    "tiny": (128, 4, 4),  # CPU tests and the embedded default
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


@dataclass
class DiTSpec:
    """The model section of the config, resolved (preset + overrides)."""

    hidden: int = 128
    depth: int = 4
    heads: int = 4
    patch: int = 2
    patch_embed: str = "linear"
    lora_adaln: bool = True
    lora_rank: Optional[int] = None
    block_pe: bool = True
    pe_grid: int = 32
    nafblock: bool = True
    rope: bool = True
    value_residual: bool = True
    moe: bool = True
    experts: int = 4
    top_k: int = 2
    shared_expert: bool = True
    text_tokens: bool = False
    mlp_ratio: float = 4.0

    @classmethod
    def from_config(cls, m) -> "DiTSpec":
        if m.preset not in PRESETS:
            raise ValueError(f"unknown model preset '{m.preset}'; valid: {', '.join(PRESETS)}")
        hidden, depth, heads = PRESETS[m.preset]
        fields = {k: m[k] for k in cls.__dataclass_fields__ if k in m and k not in ("hidden", "depth", "heads")}
        return cls(hidden=m.hidden or hidden, depth=m.depth or depth, heads=m.heads or heads, **fields)


class FusionDiTBlock(nn.Module):
    def __init__(self, s: DiTSpec, first: bool):
        super().__init__()
        d = s.hidden
        self.pe = BlockPE(d, s.pe_grid) if s.block_pe else None
        self.naf = NAFBlock(d) if s.nafblock else None
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, s.heads, value_residual=s.value_residual, first=first)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = swiglu_hidden(d, s.mlp_ratio)
        self.ffn = MoESwiGLU(d, hidden, s.experts, s.top_k, s.shared_expert) if s.moe else DenseFFN(d, hidden)
        self.mod = AdaLNModulation(d, 6, (s.lora_rank or d // 4) if s.lora_adaln else None)

    def local(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The block PE and the NAFBlock, on the image tokens only; text tokens (if any) follow them unchanged."""
        if self.pe is None and self.naf is None:
            return x
        h, w = hw
        img, txt = x[:, : h * w], x[:, h * w:]
        if self.pe is not None:
            img = img + self.pe(h, w)
        if self.naf is not None:
            grid = img.transpose(1, 2).unflatten(2, (h, w))
            img = self.naf(grid).flatten(2).transpose(1, 2)
        return torch.cat([img, txt], dim=1) if txt.shape[1] else img  # no copy without text tokens

    def forward(self, x, c, hw, rope=None, v_prev=None, attn_mask=None):
        x = self.local(x, hw)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(c)
        out, v = self.attn(modulate(self.norm1(x), shift1, scale1), rope, v_prev, attn_mask)
        x = x + gate1[:, None] * out
        out, aux = self.ffn(modulate(self.norm2(x), shift2, scale2))
        return x + gate2[:, None] * out, v, aux


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mod = AdaLNModulation(hidden, 2)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)

    def forward(self, x, c):
        shift, scale = self.mod(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class FusionDiT(nn.Module):
    """v or z_hat = FusionDiT(latents, pooled_text[, t][, text_tokens, text_mask]) -> (B x C x h x w, aux loss)."""

    def __init__(self, latent_channels: int, n_inputs: int, text_dim: int, spec: DiTSpec, timestep: bool):
        super().__init__()
        s, d = spec, spec.hidden
        self.spec, self.latent_channels, self.n_inputs = spec, latent_channels, n_inputs
        cin = latent_channels * n_inputs
        if s.patch_embed == "conv":
            self.embed = nn.Conv2d(cin, d, s.patch, stride=s.patch)
        elif s.patch_embed == "linear":
            self.embed = nn.Linear(cin * s.patch * s.patch, d)
        else:
            raise ValueError(f"model.patch_embed must be linear or conv, got {s.patch_embed!r}")
        self.text_embed = nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.t_embed = TimestepEmbedder(d) if timestep else None
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, d)) if s.text_tokens else None
        self.rope = RoPE2D(d // s.heads) if s.rope else None
        self.blocks = nn.ModuleList(FusionDiTBlock(s, first=i == 0) for i in range(s.depth))
        self.final = FinalLayer(d, s.patch, latent_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init discipline: every block starts as identity, the output at 0
            if isinstance(m, AdaLNModulation):
                nn.init.zeros_(m.net[-1].weight)
                nn.init.zeros_(m.net[-1].bias)
            if isinstance(m, MoESwiGLU):
                nn.init.normal_(m.router.weight, std=0.02)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.embed, nn.Conv2d):
            return self.embed(x).flatten(2).transpose(1, 2)
        return self.embed(F.pixel_unshuffle(x, self.spec.patch).flatten(2).transpose(1, 2))

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return F.pixel_shuffle(x.transpose(1, 2).unflatten(2, (h, w)), self.spec.patch)

    def forward(self, x: torch.Tensor, text: torch.Tensor, t: Optional[torch.Tensor] = None,
                text_tokens: Optional[torch.Tensor] = None, text_mask: Optional[torch.Tensor] = None):
        p = self.spec.patch
        H, W = x.shape[-2:]
        pad_h, pad_w = -H % p, -W % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.patchify(x)
        if not self.spec.block_pe:
            tokens = tokens + sincos_pe_2d(tokens.shape[-1], h, w, device=x.device).to(tokens.dtype)

        c = self.text_embed(text)
        if self.t_embed is not None:
            if t is None:
                raise ValueError("this FusionDiT was built with a timestep input (flow); pass t")
            c = c + self.t_embed(t)

        attn_mask, extra = None, 0
        if self.text_proj is not None and text_tokens is not None:
            extra = text_tokens.shape[1]
            tokens = torch.cat([tokens, self.text_proj(text_tokens)], dim=1)
            if text_mask is not None:  # image tokens always attend; padded text tokens never do
                keep = torch.cat([text_mask.new_ones(text_mask.shape[0], h * w), text_mask.bool()], dim=1)
                attn_mask = keep[:, None, None, :]
        rope = self.rope(h, w, extra) if self.rope is not None else None

        v, aux = None, x.new_zeros(())
        for block in self.blocks:
            tokens, v, block_aux = block(tokens, c, (h, w), rope, v, attn_mask)
            if block_aux is not None:  # None from the sampling rewrite's blocks, which compute no balance loss
                aux = aux + block_aux
        out = self.unpatchify(self.final(tokens[:, : h * w], c), h, w)
        return out[..., :H, :W], aux / len(self.blocks)


def ensemble_shifts(patch: int, n: int) -> list[tuple[int, int]]:
    """The (dy, dx) latent shifts of an n-copy patch-shift ensemble: 1 (none), 2 (diagonal) or 4 (all)."""
    if n not in (1, 2, 4):
        raise ValueError(f"patch shifts must be 1, 2 or 4, got {n}")
    if n > 1 and patch < 2:
        raise ValueError(f"a patch-shift ensemble needs model.patch >= 2 (this model's is {patch})")
    h = patch // 2
    return [(0, 0), (h, h)] if n == 2 else [(0, 0), (0, h), (h, 0), (h, h)] if n == 4 else [(0, 0)]


def shift_ensemble(fn, x: torch.Tensor, shifts: list[tuple[int, int]]):
    """mean_k shift_back(fn(shift(x, dy_k, dx_k))): fn maps a B x C x h x w latent to (same-grid output, aux);
    a shift pads (dy, dx) replicated cells at the top / left, and its output is cropped back."""
    outs, aux = [], 0.0
    for dy, dx in shifts:
        out, a = fn(F.pad(x, (dx, 0, dy, 0), mode="replicate") if dy or dx else x)
        outs.append(out[..., dy:, dx:])
        aux = aux + a
    return torch.stack(outs).mean(0), aux / len(shifts)
