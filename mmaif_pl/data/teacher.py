"""Ground truth for pairs that have none: a pluggable classical fusion rule.

MMAIF trains on the output of a pretrained fusion network run on the *clean* sources. Those networks'
weights are not available offline, so the default teacher is a classical rule per task; a dataset that
ships a `gt/` folder (or a user's own teacher outputs) takes precedence, through the pair record.
Rules take and return HxWx3 float32 images in [0, 1].
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import UserError
from .color import luma


def _two_scale(y: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    base = cv2.GaussianBlur(y, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return base, y - base


def max_base_detail(a: np.ndarray, b: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """VIF: fused luminance = max of the base layers + the larger-magnitude detail; colour from source a.

    The max base keeps warm infrared targets bright in a dark visible scene; max-abs detail keeps the
    texture of whichever source shows it. Chroma comes from the visible source (a) alone.
    """
    ya, yb = luma(a, a.dtype), luma(b, b.dtype)
    base_a, det_a = _two_scale(ya, sigma)
    base_b, det_b = _two_scale(yb, sigma)
    y = np.maximum(base_a, base_b) + np.where(np.abs(det_a) >= np.abs(det_b), det_a, det_b)
    ycc = cv2.cvtColor(a.astype(np.float32), cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = y
    return np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0.0, 1.0)


# The MEF and MFF teachers are the classical baselines' rules (one implementation of each rule).
BASELINE_RULES = ("mertens", "focus", "guided", "laplacian", "average")
RULES = ("max_base_detail",) + BASELINE_RULES
DEFAULT_RULE = {"vif": "max_base_detail", "mef": "mertens", "mff": "focus"}


def fuse(a: np.ndarray, b: np.ndarray, task: str, rule: str = "auto") -> np.ndarray:
    """The teacher's fused image for a clean pair of `task`; `rule="auto"` picks the task's default."""
    name = DEFAULT_RULE.get(task) if rule == "auto" else rule
    if name not in RULES:
        raise UserError(f"unknown teacher rule '{rule}' for task '{task}'; valid: auto, {', '.join(RULES)}")
    a, b = a.astype(np.float32), b.astype(np.float32)
    if name == "max_base_detail":
        return max_base_detail(a, b).astype(np.float32)
    from .. import baselines  # imported here: baselines imports the data package

    return baselines.fuse(a, b, task, name).astype(np.float32)
