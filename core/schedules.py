"""Noise schedules and the diffusion process's constants.

Conventions (those of diffusers' schedulers, so the names are familiar):
``num_train_timesteps`` T, integer timesteps ``t`` in ``[0, T)``,
``beta_schedule`` in {"linear", "cosine" (= diffusers' "squaredcos_cap_v2"),
"sigmoid"}, ``prediction_type`` in {"epsilon", "v_prediction"},
``timestep_spacing`` in {"linspace", "leading", "trailing"}. Images live in [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


# --------------------------------------------------------------------------- schedules
def linear_beta_schedule(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """DDPM's linear betas (diffusers ``beta_schedule="linear"``), float64."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def cosine_beta_schedule(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (diffusers ``"squaredcos_cap_v2"``), float64.

    ``alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2``; betas are capped at
    ``max_beta`` so the last step does not divide by zero.
    """
    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def sigmoid_beta_schedule(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """diffusers' ``"sigmoid"`` betas: a sigmoid over [-6, 6] rescaled to [beta_start, beta_end]."""
    x = torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


@dataclass(frozen=True)
class DiffusionTerms:
    """Every per-timestep quantity the loss and samplers need (float64, shape (T,))."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x_0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]


def precompute_diffusion_terms(betas: torch.Tensor) -> DiffusionTerms:
    """Derive alpha-bar, its square roots, and the posterior q(x_{t-1} | x_t, x_0)."""
    betas = betas.to(torch.float64)
    if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
        raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return DiffusionTerms(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        log_one_minus_alphas_cumprod=torch.log(1.0 - ac),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
        posterior_variance=post_var,
        # The variance is 0 at t=0: take log of the t=1 value there (as DDPM does).
        posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    )


@dataclass(frozen=True)
class DiffusionConfig:
    """The process a model was trained with (stored in every checkpoint's JSON)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be at least 2")

    def betas(self) -> torch.Tensor:
        if self.beta_schedule == "linear":
            return linear_beta_schedule(self.num_train_timesteps, self.beta_start, self.beta_end)
        if self.beta_schedule == "sigmoid":
            return sigmoid_beta_schedule(self.num_train_timesteps, self.beta_start, self.beta_end)
        return cosine_beta_schedule(self.num_train_timesteps)

    def terms(self) -> DiffusionTerms:
        return precompute_diffusion_terms(self.betas())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown diffusion config keys: {sorted(unknown)}")
        return cls(**d)


def at_t(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast against ``like`` (its dtype/device)."""
    out = values.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def log_snr(diffusion: DiffusionConfig) -> np.ndarray:
    """log(alpha-bar / (1 - alpha-bar)) at every timestep t = 0..T-1 (float64)."""
    ab = diffusion.terms().alphas_cumprod.double().numpy()
    return np.log(ab) - np.log1p(-ab)
