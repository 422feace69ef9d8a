"""Fusion metrics as torchmetrics `Metric`s: `update(fused, a, b, target=None)` with Bx3xHxW tensors in [0, 1],
`compute()` -> the mean over images. States are a sum and a count (summed across processes under DDP).

The maths is in `functional.py` (one function per metric, formula in its docstring); the channel and the
conventions in `profiles.py`. `fusion_metrics(profile, with_reference)` builds the whole collection.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torchmetrics import Metric, MetricCollection

from . import functional as FM
from .profiles import MetricProfile, get_profile

Tensor = torch.Tensor


class FusionMetric(Metric):
    """Mean over images of a per-image fusion score. Subclasses define `score_planes` on 0-255 planes."""

    is_differentiable = False
    full_state_update = False
    higher_is_better: Optional[bool] = True
    needs_target = False

    def __init__(self, profile: str | MetricProfile = "default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.profile = get_profile(profile)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def score_planes(self, f: Tensor, a: Tensor, b: Tensor, t: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, fused: Tensor, a: Tensor, b: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """One value per image (shape B); NaN where the metric is undefined (e.g. VIF below 41x41)."""
        if fused.shape != a.shape or fused.shape != b.shape:
            raise ValueError(f"fused {tuple(fused.shape)}, a {tuple(a.shape)} and b {tuple(b.shape)} differ in shape")
        if self.needs_target:
            if target is None:
                raise ValueError(f"{type(self).__name__} needs a target (ground truth) image")
            if target.shape != fused.shape:
                raise ValueError(f"target {tuple(target.shape)} and fused {tuple(fused.shape)} differ in shape")
        p = self.profile
        planes_t = p.planes(target) if (self.needs_target and target is not None) else None
        return self.score_from_planes(p.planes(fused), p.planes(a), p.planes(b), planes_t)

    @torch.no_grad()
    def score_from_planes(self, f: Tensor, a: Tensor, b: Tensor, t: Optional[Tensor] = None) -> Tensor:
        """Like `score`, from the profile's planes (`profile.planes(img)`), so several metrics can share them."""
        values = self.score_planes(f, a, b, t)
        return values.view(-1, self.profile.channels).mean(1)

    def update(self, fused: Tensor, a: Tensor, b: Tensor, target: Optional[Tensor] = None) -> None:
        values = self.score(fused, a, b, target)
        finite = torch.isfinite(values)
        self.total += values[finite].sum().to(self.total)
        self.count += finite.sum().to(self.count)

    def compute(self) -> Tensor:
        return self.total / self.count


def _metric(name: str, fn: Callable[[MetricProfile, Tensor, Tensor, Tensor, Optional[Tensor]], Tensor],
            doc: str, higher_is_better: bool = True, needs_target: bool = False) -> type:
    cls = type(name, (FusionMetric,), {
        "__doc__": doc,
        "higher_is_better": higher_is_better,
        "needs_target": needs_target,
        "score_planes": lambda self, f, a, b, t: fn(self.profile, f, a, b, t),
    })
    cls.__module__ = __name__
    return cls


SKIMAGE_FLOAT_SSIM = dict(data_range=2.0, window="uniform", win_size=7, sample_covariance=True)


def _ssim_kwargs(p: MetricProfile) -> dict:
    # skimage structural_similarity on float arrays with its defaults infers data_range 2 (dtype range -1..1)
    return SKIMAGE_FLOAT_SSIM if p.ssim_window == "skimage_float" else {}


