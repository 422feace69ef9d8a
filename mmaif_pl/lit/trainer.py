"""A Lightning Trainer whose refusals of its settings are one-line ConfigErrors, not tracebacks."""
from __future__ import annotations

from ..errors import ConfigError


def checked_trainer(settings: str, **kwargs):
    """`L.Trainer(**kwargs)`; a ValueError or MisconfigurationException from Lightning's checks (an unknown
    accelerator, a strategy the device cannot run, ...) becomes a ConfigError that names `settings`, the config
    keys behind the arguments. Building a Trainer writes nothing, so a caller can build it before its first write."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (ValueError, MisconfigurationException) as exc:
        raise ConfigError(f"Lightning refused the run's settings ({settings}): {exc}") from exc
