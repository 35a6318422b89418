"""Adaptive projected guidance (APG; Sadat et al. 2024, "Eliminating oversaturation and artifacts of
high guidance scales in diffusion models", arXiv:2410.02416): classifier-free guidance's update,
taken in x_0 space, with its part parallel to the conditional x_0 removed (that part mostly raises
saturation and contrast), its norm capped, and a negative momentum across steps. The same two
network calls per step as plain guidance.

    x0 = x0_cond + (w - 1) * (d_orth + eta * d_par),  d = cap(momentum_avg(x0_cond - x0_null))

With ``eta=1``, no cap and no momentum it is plain classifier-free guidance in x_0 space (which,
for a prediction linear in the network output, is plain CFG)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class APGSettings:
    """APG's three knobs (the paper's defaults for pixel-space models: eta 0, momentum -0.5)."""
    eta: float = 0.0  # weight of the update's part parallel to the conditional x_0 (1 = CFG's)
    norm_threshold: float = 0.0  # cap on the update's per-image L2 norm in x_0 space; 0 = no cap
    momentum: float = -0.5  # running average d_k = diff_k + momentum * d_{k-1}; 0 = none

    def __post_init__(self) -> None:
        if not -1.0 < self.momentum < 1.0:
            raise ValueError(f"APG momentum must be in (-1, 1), got {self.momentum}")
        if self.norm_threshold < 0:
            raise ValueError(f"APG norm_threshold must be >= 0, got {self.norm_threshold}")


class ProjectedGuidance:
    """APG for one sampling run: holds the momentum's running average between steps."""

    def __init__(self, settings: APGSettings):
        self.settings = settings
        self.running: torch.Tensor | None = None

    def __call__(self, x0_cond: torch.Tensor, x0_null: torch.Tensor, scale: float) -> torch.Tensor:
        s = self.settings
        diff = x0_cond - x0_null
        if s.momentum != 0.0:
            self.running = diff if self.running is None else diff + s.momentum * self.running
            diff = self.running
        dims = tuple(range(1, diff.ndim))
        if s.norm_threshold > 0:
            norm = diff.double().flatten(1).norm(dim=1).view(-1, *([1] * (diff.ndim - 1)))
            diff = diff * torch.clamp(s.norm_threshold / norm.clamp_min(1e-12), max=1.0).to(diff.dtype)
        unit = torch.nn.functional.normalize(x0_cond.double().flatten(1), dim=1).view_as(x0_cond)
        parallel = ((diff.double() * unit).sum(dim=dims, keepdim=True) * unit).to(diff.dtype)
        return x0_cond + (scale - 1.0) * (diff - parallel + s.eta * parallel)