def _fusion_ssim(p: MetricProfile, f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return FM.fusion_ssim(f, a, b, p.ssim_reduce, **_ssim_kwargs(p))


def _reference_ssim(p: MetricProfile, f: Tensor, t: Tensor) -> Tensor:
    return FM.ssim(f, t, **_ssim_kwargs(p))


Entropy = _metric("Entropy", lambda p, f, a, b, t: FM.entropy(f), "EN of F, bits.")
StandardDeviation = _metric("StandardDeviation", lambda p, f, a, b, t: FM.standard_deviation(f), "SD of F.")
SpatialFrequency = _metric("SpatialFrequency", lambda p, f, a, b, t: FM.spatial_frequency(f, p.sf_normalization), "SF of F.")
AverageGradient = _metric("AverageGradient", lambda p, f, a, b, t: FM.average_gradient(f, p.ag_normalization), "AG of F.")
MutualInformation = _metric(
    "MutualInformation", lambda p, f, a, b, t: FM.fusion_mutual_information(f, a, b, p.mi_base), "MI(A,F) + MI(B,F).")
SumOfCorrelationsOfDifferences = _metric(
    "SumOfCorrelationsOfDifferences", lambda p, f, a, b, t: FM.sum_of_correlations_of_differences(f, a, b), "SCD.")
CorrelationCoefficient = _metric(
    "CorrelationCoefficient", lambda p, f, a, b, t: FM.correlation_coefficient(f, a, b), "CC = (r(A,F) + r(B,F)) / 2.")
Qabf = _metric("Qabf", lambda p, f, a, b, t: FM.qabf(f, a, b), "Xydeas-Petrovic edge preservation.")
Nabf = _metric("Nabf", lambda p, f, a, b, t: FM.nabf(f, a, b), "Fusion artifacts (lower is better).", higher_is_better=False)
FusionVIF = _metric("FusionVIF", lambda p, f, a, b, t: FM.fusion_vif(f, a, b), "vifp(A,F) + vifp(B,F).")
FusionSSIM = _metric("FusionSSIM", lambda p, f, a, b, t: _fusion_ssim(p, f, a, b), "SSIM of F to both sources.")
MEFSSIM = _metric("MEFSSIM", lambda p, f, a, b, t: FM.mef_ssim(f, a, b), "MEF-SSIM (Ma et al. 2015), 3 scales.")
Qcb = _metric("Qcb", lambda p, f, a, b, t: FM.qcb(f, a, b), "Chen-Blum perceptual quality.")
ReferencePSNR = _metric("ReferencePSNR", lambda p, f, a, b, t: FM.psnr(f, t), "PSNR of F to the ground truth, dB.",
                        needs_target=True)
ReferenceSSIM = _metric("ReferenceSSIM", lambda p, f, a, b, t: _reference_ssim(p, f, t), "SSIM of F to the ground truth.",
                        needs_target=True)

NO_REFERENCE = {
    "EN": Entropy,
    "SD": StandardDeviation,
    "SF": SpatialFrequency,
    "AG": AverageGradient,
    "MI": MutualInformation,
    "SCD": SumOfCorrelationsOfDifferences,
    "CC": CorrelationCoefficient,
    "Qabf": Qabf,
    "Nabf": Nabf,
    "VIF": FusionVIF,
    "SSIM": FusionSSIM,
    "MEF_SSIM": MEFSSIM,
    "Qcb": Qcb,
}
WITH_REFERENCE = {"PSNR": ReferencePSNR, "SSIM_gt": ReferenceSSIM}
LOWER_IS_BETTER = {"Nabf"}


def metric_names(with_reference: bool = False) -> list[str]:
    return list(NO_REFERENCE) + (list(WITH_REFERENCE) if with_reference else [])


def fusion_metrics(profile: str | MetricProfile = "default", with_reference: bool = False,
                   names: Optional[list[str]] = None, **metric_kwargs) -> MetricCollection:
    """All fusion metrics (plus PSNR and SSIM to the ground truth when `with_reference`) under one profile.

    `names` picks a subset; `metric_kwargs` go to each metric (torchmetrics' `sync_on_compute`, ...).
    compute_groups is off: torchmetrics would merge metrics whose states happen to be equal after the first
    batch, and these metrics share no state.
    """
    table = {**NO_REFERENCE, **(WITH_REFERENCE if with_reference else {})}
    known = {**NO_REFERENCE, **WITH_REFERENCE}  # `names` may pick a reference metric without `with_reference`
    chosen = names if names is not None else list(table)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {metric_names(True)}")
    prof = get_profile(profile)
    return MetricCollection({n: known[n](profile=prof, **metric_kwargs) for n in chosen}, compute_groups=False)


@torch.no_grad()
def score_images(fused: Tensor, a: Tensor, b: Tensor, target: Optional[Tensor] = None,
                 profile: str | MetricProfile = "default") -> dict[str, Tensor]:
    """Per-image values of every metric (PSNR/SSIM_gt when a target is given): name -> tensor of shape B."""
    prof = get_profile(profile)
    collection = fusion_metrics(prof, with_reference=target is not None)
    fa, aa, ba = prof.planes(fused), prof.planes(a), prof.planes(b)
    ta = prof.planes(target) if target is not None else None
    if not (fa.shape == aa.shape == ba.shape) or (ta is not None and ta.shape != fa.shape):
        raise ValueError("fused, a, b (and target) must have the same shape")
    return {name: m.score_from_planes(fa, aa, ba, ta) for name, m in collection.items()}
