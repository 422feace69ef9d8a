"""A Lightning Trainer whose refusals of its settings are one-line ConfigErrors, not tracebacks, and whose progress
bar reads right for runs bounded by steps."""
from __future__ import annotations

import importlib.util

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from ..errors import ConfigError


def checked_trainer(settings: str, **kwargs) -> L.Trainer:
    """`L.Trainer(**kwargs)`; a ValueError or MisconfigurationException from Lightning's checks (an unknown
    accelerator, a strategy the device cannot run, ...) becomes a ConfigError that names `settings`, the config
    keys behind the arguments. Building a Trainer writes nothing, so a caller can build it before its first write.
    Unless the caller brings its own or turns it off, the progress bar is `default_progress_bar()`."""
    callbacks = list(kwargs.get("callbacks") or [])
    if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        kwargs["callbacks"] = [*callbacks, default_progress_bar()]
    try:
        return L.Trainer(**kwargs)
    except (ValueError, MisconfigurationException) as exc:
        raise ConfigError(f"Lightning refused the run's settings ({settings}): {exc}") from exc


class StepBoundedRichProgressBar(RichProgressBar):
    """Lightning's rich bar, without the epoch total it shows as "-2" when a run is bounded by its steps
    (max_epochs=-1, as every run here) in Lightning <= 2.6.6 (Lightning-AI/pytorch-lightning#21925)."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs == -1:
            shown = description.replace(f"Epoch {current_epoch}/-2", f"Epoch {current_epoch}", 1)
            description = shown.ljust(len(description))  # Lightning pads it to the validation bar's width
        return description


def default_progress_bar() -> ProgressBar:
    """The bar Lightning would pick, rich where installed, else tqdm; the rich one as StepBoundedRichProgressBar."""
    return StepBoundedRichProgressBar() if importlib.util.find_spec("rich") else TQDMProgressBar()
