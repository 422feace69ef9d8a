"""LatentCodec: images in [0, 1] <-> standardised latents, plus the folder format that stores it.

Kinds
- `linear`: closed-form PCA of f x f x 3 pixel patches (encode = patchify + project, decode = the
  transpose). Fitted in seconds on CPU; an honest linear codec, not a learned one. Whitened, so its
  channels start at roughly unit scale.
- `kl`: diffusers `AutoencoderKL` built from config. With `residual` (default) it learns a correction on
  top of the fitted linear codec; its output convolutions start at zero, so training starts from the
  linear codec's quality instead of from noise (a from-scratch KL sat at 13 dB after 2 CPU minutes).
- `tiny`: diffusers `AutoencoderTiny` (TAESD layout), same residual scheme.
- `pretrained`: `from_pretrained(local folder)` of a user's AutoencoderKL / AutoencoderTiny (e.g. an SD
  or Flux VAE); never downloaded.

Every kind then standardises latents with per-channel mean/std measured on training images
(`measure_stats`), stored beside the weights. Folder: `codec.json` (kind, sizes, statistics),
`linear.safetensors`, `ae/` (diffusers `save_pretrained`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..atomic import write_dir_atomic
from ..errors import UserError

KINDS = ("linear", "kl", "tiny", "pretrained")


# ----------------------------------------------------------------------------------------------------
# Linear (PCA) codec
# ----------------------------------------------------------------------------------------------------


class PatchStats:
    """Streaming first and second moments of f x f x 3 patches (float64), for the PCA fit."""

    def __init__(self, factor: int):
        self.factor, self.n = factor, 0
        d = 3 * factor * factor
        self.s1 = torch.zeros(d, dtype=torch.float64)
        self.s2 = torch.zeros(d, d, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        f = self.factor
        h, w = x.shape[-2] // f * f, x.shape[-1] // f * f
        p = F.pixel_unshuffle(x[..., :h, :w].double(), f)  # B x 3ff x h/f x w/f
        p = p.permute(1, 0, 2, 3).reshape(p.shape[1], -1)
        self.n += p.shape[1]
        self.s1 += p.sum(1)
        self.s2 += p @ p.T


class LinearCodec(nn.Module):
    """z = W (patch - mu),  x_hat = W^+ z  with W the top-C principal directions scaled by 1/sqrt(lambda)."""

    def __init__(self, factor: int = 4, channels: int = 16):
        super().__init__()
        d = 3 * factor * factor
        if channels > d:
            raise UserError(f"codec.channels={channels} exceeds the {d} values of a {factor}x{factor}x3 patch")
        self.factor, self.channels = factor, channels
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(channels, d))  # orthonormal rows
        self.register_buffer("scale", torch.ones(channels))  # sqrt of the eigenvalues

    @torch.no_grad()
    def fit(self, stats: PatchStats) -> None:
        if stats.n < 2:
            raise UserError("cannot fit the linear codec: no training pixels")
        mu = stats.s1 / stats.n
        cov = stats.s2 / stats.n - torch.outer(mu, mu)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        top = torch.argsort(evals, descending=True)[: self.channels]
        self.mu.copy_(mu.float())
        self.basis.copy_(evecs[:, top].T.float())
        self.scale.copy_(evals[top].clamp_min(1e-10).sqrt().float())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = F.pixel_unshuffle(x, self.factor) - self.mu[:, None, None]
        return torch.einsum("cd,bdhw->bchw", self.basis / self.scale[:, None], p)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.einsum("cd,bchw->bdhw", self.basis * self.scale[:, None], z) + self.mu[:, None, None]
        return F.pixel_shuffle(p, self.factor)


# ----------------------------------------------------------------------------------------------------
# Learned autoencoders (diffusers), optionally residual to the linear codec
# ----------------------------------------------------------------------------------------------------


def tiny_blocks(layers_per_block, levels: int) -> tuple[int, ...]:
    """AutoencoderTiny blocks per level, full resolution first. An int N is TAESD's layout: one block at full
    resolution, N at every level below. A list gives each level's count: 0 at full resolution drops the
    three 64-channel convolutions over every pixel, about half the codec's work (docs/speed.md)."""
    if isinstance(layers_per_block, int):
        return (1,) + (layers_per_block,) * (levels - 1)
    counts = tuple(layers_per_block)
    if len(counts) != levels or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise UserError(f"codec.layers_per_block={list(counts)}: give one block count (an int >= 0) per level, "
                        f"{levels} levels here (block_channels), full resolution first; or one int for TAESD's layout")
    return counts


