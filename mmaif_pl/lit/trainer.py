"""A Lightning Trainer whose refusals of its settings are one-line ConfigErrors, not tracebacks (a multi-node run
that no launcher started included), and whose progress bar reads right for runs bounded by steps."""
from __future__ import annotations

import importlib.util
import os

import lightning as L
from lightning.fabric.plugins.environments import LightningEnvironment
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
        trainer = L.Trainer(**kwargs)
    except (ValueError, MisconfigurationException) as exc:
        raise ConfigError(f"Lightning refused the run's settings ({settings}): {exc}") from exc
    check_nodes_launched(trainer)
    return trainer


def check_nodes_launched(trainer: L.Trainer) -> None:
    """Several nodes need a launcher that starts the processes on every node: torchrun, srun (or another cluster
    Lightning knows), or MASTER_ADDR and NODE_RANK set by hand on each node. Without one, Lightning takes the
    machine for node 0 and its first rank waits, silently, for nodes that never join (30 minutes, then a timeout
    error); this says so before anything is written."""
    by_hand = {"MASTER_ADDR", "NODE_RANK"} <= os.environ.keys()
    env = getattr(trainer.strategy, "cluster_environment", None)  # the launcher Lightning found, if any
    if trainer.num_nodes > 1 and isinstance(env, LightningEnvironment) and not by_hand:
        raise ConfigError(
            f"train.num_nodes={trainer.num_nodes}, but nothing launched this run on several nodes: start it on every "
            f"node with torchrun (--nnodes {trainer.num_nodes} --node-rank R --master-addr HOST) or srun, or set "
            f"MASTER_ADDR, MASTER_PORT and NODE_RANK there (docs/speed.md, \"Several nodes\"); without one, this "
            f"process would wait for nodes that never join")


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
