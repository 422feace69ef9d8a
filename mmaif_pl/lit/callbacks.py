"""Training helpers: the denoiser-only EMA update, progress-bar values without host syncs, image grids for
TensorBoard, a metrics JSON writer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn

from ..config import atomic_write_text


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over parameters (buffers are copied). DiT's `update_ema`, as one
    multi-tensor lerp: a few kernels on a GPU instead of one per parameter (585 for B); on a CPU it is the same
    per-tensor lerp, bit for bit."""
    params = list(ema.parameters())
    torch._foreach_lerp_(params, [p.detach().to(e.dtype) for e, p in zip(params, model.parameters(), strict=True)],
                         1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def ema_decay(step: int, decay: float) -> float:
    """Warm-up (1 + n) / (10 + n) so short runs are not dominated by the random initial weights."""
    return min(decay, (1 + step) / (10 + step))


def log_for_progress_bar(module: L.LightningModule, values: dict[str, torch.Tensor], batch_size: int) -> None:
    """Show `values` (scalars on the device) in the progress bar without making every step wait for the GPU.

    Lightning turns every progress-bar value into a number after each batch, whether the bar refreshes or
    not: a device value would be read back, and the host would wait for the GPU to finish the step, at every
    step. So the values go to the bar as one host copy, made only on the steps whose logs Lightning writes
    (every `log_every_n_steps`, where the logged values are read back anyway); in between the bar keeps them.
    Outside a Trainer (tests calling training_step) every step counts as one."""
    trainer = module._trainer
    every = max(1, trainer.log_every_n_steps) if trainer is not None else 1
    if (module.global_step + 1) % every == 0:
        shown = torch.stack([v.detach().float() for v in values.values()]).to("cpu", copy=True)
        module.log_dict(dict(zip(values, shown.unbind())), prog_bar=True, logger=False, batch_size=batch_size)


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Columns of equally sized 3xHxW images per row -> one 3 x (rows*H) x (cols*W) image, 2-px white gutters."""
    pad = 2
    tiles = [[torch.nn.functional.pad(im.clamp(0, 1), (pad, pad, pad, pad), value=1.0) for im in r] for r in rows]
    return torch.cat([torch.cat(r, dim=2) for r in tiles], dim=1)


class ImageGridLogger(L.Callback):
    """At each validation, log [a | b | fused | target] for the first `max_images` samples of the first
    validation batch (the same samples every time and for every variant) and their prompts."""

    def __init__(self, max_images: int = 4):
        self.max_images = max_images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or trainer.sanity_checking or not isinstance(outputs, dict) or "fused" not in outputs:
            return
        logger = trainer.logger
        if logger is None or not hasattr(logger.experiment, "add_image"):
            return
        n = min(self.max_images, outputs["fused"].shape[0])
        rows = []
        for i in range(n):
            row = [batch["a"][i], batch["b"][i], outputs["fused"][i]]
            if batch.get("target") is not None:
                row.append(batch["target"][i])
            rows.append([im.float().cpu() for im in row])
        step = trainer.global_step
        logger.experiment.add_image("val/a_b_fused_target", image_grid(rows), step)
        prompts = "\n\n".join(f"{i}: [{batch['task'][i]}] {batch['prompt'][i]}" for i in range(n))
        logger.experiment.add_text("val/prompts", prompts, step)


class MetricsJSON(L.Callback):
    """After each validation: the latest `val/*` metrics (and the step) to a JSON file, and one row per
    validation appended to a CSV beside it (the validation curve `dvc plots` draws). Both written atomically;
    rows of earlier steps already in the CSV (a resumed run) are kept."""

    def __init__(self, path: str | Path, prefix: str = "val/", curve_name: str = "val_curve.csv"):
        self.path, self.prefix = Path(path), prefix
        self.curve = self.path.with_name(curve_name)

    def _rows(self) -> list[dict]:
        if not self.curve.is_file():
            return []
        import csv

        with self.curve.open() as fh:
            return list(csv.DictReader(fh))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k[len(self.prefix):]: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(self.prefix) and math.isfinite(float(v))}
        metrics["step"] = trainer.global_step
        atomic_write_text(self.path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        rows = [r for r in self._rows() if int(r["step"]) < metrics["step"]] + [metrics]
        fields = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
        atomic_write_text(self.curve, "\n".join(lines) + "\n")
