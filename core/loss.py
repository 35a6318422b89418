"""The forward process q(x_t | x_0), the network's parameterisations and the training loss."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from core.schedules import DiffusionTerms, at_t

TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


# --------------------------------------------------------------------------- forward process and loss
def q_sample(terms: DiffusionTerms, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)`` with the given noise."""
    return at_t(terms.sqrt_alphas_cumprod, t, x0) * x0 + at_t(terms.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def velocity(terms: DiffusionTerms, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``v = sqrt(ab) eps - sqrt(1 - ab) x_0`` (Salimans & Ho)."""
    return at_t(terms.sqrt_alphas_cumprod, t, x0) * noise - at_t(terms.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def predict_x0_eps(
    terms: DiffusionTerms, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the network's output (epsilon or v) into the pair ``(x_0, epsilon)``."""
    a = at_t(terms.sqrt_alphas_cumprod, t, x_t)
    s = at_t(terms.sqrt_one_minus_alphas_cumprod, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def eps_from_x0(terms: DiffusionTerms, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The noise consistent with ``x_t`` and a (possibly clipped) ``x_0``."""
    return (x_t - at_t(terms.sqrt_alphas_cumprod, t, x_t) * x0) / at_t(terms.sqrt_one_minus_alphas_cumprod, t, x_t)


def snr(terms: DiffusionTerms, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``ab / (1 - ab)`` at integer timesteps (float32)."""
    ac = terms.alphas_cumprod.to(t.device)[t.long()]
    return (ac / (1 - ac)).float()


def sample_timesteps(
    num_train_timesteps: int,
    batch: int,
    *,
    method: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer training timesteps in ``[0, T)``.

    ``uniform`` draws every t equally often (DDPM). ``logit_normal`` draws
    ``t / T = sigmoid(N(logit_mean, logit_std))`` (Esser et al. 2024): fewer
    draws at the two ends, where x_t is nearly clean or nearly pure noise and
    the network has least to learn, more in the middle where images form.
    """
    if method == "uniform":
        return torch.randint(0, num_train_timesteps, (batch,), device=device, generator=generator)
    if method == "logit_normal":
        z = torch.randn(batch, device=device, generator=generator) * logit_std + logit_mean
        return (torch.sigmoid(z) * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
    raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLINGS}, got {method!r}")


def training_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The batch's mean of ``per_sample_loss`` (same arguments): what training minimises."""
    return per_sample_loss(*args, **kwargs).mean()


def per_sample_loss(
    model: Callable[..., torch.Tensor],
    terms: DiffusionTerms,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    prediction_type: str = "v_prediction",
    drop_cond: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each image's mean squared error of the network's epsilon / v prediction at random t, shape (B,).

    With ``min_snr_gamma`` the per-sample loss is weighted by Min-SNR-gamma
    (Hang et al. 2023), written for the chosen target: ``min(snr, g) / snr``
    for epsilon and ``min(snr, g) / (snr + 1)`` for v. Both equal the x_0-MSE
    weight ``min(snr, g)`` expressed in that target's units.
    """
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, terms.num_train_timesteps, (b,), device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(terms, x0, t, noise)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = velocity(terms, x0, noise, t)
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    out = model(x_t, t, cond, drop_cond)
    per_sample = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=tuple(range(1, x0.ndim)))
    if min_snr_gamma is not None:
        s = snr(terms, t)
        clipped = torch.clamp(s, max=min_snr_gamma)
        weight = clipped / s if prediction_type == "epsilon" else clipped / (s + 1)
        per_sample = per_sample * weight
    return per_sample
