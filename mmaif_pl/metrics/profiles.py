"""Named metric profiles: the conventions that change the numbers, made explicit (docs/metrics.md).

A profile decides how a Bx3xHxW [0, 1] RGB tensor becomes the 0-255 single-channel planes the metrics see
(channel, rounding), and the choices where reference evaluators disagree (MI log base, SSIM window and
sum-or-mean over the two sources, SF and AG normalisation).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..data.color import BT601  # luma weights; OpenCV's COLOR_*2GRAY, MATLAB rgb2gray to 3 decimals
from ..errors import UserError


@dataclass(frozen=True)
class MetricProfile:
    name: str
    description: str
    channel: str = "y"  # y: BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B | rgb: each channel, then averaged
    quantize: bool = False  # round the 0-255 planes to integers before every metric (8-bit gray files)
    mi_base: float = 2.0  # 2: bits | e: nats
    ssim_reduce: str = "sum"  # sum: SSIM(F,A) + SSIM(F,B) | mean: half of it
    ssim_window: str = "gaussian"  # gaussian 11x11 sigma 1.5, L = 255 | skimage_float: 7x7 box, L = 2, sample cov.
    sf_normalization: str = "differences"  # differences | pixels
    ag_normalization: str = "interior"  # interior: (M-1)(N-1) | pixels: MN

    def conventions(self) -> dict:
        out = asdict(self)
        out["mi_unit"] = "bits" if self.mi_base == 2.0 else ("nats" if self.mi_base == math.e else f"log base {self.mi_base}")
        return out

    def planes(self, img: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> (B*C)xHxW float64 on 0-255 (C = 1 for 'y', 3 for 'rgb')."""
        if img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"expected a Bx3xHxW (or Bx1xHxW) image tensor, got shape {tuple(img.shape)}")
        x = img.to(torch.float64) * 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.channel == "y":
            w = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1)
        elif self.channel == "rgb":
            x = x.reshape(-1, *x.shape[2:])
        else:
            raise ValueError(f"unknown channel convention {self.channel!r}")
        return x.round() if self.quantize else x

    @property
    def channels(self) -> int:
        return 1 if self.channel == "y" else 3


PROFILES: dict[str, MetricProfile] = {
    p.name: p
    for p in (
        MetricProfile(
            name="default",
            description="BT.601 luma, float 0-255, MI in bits, SSIM(F,A)+SSIM(F,B) with the 11x11 Gaussian window "
            "(L=255), SF over the differences, AG over (M-1)(N-1) (VIFB/Tang)",
        ),
        MetricProfile(
            name="cddfuse",
            description="CDDFuse utils/Evaluator.py as run by its test_IVF.py: cv2 gray rounded to integers, MI in "
            "nats (sklearn), skimage SSIM on float input (7x7 box, data_range 2), AG as a mean over MN pixels",
            quantize=True,
            mi_base=math.e,
            ssim_window="skimage_float",
            ag_normalization="pixels",
        ),
        MetricProfile(
            name="rgb",
            description="the default conventions on each RGB channel, averaged over channels (MEFB/MFIFB style for "
            "colour MEF and MFF)",
            channel="rgb",
        ),
    )
}


def get_profile(name: str | MetricProfile) -> MetricProfile:
    if isinstance(name, MetricProfile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown metric profile '{name}'; known profiles: {', '.join(PROFILES)}") from None
