"""The default training loss against its closed form, computed here from the papers' formulas.

The default (``training.loop.make_config("default")``) trains a v-prediction network on the cosine
schedule with Min-SNR-5 weighting. Written out (Nichol & Dhariwal 2021; Salimans & Ho 2022;
Hang et al. 2023), for integer t in [0, T):

    f(u)          = cos((u + s) / (1 + s) * pi / 2) ** 2,   s = 0.008
    beta_i        = min(1 - f((i + 1) / T) / f(i / T), 0.999)
    alpha_bar_t   = prod_{i <= t} (1 - beta_i)
    SNR_t         = alpha_bar_t / (1 - alpha_bar_t)
    x_t           = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    v_t           = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0
    loss_t        = mean((net(x_t, t) - v_t) ** 2) * min(SNR_t, gamma) / (SNR_t + 1)

Everything below is float64 numpy from those lines; only ``per_sample_loss`` is the code's.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.loss import per_sample_loss
from training.loop import make_config

T = 1000
GAMMA = 5.0
TIMESTEPS = [0, 3, 40, 180, 420, 700, 950, 999]  # SNR from ~1e5 down to ~0: both sides of gamma


def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    f = [math.cos((i / num_steps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(num_steps + 1)]
    betas = np.array([min(1 - f[i + 1] / f[i], max_beta) for i in range(num_steps)])
    return np.cumprod(1 - betas)


def fixed_net(x_t: torch.Tensor, t: torch.Tensor, cond, drop=None) -> torch.Tensor:
    """A fixed, t-dependent stand-in for the network (no training needed)."""
    return 0.6 * x_t + 0.2 * torch.sin(x_t * 3) + (t.double() / T).reshape(-1, 1, 1, 1).to(x_t.dtype)


def test_the_defaults_are_the_ones_written_out_above():
    cfg = make_config("default")
    assert (cfg.beta_schedule, cfg.prediction_type, cfg.min_snr_gamma) == ("cosine", "v_prediction", GAMMA)
    assert cfg.diffusion_config().num_train_timesteps == T


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_loss_is_min_snr_weighted_v_mse(dtype):
    cfg = make_config("default")
    terms = cfg.diffusion_config().terms()
    g = torch.Generator().manual_seed(3)
    x0 = (torch.rand(len(TIMESTEPS), 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor(TIMESTEPS)

    got = per_sample_loss(fixed_net, terms, x0.to(dtype), None, prediction_type=cfg.prediction_type,
                          min_snr_gamma=cfg.min_snr_gamma, t=t, noise=eps.to(dtype))

    ab = cosine_alpha_bar(T)[TIMESTEPS].reshape(-1, 1, 1, 1)
    x0_, eps_ = x0.numpy(), eps.numpy()
    x_t = np.sqrt(ab) * x0_ + np.sqrt(1 - ab) * eps_
    v = np.sqrt(ab) * eps_ - np.sqrt(1 - ab) * x0_
    out = fixed_net(torch.from_numpy(x_t), t, None).numpy()
    snr = ab.reshape(-1) / (1 - ab.reshape(-1))
    expected = ((out - v) ** 2).mean(axis=(1, 2, 3)) * np.minimum(snr, GAMMA) / (snr + 1)

    assert snr[0] > GAMMA > snr[-1]  # the clip is active at some t and not at others
    # the code takes the squared error in float32 (out.float()): float32's rounding, no more
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-12)
