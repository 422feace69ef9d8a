"""Rectified-flow math: the linear path, time samplers, the SD3 time shift and the Euler sampler.

Convention (DESIGN.md §4, as facebookresearch/flow_matching): t = 0 is noise, t = 1 is data,

    z_t = (1 - t) * noise + t * z,        target velocity  u = dz_t/dt = z - noise.

diffusers' flow schedulers run the other way (sigma = 1 - t, v_diffusers = -v); none is used here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class PathSample:
    z_t: torch.Tensor
    velocity: torch.Tensor  # the regression target of the flow model
    t: torch.Tensor


class LinearPath:
    """z_t = (1 - t) x0 + t x1 with x0 = noise and x1 = data; u_t = x1 - x0 (CondOT path)."""

    def sample(self, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> PathSample:
        tt = _expand(t, x1)
        return PathSample(z_t=(1 - tt) * noise + tt * x1, velocity=x1 - noise, t=t)

    @staticmethod
    def clean_estimate(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One-step data estimate  x1_hat = z_t + (1 - t) v  (exact when v is the true velocity)."""
        return z_t + (1 - _expand(t, z_t)) * v

    @staticmethod
    def velocity_from_data(x1: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
        """u = (x1 - z_t) / (1 - t), the velocity that reaches x1 from z_t (x-prediction, as JiT).

        1 - t is clamped at `eps` so the data end stays finite; below t = 1 - eps it is exact."""
        return (x1 - z_t) / (1 - _expand(t, z_t)).clamp_min(eps)


class UniformTime:
    """t ~ U(0, 1)."""

    def __call__(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.rand(n, generator=generator)


class LogitNormalTime:
    """t = sigmoid(m + s * e), e ~ N(0, 1) (SD3). m > 0 favours the data end in this convention."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std

    def __call__(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator))


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shift written for t = 1 - sigma:  sigma' = s sigma / (1 + (s - 1) sigma).

    shift > 1 moves the schedule towards the noise end (more, smaller steps where the image forms);
    shift = 1 is the identity; t = 0 and t = 1 are fixed points.
    """
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


def euler_times(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return time_shift(torch.linspace(0.0, 1.0, steps + 1, device=device), shift)


@torch.no_grad()
def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
) -> torch.Tensor:
    """Integrate dz/dt = v(z, t) from t = 0 (noise) to t = 1 with `steps` Euler steps:

        z_{i+1} = z_i + (t_{i+1} - t_i) v(z_i, t_i).
    """
    ts = euler_times(steps, shift, device=noise.device)
    z = noise
    for t0, t1 in zip(ts[:-1], ts[1:]):
        z = z + (t1 - t0) * velocity(z, t0.expand(z.shape[0]))
    return z


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Density of the logit-normal law (for tests and plots)."""
    logit = torch.log(t / (1 - t))
    return torch.exp(-((logit - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
