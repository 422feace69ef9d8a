"""The codec stage: fit the linear codec (closed form), train the learned kinds, measure latent statistics.

`fit_codec` is what `mmaif train-codec` runs; `CodecModule` is the LightningModule for kl / tiny.
Loss: L1 + Sobel-gradient L1 (+ a small KL for AutoencoderKL), on clean and degraded images alike,
since the fusion model encodes both.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import lightning as L
import torch

from ..models.codec import LatentCodec, psnr
from .callbacks import log_for_progress_bar
from .fusion import _sobel_mag
from .trainer import checked_trainer

IMAGE_KEYS = ("a", "b", "a_clean", "b_clean", "target")


def batch_images(batch: dict) -> torch.Tensor:
    """All images of a fusion batch (degraded and clean) as one B' x 3 x H x W tensor."""
    return torch.cat([batch[k] for k in IMAGE_KEYS if batch.get(k) is not None], dim=0)


def take(loader: Iterable[dict], n: int) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch_images(batch)


class CodecModule(L.LightningModule):
    def __init__(self, codec: LatentCodec, lr: float = 5e-4, kl_weight: float = 1e-6):
        super().__init__()
        torch.set_flush_denormal(True)  # the zeroed residual heads produce denormals: 50x slower steps on CPU
        self.codec, self.lr, self.kl_weight = codec, lr, kl_weight

    def training_step(self, batch, batch_idx):
        from diffusers import AutoencoderKL

        x = batch_images(batch) if isinstance(batch, dict) else batch
        z = self.codec.encode_raw(x, sample=True)
        rec = self.codec.decode_raw(z)
        l1 = (rec - x).abs().mean()
        grad = (_sobel_mag(rec) - _sobel_mag(x)).abs().mean()
        loss = l1 + grad
        if isinstance(self.codec.ae, AutoencoderKL) and self.kl_weight > 0:
            loss = loss + self.kl_weight * self.codec.ae.encode(x * 2 - 1).latent_dist.kl().mean()
        shown = {"codec/l1": l1, "codec/grad": grad, "codec/psnr": psnr(rec.detach().clamp(0, 1), x)}
        log_for_progress_bar(self, shown, x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.codec.parameters() if p.requires_grad], lr=self.lr)


def fit_codec(codec: LatentCodec, cfg, train_loader: Callable[[], Iterable[dict]], trainer_kwargs=None,
              log=print, device: torch.device | str = "cpu") -> dict:
    """Fit/train `codec` in place on training batches; returns timing info. `train_loader()` gives a fresh
    iterable of fusion batches (crops of the training split). The latent statistics are measured on `device`
    (Lightning hands the trained codec back on the CPU); the codec is left on the CPU."""
    t0 = time.time()
    if codec.linear is not None:
        codec.fit_linear(take(train_loader(), cfg.fit_batches))
        log(f"codec: fitted the linear {codec.factor}x{codec.factor}x3 -> {codec.channels} PCA "
            f"({time.time() - t0:.1f}s)")
    if codec.ae is not None and codec.kind != "pretrained" and cfg.steps > 0:
        codec.train().requires_grad_(True)
        kwargs = trainer_kwargs or {}
        settings = ", ".join(f"train.{k}={kwargs[k]}" for k in ("accelerator", "precision") if k in kwargs)
        trainer = checked_trainer(settings, max_steps=cfg.steps, logger=False, enable_checkpointing=False, **kwargs)
        trainer.fit(CodecModule(codec, cfg.lr, cfg.kl_weight), train_dataloaders=train_loader())
    codec.eval().requires_grad_(False).to(device)
    codec.measure_stats(take(train_loader(), cfg.fit_batches))
    codec.cpu()
    return {"seconds": round(time.time() - t0, 2)}


@torch.no_grad()
def evaluate_codec(codec: LatentCodec, loader: Iterable[dict], max_batches: int = 1_000_000,
                   device: torch.device | str = "cpu") -> float:
    """Mean per-image reconstruction PSNR (dB) over all images of up to `max_batches` batches, computed on
    `device` (the codec goes back to the CPU afterwards)."""
    total, n = 0.0, 0
    codec.to(device)
    for x in take(loader, max_batches):
        m = codec.factor
        x = x[..., : x.shape[-2] // m * m, : x.shape[-1] // m * m].to(device)
        rec = codec.reconstruct(x)
        total += psnr(rec, x).item() * x.shape[0]
        n += x.shape[0]
    codec.cpu()
    return total / max(n, 1)