def build_autoencoder(kind: str, factor: int, channels: int, block_channels, layers_per_block=1):
    from diffusers import AutoencoderKL, AutoencoderTiny

    n = len(block_channels)
    if kind == "kl":
        if not isinstance(layers_per_block, int):
            raise UserError(f"codec.layers_per_block={layers_per_block}: kind=kl takes one int (layers per level)")
        if 2 ** (n - 1) != factor:
            raise UserError(f"codec.kind=kl: {n} block_channels give factor {2 ** (n - 1)}, codec.factor={factor}")
        groups = min(32, *block_channels)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_channels),
            layers_per_block=layers_per_block,
            latent_channels=channels,
            norm_num_groups=groups,
            mid_block_add_attention=False,  # full-resolution attention is the CPU bottleneck and buys little here
        )
    if kind == "tiny":
        if 2 ** (n - 1) != factor:
            raise UserError(f"codec.kind=tiny: {n} block_channels give factor {2 ** (n - 1)}, codec.factor={factor}")
        width = (max(block_channels),) * n  # TAESD blocks keep one width (its strided convs do not widen)
        blocks = tiny_blocks(layers_per_block, n)
        return AutoencoderTiny(
            encoder_block_out_channels=width,
            decoder_block_out_channels=width,
            num_encoder_blocks=blocks,
            num_decoder_blocks=blocks[::-1],
            latent_channels=channels,
        )
    raise UserError(f"unknown codec kind '{kind}'; valid: {', '.join(KINDS)}")


def _zero_last_conv(module: nn.Module) -> None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    nn.init.zeros_(convs[-1].weight)
    if convs[-1].bias is not None:
        nn.init.zeros_(convs[-1].bias)


def _init_residual(ae: nn.Module) -> None:
    """Make the learned parts start at zero, so residual = linear codec at step 0."""
    from diffusers import AutoencoderKL

    if isinstance(ae, AutoencoderKL):
        qc = ae.quant_conv  # 1x1 conv to (mean, logvar)
        nn.init.zeros_(qc.weight)
        nn.init.zeros_(qc.bias)
        qc.bias.data[ae.config.latent_channels :] = -10.0  # posterior std e^-5: sampling barely perturbs
    else:
        _zero_last_conv(ae.encoder)
    _zero_last_conv(ae.decoder)


class LatentCodec(nn.Module):
    """Images (Bx3xHxW in [0, 1]) <-> standardised latents (B x C x H/f x W/f)."""

    def __init__(self, kind: str = "linear", factor: int = 4, channels: int = 16, block_channels=(64, 128),
                 layers_per_block=1, residual: bool = True, autoencoder: Optional[nn.Module] = None):
        super().__init__()
        if kind not in KINDS:
            raise UserError(f"unknown codec kind '{kind}'; valid: {', '.join(KINDS)}")
        self.kind, self.factor, self.channels = kind, factor, channels
        if not isinstance(layers_per_block, int):  # per-level counts (an OmegaConf ListConfig from a config)
            layers_per_block = list(layers_per_block)
        self.block_channels, self.layers_per_block = list(block_channels), layers_per_block
        self.residual = residual and kind in ("kl", "tiny")
        self.linear = LinearCodec(factor, channels) if kind == "linear" or self.residual else None
        if kind in ("kl", "tiny") and autoencoder is None:
            autoencoder = build_autoencoder(kind, factor, channels, block_channels, layers_per_block)
            if self.residual:
                _init_residual(autoencoder)
        self.ae = autoencoder
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))

    @classmethod
    def from_config(cls, cfg) -> "LatentCodec":
        if cfg.kind == "pretrained":
            if not cfg.path:
                raise UserError("codec.kind=pretrained needs codec.path (a local diffusers VAE folder)")
            return cls.load(cfg.path)
        return cls(cfg.kind, cfg.factor, cfg.channels, cfg.block_channels, cfg.layers_per_block, cfg.residual)

    # -- raw (unstandardised) maps ------------------------------------------------------------------
    def _ae_encode(self, x: torch.Tensor, sample: bool) -> torch.Tensor:
        from diffusers import AutoencoderKL

        x = x * 2 - 1  # diffusers autoencoders work in [-1, 1]
        if isinstance(self.ae, AutoencoderKL):
            dist = self.ae.encode(x).latent_dist
            return dist.sample() if sample else dist.mode()
        return self.ae.encode(x).latents

    def _ae_decode(self, z: torch.Tensor) -> torch.Tensor:
        from diffusers import AutoencoderKL

        out = self.ae.decode(z).sample
        # AutoencoderKL's residual head starts at 0; AutoencoderTiny ends in `2x - 1`, so its zeroed head
        # gives -1: map both to [0, 1]-scale residuals that are exactly 0 at initialisation.
        return out * 0.5 if self.residual and isinstance(self.ae, AutoencoderKL) else (out + 1) * 0.5

    def encode_raw(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        self._check(x)
        if self.kind == "linear":
            return self.linear.encode(x)
        z = self._ae_encode(x, sample)
        return z + self.linear.encode(x) if self.residual else z

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.linear.decode(z)
        x = self._ae_decode(z)
        return x + self.linear.decode(z) if self.residual else x

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the codec factor {self.factor}")

    # -- standardised latents (what the DiT sees) ---------------------------------------------------
    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        z = self.encode_raw(x, sample)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(z * self.latent_std[:, None, None] + self.latent_mean[:, None, None])

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).clamp(0, 1)

    # -- fitting ------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_linear(self, images: Iterable[torch.Tensor]) -> None:
        stats = PatchStats(self.factor)
        for x in images:
            stats.update(x)
        self.linear.fit(stats)

    @torch.no_grad()
    def measure_stats(self, images: Iterable[torch.Tensor]) -> None:
        """Per-channel mean/std of raw latents over the given training images."""
        n, s1, s2 = 0, 0.0, 0.0
        for x in images:
            z = self.encode_raw(x.to(self.latent_mean.device)).double()
            n += z.shape[0] * z.shape[2] * z.shape[3]
            s1 = s1 + z.sum((0, 2, 3))
            s2 = s2 + (z * z).sum((0, 2, 3))
        if n == 0:
            raise UserError("cannot measure latent statistics: no training images")
        mean = s1 / n
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_((s2 / n - mean**2).clamp_min(1e-12).sqrt().float())

    # -- identity and storage -----------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": self.kind, "factor": self.factor, "channels": self.channels,
                "block_channels": self.block_channels, "layers_per_block": self.layers_per_block,
                "residual": self.residual}

    def identity(self) -> dict:
        """What a checkpoint records: the codec's shape plus a digest of every weight and statistic."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return {**self.describe(), "digest": h.hexdigest()[:16]}

    def save(self, folder: str | Path, replace: bool = True) -> bool:
        """Write the codec to `folder` as one unit (atomic.write_dir_atomic): a reader, another rank of the run
        included, loads the old codec or the new one, never half of one. `replace=False` keeps a codec already
        there (ranks that fit the same codec at once: the first one saved is the run's). Returns whether this
        codec is the one in `folder`. A folder with other contents is not replaced (that would delete them)."""
        folder = Path(folder)
        if replace and folder.is_dir() and any(folder.iterdir()) and not (folder / "codec.json").is_file():
            raise UserError(f"{folder} is not empty and holds no codec (codec.json): refusing to replace it; "
                            "give an empty or new folder")

        def write(tmp: Path) -> None:
            if self.linear is not None:
                save_file({k: v.contiguous() for k, v in self.linear.state_dict().items()}, tmp / "linear.safetensors")
            if self.ae is not None:
                self.ae.save_pretrained(tmp / "ae")
            meta = {**self.identity(), "latent_mean": self.latent_mean.tolist(), "latent_std": self.latent_std.tolist()}
            (tmp / "codec.json").write_text(json.dumps(meta, indent=2) + "\n")

        return write_dir_atomic(folder, write, replace)

    @classmethod
    def load(cls, folder: str | Path) -> "LatentCodec":
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"codec folder not found: {folder}")
        meta_path = folder / "codec.json"
        if not meta_path.is_file():
            if (folder / "config.json").is_file():  # a bare diffusers VAE folder: no statistics yet
                return cls._from_diffusers(folder, None)
            raise UserError(f"{folder}: neither codec.json (mmaif codec) nor config.json (diffusers VAE)")
        meta = json.loads(meta_path.read_text())
        if meta["kind"] == "pretrained":
            codec = cls._from_diffusers(folder / "ae", meta)
        else:
            codec = cls(meta["kind"], meta["factor"], meta["channels"], meta["block_channels"],
                        meta["layers_per_block"], meta["residual"], autoencoder=_load_ae(folder / "ae")
                        if meta["kind"] in ("kl", "tiny") else None)
        if codec.linear is not None:
            codec.linear.load_state_dict(load_file(folder / "linear.safetensors"))
        codec.latent_mean.copy_(torch.tensor(meta["latent_mean"]))
        codec.latent_std.copy_(torch.tensor(meta["latent_std"]))
        return codec

    @classmethod
    def _from_diffusers(cls, folder: Path, meta: Optional[dict]) -> "LatentCodec":
        ae = _load_ae(folder)
        from diffusers import AutoencoderTiny

        factor = ae.config.upsampling_scaling_factor ** (len(ae.config.encoder_block_out_channels) - 1) \
            if isinstance(ae, AutoencoderTiny) else 2 ** (len(ae.config.block_out_channels) - 1)
        return cls("pretrained", factor, ae.config.latent_channels, [], 0, False, autoencoder=ae)


def _load_ae(folder: Path) -> nn.Module:
    from diffusers import AutoencoderKL, AutoencoderTiny

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder}: no config.json of a diffusers autoencoder")
    name = json.loads(cfg_path.read_text()).get("_class_name")
    classes = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}
    if name not in classes:
        raise UserError(f"{cfg_path}: unsupported autoencoder class {name!r}; valid: {', '.join(classes)}")
    return classes[name].from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB for images in [0, 1]."""
    mse = ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return (-10 * torch.log10(mse)).mean()
