#!/usr/bin/env python3
"""The diffusion core: noise schedules, forward noising, the training loss and
the samplers (DDPM, DDIM, DPM-Solver++), plus ``generate_images``, the one
entry point the app, the CLI and training use to make pictures.

Run as a script it is the command line: ``python diffusion.py`` trains,
``python diffusion.py sample ...`` samples (see ``--help``).

Conventions (those of diffusers' schedulers, so the names are familiar):
``num_train_timesteps`` T, integer timesteps ``t`` in ``[0, T)``,
``beta_schedule`` in {"linear", "cosine" (= diffusers' "squaredcos_cap_v2"),
"sigmoid"}, ``prediction_type`` in {"epsilon", "v_prediction"},
``timestep_spacing`` in {"linspace", "leading", "trailing"}. Images live in
[-1, 1].
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SAMPLERS = ("ddpm", "ddim", "dpm++")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
PRECISIONS = ("auto", "bf16", "fp32")


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


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast against ``like`` (its dtype/device)."""
    out = values.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# --------------------------------------------------------------------------- forward process and loss
def q_sample(terms: DiffusionTerms, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)`` with the given noise."""
    return _at(terms.sqrt_alphas_cumprod, t, x0) * x0 + _at(terms.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def velocity(terms: DiffusionTerms, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``v = sqrt(ab) eps - sqrt(1 - ab) x_0`` (Salimans & Ho)."""
    return _at(terms.sqrt_alphas_cumprod, t, x0) * noise - _at(terms.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def predict_x0_eps(
    terms: DiffusionTerms, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the network's output (epsilon or v) into the pair ``(x_0, epsilon)``."""
    a = _at(terms.sqrt_alphas_cumprod, t, x_t)
    s = _at(terms.sqrt_one_minus_alphas_cumprod, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def eps_from_x0(terms: DiffusionTerms, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The noise consistent with ``x_t`` and a (possibly clipped) ``x_0``."""
    return (x_t - _at(terms.sqrt_alphas_cumprod, t, x_t) * x0) / _at(terms.sqrt_one_minus_alphas_cumprod, t, x_t)


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


def training_loss(
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
    """Mean squared error of the network's epsilon / v prediction at random t.

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
    return per_sample.mean()


# --------------------------------------------------------------------------- sampling helpers
@dataclass
class StepInfo:
    """What a sampler reports after each step (for previews, GIF frames, progress)."""

    step: int  # 0-based index of the finished step
    num_steps: int
    timestep: int  # the model's timestep at this step
    x: torch.Tensor  # the sample after the step
    x0_pred: torch.Tensor  # the model's current estimate of the clean image


StepCallback = Callable[[StepInfo], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_like_batch(shape: Sequence[int], generator: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise on ``device``, drawn on each generator's own device.

    With one generator per image, each image's noise depends only on its own
    seed, so image i is the same whatever the batch; with CPU generators (what
    ``generate_images`` uses) it is also the same on a CPU and on a GPU.
    """
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]).to(device)


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> list[int]:
    """The model timesteps a reduced-step sampler visits, in decreasing order.

    Same definitions as diffusers: ``linspace`` = round(linspace(0, T-1, n)),
    ``leading`` = arange(n) * (T // n), ``trailing`` = round(arange(T, 0, -T/n)) - 1.
    ``trailing`` starts at t = T-1, where the model sees (almost) pure noise,
    which is why it is our default (Lin et al. 2024).
    """
    T = num_train_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, num_steps).round()
    elif spacing == "leading":
        ts = np.arange(num_steps) * (T // num_steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
        ts = np.sort(ts)
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return [int(v) for v in ts[::-1]]


def noise_level(terms: DiffusionTerms, t: int) -> float:
    """EDM's sigma at timestep t: ``sqrt((1 - ab) / ab)``, the noise-to-signal ratio (schedule-independent)."""
    ab = float(terms.alphas_cumprod[t])
    return math.sqrt((1.0 - ab) / ab)


NO_INTERVAL = ("", "none")  # guidance interval spellings for "guide at every step"


def parse_guidance_interval(text: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``"0.28,2.9"`` (or a pair) -> ``(0.28, 2.9)``: the sigma band where guidance applies.

    None, "" and "none" mean guidance at every step ("none" overrides a model's default band)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in NO_INTERVAL):
        return None
    if isinstance(text, str):  # "LO,HI", or "LO-HI" as recipes store it (a '-' after e/E is an exponent's sign)
        parts = text.split(",") if "," in text else re.split(r"(?<![eE])-", text)
        parts = [p for p in parts if p.strip()]
    else:
        parts = list(text)
    try:
        lo, hi = (float(v) for v in parts)
    except (ValueError, TypeError):
        raise ValueError(f"guidance interval must be two noise levels 'LO,HI' (EDM sigma), got {text!r}") from None
    if not (0 <= lo < hi) or not math.isfinite(lo):
        raise ValueError(f"guidance interval needs 0 <= LO < HI, got {lo}, {hi}")
    return lo, hi


class GuidedDenoiser:
    """Calls the network with classifier-free guidance and returns ``(x_0, eps)``.

    The conditional and null branches run as one batched forward. Guidance 1.0
    needs no null branch, so it costs a single plain conditional forward.
    ``guidance_interval`` (LO, HI) applies guidance only where the noise level
    sigma(t) is in (LO, HI] (Kynkaanniemi et al. 2024, "Applying guidance in a
    limited interval"): at high noise guidance mostly costs diversity, at low
    noise it does little; outside the band a step costs one forward, not two.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        terms: DiffusionTerms,
        cond: torch.Tensor,
        prediction_type: str,
        guidance_scale: float = 1.0,
        clip_denoised: bool = True,
        guidance_interval: tuple[float, float] | None = None,
    ):
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        self.model, self.terms, self.cond = model, terms, cond
        self.prediction_type, self.guidance_scale, self.clip_denoised = prediction_type, guidance_scale, clip_denoised
        self.guidance_interval = guidance_interval

    def guided_at(self, t: int) -> bool:
        """Whether step t runs classifier-free guidance (both branches)."""
        if self.guidance_scale == 1.0:
            return False
        if self.guidance_interval is None:
            return True
        lo, hi = self.guidance_interval
        return lo < noise_level(self.terms, t) <= hi

    def model_output(self, x: torch.Tensor, t: int) -> torch.Tensor:
        b = x.shape[0]
        if not self.guided_at(t):
            ts = torch.full((b,), t, device=x.device, dtype=torch.long)
            return self.model(x, ts, self.cond, None).float()
        ts = torch.full((2 * b,), t, device=x.device, dtype=torch.long)
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = self.model(torch.cat([x, x]), ts, torch.cat([self.cond, self.cond]), drop).float()
        cond_out, null_out = out.chunk(2)
        return null_out + self.guidance_scale * (cond_out - null_out)

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = predict_x0_eps(self.terms, x, tt, self.model_output(x, t), self.prediction_type)
        if self.clip_denoised:
            # Keep x_0 in the data range and make eps agree with it (guided-diffusion).
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(self.terms, x, tt, x0)
        return x0, eps


def _report(callback: StepCallback | None, i: int, n: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(StepInfo(step=i, num_steps=n, timestep=t, x=x, x0_pred=x0))


# --------------------------------------------------------------------------- samplers
@torch.no_grad()
def ddpm_sample(
    denoise: GuidedDenoiser,
    x: torch.Tensor,
    *,
    num_steps: int | None = None,
    timestep_spacing: str = "leading",
    generator: Generators = None,
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Ancestral sampling: x_{s} ~ q(x_s | x_t, x_0 = model's x_0).

    With ``num_steps=None`` it visits all T timesteps (the DDPM paper's
    sampler, with the posterior variance, diffusers' "fixed_small"); fewer
    steps use the same posterior between the visited timesteps. An explicit
    decreasing ``timesteps`` list (e.g. the tail of one, to start from a
    partly noised image) replaces ``num_steps`` and ``timestep_spacing``.
    """
    terms = denoise.terms
    T = terms.num_train_timesteps
    timesteps = list(timesteps) if timesteps is not None else make_timesteps(T, num_steps or T, timestep_spacing)
    ac = terms.alphas_cumprod
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x0, _ = denoise(x, t)
        ab_t = ac[t].item()
        ab_prev = ac[prev].item() if prev >= 0 else 1.0
        beta = 1.0 - ab_t / ab_prev  # the effective beta of the jump t -> prev
        coef_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab_t)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
        mean = coef_x0 * x0 + coef_xt * x
        if prev >= 0:
            var = max((1.0 - ab_prev) / (1.0 - ab_t) * beta, 1e-20)
            x = mean + math.sqrt(var) * randn_like_batch(x.shape, generator, x.device)
        else:
            x = mean
        _report(callback, i, len(timesteps), t, x, x0)
    return x


@torch.no_grad()
def ddim_sample(
    denoise: GuidedDenoiser,
    x: torch.Tensor,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    timestep_spacing: str = "trailing",
    generator: Generators = None,
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al.): deterministic at ``eta=0``, DDPM-like at ``eta=1``.

    The step after the last visited timestep goes to alpha-bar = 1 (the clean
    image), as diffusers' ``set_alpha_to_one=True``. ``timesteps``: as in ``ddpm_sample``.
    """
    terms = denoise.terms
    timesteps = (list(timesteps) if timesteps is not None
                 else make_timesteps(terms.num_train_timesteps, num_steps, timestep_spacing))
    ac = terms.alphas_cumprod
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x0, eps = denoise(x, t)
        ab_t = ac[t].item()
        ab_prev = ac[prev].item() if prev >= 0 else 1.0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_like_batch(x.shape, generator, x.device)
        _report(callback, i, len(timesteps), t, x, x0)
    return x


@torch.no_grad()
def dpm_solver_pp_sample(
    denoise: GuidedDenoiser,
    x: torch.Tensor,
    *,
    num_steps: int = 20,
    timestep_spacing: str = "trailing",
    generator: Generators = None,  # unused: the solver is deterministic; kept for a uniform signature
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR,
    on the model's x_0 prediction; first order at the first step and at the
    last (which lands on sigma = 0, the clean image), as diffusers'
    ``DPMSolverMultistepScheduler`` with ``solver_type="midpoint"``.
    ``timesteps``: as in ``ddpm_sample``.
    """
    terms = denoise.terms
    timesteps = (list(timesteps) if timesteps is not None
                 else make_timesteps(terms.num_train_timesteps, num_steps, timestep_spacing))
    ac = terms.alphas_cumprod
    alpha = lambda t: math.sqrt(ac[t].item())  # noqa: E731 - tiny local helpers
    sigma = lambda t: math.sqrt(1 - ac[t].item())  # noqa: E731
    lam = lambda t: math.log(alpha(t)) - math.log(sigma(t))  # noqa: E731 - log-SNR / 2
    x0_prev, t_prev = None, None
    for i, t in enumerate(timesteps):
        x0, _ = denoise(x, t)
        if i + 1 == len(timesteps):
            x_next = x0  # sigma_next = 0: the first-order update returns x_0 exactly
        else:
            s = timesteps[i + 1]
            h = lam(s) - lam(t)
            phi = math.expm1(-h)  # exp(-h) - 1
            d = x0
            if x0_prev is not None:
                r = (lam(t) - lam(t_prev)) / h
                d = x0 + 0.5 * (x0 - x0_prev) / r
            x_next = (sigma(s) / sigma(t)) * x - alpha(s) * phi * d
        x0_prev, t_prev, x = x0, t, x_next
        _report(callback, i, len(timesteps), t, x, x0)
    return x


# --------------------------------------------------------------------------- precision
def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 matrix math natively (so bf16 autocast pays):
    a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(f is not None and f() for f in checks)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the hardware has fast bf16 (``fast_bf16``), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


# --------------------------------------------------------------------------- where sampling starts
def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between noise batches, per image: ``t=0`` is ``a``, ``t=1`` is ``b``.

    Gaussian noise lives near a sphere; a straight line between two draws
    passes inside it (too little noise, washed-out images), the arc does not.
    """
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1, 1))[:, None]
    so = torch.sin(omega)
    nearly_parallel = so.abs() < 1e-6  # the arc is a line there: lerp avoids 0/0
    wa = torch.where(nearly_parallel, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so)
    wb = torch.where(nearly_parallel, torch.full_like(so, t), torch.sin(t * omega) / so)
    return (wa * fa + wb * fb).reshape(a.shape).to(a.dtype)


def starting_noise(
    shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu",
    variation_seed: int | None = None, variation_strength: float = 0.0,
) -> torch.Tensor:
    """x_T for each image: noise from its seed, or (AUTOMATIC1111's variation seeds)
    the slerp from it toward the noise of ``variation_seed + i`` by ``variation_strength``
    (0: the seed's own image, 1: the variation seed's own image)."""
    if not 0.0 <= variation_strength <= 1.0:
        raise ValueError(f"variation strength must be in [0, 1], got {variation_strength}")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]  # CPU: the same noise on every device
    x = randn_like_batch(shape, gens, device)
    if variation_seed is not None and variation_strength > 0:
        var_gens = [torch.Generator().manual_seed(int(variation_seed) + i) for i in range(len(seeds))]
        x = slerp(x, randn_like_batch(shape, var_gens, device), variation_strength)
    return x


def img2img_timesteps(timesteps: Sequence[int], strength: float, num_train_timesteps: int) -> list[int]:
    """The tail of a sampler's timesteps that starts at or below ``t = strength * T`` (SDEdit).

    ``strength`` 1 keeps them all (pure noise: plain generation); 0 keeps none
    (the image comes back unchanged).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    t_start = round(strength * num_train_timesteps) - 1
    return [int(t) for t in timesteps if t <= t_start]


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> float (N, 3, H, W) in [-1, 1] (a tensor passes through)."""
    if isinstance(images, torch.Tensor):
        return images.to(device=device, dtype=torch.float32)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


# --------------------------------------------------------------------------- the one generation entry point
@dataclass
class GenerationResult:
    images: np.ndarray  # (N, H, W, 3) uint8
    seeds: list[int]  # the seed of each image (image i used seed + i)
    prompts: list[str]
    frames: list[np.ndarray]  # each (N, H, W, 3) uint8: x_0 estimates over the run
    frame_timesteps: list[int]  # the model timestep of each frame
    recipe: dict[str, Any]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, C), clamped and rounded."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def resolve_prompts(
    prompts: Sequence[str] | str | None, class_names: Sequence[str] | str | None, num_images: int, template: str
) -> list[str]:
    """Prompts for ``num_images`` images: given prompts (cycled), or class
    names turned into prompts with ``template``. Empty text is an error."""
    from models.text_encoder import class_prompt

    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(class_names, str):
        class_names = [class_names]
    if prompts and class_names:
        raise ValueError("give prompts or class names, not both")
    if class_names:
        texts = [class_prompt(c, template) for c in class_names]
    elif prompts:
        texts = [str(p).strip() for p in prompts]
    else:
        raise ValueError("a prompt or a class name is required")
    if any(not t for t in texts):
        raise ValueError("prompts must not be empty")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    return [texts[i % len(texts)] for i in range(num_images)]


@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    diffusion: DiffusionConfig,
    prompts: Sequence[str] | str | None = None,
    *,
    class_names: Sequence[str] | str | None = None,
    num_images: int = 1,
    sampler: str = "dpm++",
    num_steps: int | None = None,
    guidance_scale: float = 3.0,
    seed: int = 0,
    eta: float = 0.0,
    timestep_spacing: str | None = None,
    image_size: int | None = None,
    encode_fn: Callable[[list[str]], np.ndarray] | None = None,
    prompt_template: str = "a photo of a {}",
    return_frames: bool = False,
    frame_every: int = 1,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    variation_seed: int | None = None,
    variation_strength: float = 0.0,
    init_images: np.ndarray | torch.Tensor | None = None,
    strength: float = 1.0,
    cond: np.ndarray | torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    precision: str = "fp32",
    guidance_interval: tuple[float, float] | None = None,
    seeds: Sequence[int] | None = None,
) -> GenerationResult:
    """Prompts or class names in, uint8 images (and optional denoising frames) out.

    Image ``i`` starts from noise seeded with ``seed + i`` (or ``seeds[i]`` when
    ``seeds`` is given, e.g. one seed for many prompts), so a seed reproduces
    an image exactly, whatever else is in the batch. ``encode_fn`` maps
    prompts to (N, cond_dim) embeddings (default: the MiniLM text encoder);
    prompts may blend texts with weights (``"goldfish:0.7 | coral reef:0.3"``,
    see ``prompting.parse_weighted_prompt``).

    * ``variation_seed`` / ``variation_strength``: slerp each image's noise
      toward that of ``variation_seed + i`` (``starting_noise``).
    * ``init_images`` (uint8 (N, H, W, 3) or a [-1, 1] tensor) with
      ``strength`` s < 1: SDEdit. The images are noised with q(x_t | x_0) to the
      first of the sampler's timesteps at or below t = s T, using the seeds'
      noise, and sampled from there.
    * ``cond`` (N, cond_dim) and ``noise`` (N, C, H, W): explicit conditioning
      and x_T (interpolation uses them); they replace the encoder and the seeds.
    * ``precision``: ``fp32``, ``bf16`` (the network under bf16 autocast; the
      sampler's own arithmetic stays fp32) or ``auto`` (``resolve_precision``).
    * ``guidance_interval``: (LO, HI) in EDM sigma; guidance only there (``GuidedDenoiser``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    texts = resolve_prompts(prompts, class_names, num_images, prompt_template)
    if encode_fn is None:
        from models.text_encoder import encode_prompts as encode_fn
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = image_size or model.config.image_size
    defaults = {"ddpm": (diffusion.num_train_timesteps, "leading"), "ddim": (50, "trailing"), "dpm++": (20, "trailing")}
    num_steps = defaults[sampler][0] if num_steps is None else int(num_steps)
    spacing = timestep_spacing or defaults[sampler][1]
    make_timesteps(diffusion.num_train_timesteps, num_steps, spacing)  # validates before any work
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    precision = resolve_precision(precision, device)

    if cond is None:
        from prompting import encode_weighted

        cond = encode_weighted(texts, encode_fn)
    cond = torch.as_tensor(np.asarray(cond) if not isinstance(cond, torch.Tensor) else cond,
                           dtype=torch.float32, device=device)
    if cond.shape[0] != num_images:
        raise ValueError(f"cond has {cond.shape[0]} rows for {num_images} images")
    if seeds is None:
        seeds = [int(seed) + i for i in range(num_images)]
    elif len(seeds) != num_images:
        raise ValueError(f"{len(seeds)} seeds for {num_images} images")
    seeds = [int(s) for s in seeds]
    generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU generators: seeds mean the same on a GPU
    shape = (num_images, model.config.in_channels, size, size)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(device=device, dtype=torch.float32)
    else:
        x = starting_noise(shape, seeds, device, variation_seed, variation_strength)
    terms = diffusion.terms()
    timesteps = make_timesteps(diffusion.num_train_timesteps, num_steps, spacing)
    if init_images is not None:
        x0 = images_to_tensor(init_images, device)
        if x0.shape[0] == 1 and num_images > 1:
            x0 = x0.expand(num_images, -1, -1, -1)
        if tuple(x0.shape) != shape:
            raise ValueError(f"init images have shape {tuple(x0.shape)}, expected {shape}: resize them to {size} px")
        timesteps = img2img_timesteps(timesteps, strength, diffusion.num_train_timesteps)
        if strength == 1.0:
            pass  # t = T-1 keeps a trace of x_0 (alpha-bar ~ 1e-9 > 0): strength 1 means "ignore the image", exactly
        elif timesteps:
            t0 = torch.full((num_images,), timesteps[0], device=device, dtype=torch.long)
            x = q_sample(terms, x0, t0, x)
        else:  # strength too low to reach any step: the image comes back unchanged
            x = x0.clone()
    elif strength != 1.0:
        raise ValueError("strength applies to init images only (img2img)")
    guidance_interval = parse_guidance_interval(guidance_interval)
    denoise = GuidedDenoiser(model, terms, cond, diffusion.prediction_type, guidance_scale,
                             guidance_interval=guidance_interval)

    frames: list[np.ndarray] = []
    frame_ts: list[int] = []

    def on_step(info: StepInfo) -> None:
        last = info.step + 1 == info.num_steps
        if return_frames and (info.step % max(1, frame_every) == 0 or last):
            frames.append(to_uint8(info.x0_pred if not last else info.x))
            frame_ts.append(info.timestep)
        if callback is not None:
            callback(info)

    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    try:
        with autocast:
            out = _run_sampler(sampler, denoise, x, timesteps, eta, generators, on_step)
    finally:
        model.train(was_training)
    recipe = {
        "sampler": sampler, "steps": num_steps, "guidance_scale": guidance_scale, "seed": seeds[0] if seeds else int(seed),
        "eta": eta, "timestep_spacing": spacing, "size": size, "precision": precision,
    }
    if variation_seed is not None and variation_strength > 0:
        recipe.update(variation_seed=int(variation_seed), variation_strength=float(variation_strength))
    if init_images is not None:
        recipe["strength"] = float(strength)
    if guidance_interval is not None:
        recipe["guidance_interval"] = f"{guidance_interval[0]:g}-{guidance_interval[1]:g}"
    return GenerationResult(to_uint8(out), seeds, texts, frames, frame_ts, recipe)


def _run_sampler(sampler: str, denoise: GuidedDenoiser, x: torch.Tensor, timesteps: list[int], eta: float,
                 generators: Generators, on_step: StepCallback) -> torch.Tensor:
    if not timesteps:  # img2img at a strength too low to reach any step
        return x
    if sampler == "ddpm":
        return ddpm_sample(denoise, x, timesteps=timesteps, generator=generators, callback=on_step)
    if sampler == "ddim":
        return ddim_sample(denoise, x, eta=eta, timesteps=timesteps, generator=generators, callback=on_step)
    return dpm_solver_pp_sample(denoise, x, timesteps=timesteps, callback=on_step)



# --------------------------------------------------------------------------- super-resolution (a cascade's second stage)
SR_DEFAULT_STEPS = 10
SR_DEFAULT_AUG_LEVEL = 0.05  # sampling-time conditioning augmentation: a small level (Ho et al. 2021)


def downsample_box(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Shrink [-1, 1] images (N, C, H, W) by ``factor`` with a box filter on their uint8 levels,
    rounding half up: exactly PIL's ``Image.reduce``, which preprocess.py uses to halve images, so
    the low-resolution images an SR model is trained on are what a low-resolution model was trained on."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by {factor}")
    levels = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    # the mean of integers over a power-of-two box is exact in float32, so ties round the same way everywhere
    low = torch.floor(F.avg_pool2d(levels, factor) + 0.5)
    return low / 127.5 - 1


def upsample_bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """[-1, 1] images (N, C, h, w) -> (N, C, size, size), bicubic (a = -0.75, as torch), clamped to [-1, 1].

    The SR model's conditioning and the baseline it is measured against."""
    return F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def aug_timestep(level: float, num_train_timesteps: int) -> int:
    """A conditioning-augmentation level in [0, 1] -> the timestep of the diffusion's own schedule
    whose q(z | x) noise is applied to the low-resolution input (and given to the SR model)."""
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"conditioning augmentation level must be in [0, 1], got {level}")
    return int(round(level * (num_train_timesteps - 1)))


def augment_low_res(terms: DiffusionTerms, low_res_up: torch.Tensor, aug_t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation (Ho et al. 2021, Gaussian): ``q(z_s | x_low)``, the forward process of
    the model's own schedule at timestep ``s = aug_t`` applied to the upsampled low-resolution images."""
    return q_sample(terms, low_res_up, aug_t, noise)


class LowResConditioned:
    """An SR network seen through the ``(x_t, t, cond, drop_cond)`` call that ``training_loss`` and
    the samplers make: the (augmented, upsampled) low-resolution images are concatenated to ``x_t``
    as extra channels and the augmentation timestep goes in as ``aug_level``."""

    def __init__(self, model: Callable[..., torch.Tensor], low_res_up: torch.Tensor, aug_t: torch.Tensor):
        self.model, self.low_res_up, self.aug_t = model, low_res_up, aug_t

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                 drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        low = self.low_res_up
        if low.shape[0] != x.shape[0]:  # a guided step runs the batch twice (conditional, null)
            low = low.repeat(x.shape[0] // low.shape[0], 1, 1, 1)
        aug = self.aug_t if self.aug_t.ndim == 0 or self.aug_t.shape[0] == x.shape[0] else self.aug_t.repeat(
            x.shape[0] // self.aug_t.shape[0])
        return self.model(torch.cat([x, low.to(x.dtype)], dim=1), t, cond, drop_cond, aug_level=aug)


@dataclass
class UpscaleResult:
    images: np.ndarray  # (N, H, W, 3) uint8 at the higher resolution
    seeds: list[int]  # the seed of each image (image i used seed + i)
    frames: list[np.ndarray]  # x_0 estimates over the run, each (N, H, W, 3) uint8
    frame_timesteps: list[int]
    recipe: dict[str, Any]  # upscale_steps, upscale_aug (the caller adds the upscaler's name)


@torch.no_grad()
def upscale(
    sr_model: torch.nn.Module,
    diffusion: DiffusionConfig,
    low_res_images: np.ndarray | torch.Tensor,
    *,
    steps: int = SR_DEFAULT_STEPS,
    aug_level: float = SR_DEFAULT_AUG_LEVEL,
    seed: int = 0,
    cond: np.ndarray | torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    scale: int = 2,
    timestep_spacing: str = "trailing",
    return_frames: bool = False,
    frame_every: int = 1,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> UpscaleResult:
    """Super-resolve low-resolution images ``scale`` times with an SR diffusion model (DPM-Solver++).

    ``low_res_images``: uint8 (N, h, w, 3) (e.g. ``generate_images(...).images``) or a [-1, 1]
    tensor (N, 3, h, w). They are upsampled bicubically to ``scale * h``, noised to the
    conditioning-augmentation level ``aug_level`` (``aug_timestep``), and the SR model denoises
    a ``scale * h`` image conditioned on them (with ``config.residual``, it denoises the residual
    to the clean bicubic image, which is added back at the end). Image ``i`` uses the seed ``seed + i`` for both its
    starting noise and its augmentation noise (drawn in that order from one CPU generator), so
    a seed reproduces an image exactly whatever the batch and the device. ``cond`` (N, cond_dim):
    the text embeddings, for an SR model trained with them (``guidance_scale`` applies then).
    """
    config = sr_model.config
    if not getattr(config, "aug_embed", False) or config.in_channels != 2 * config.out_channels:
        raise ValueError("upscale needs a super-resolution network (in_channels = 2 x out_channels, aug_embed)")
    device = torch.device(device) if device is not None else next(sr_model.parameters()).device
    low = images_to_tensor(low_res_images, device)
    n, c, h, w = low.shape
    if c != config.out_channels or h != w:
        raise ValueError(f"low-resolution images must be square with {config.out_channels} channels, got {tuple(low.shape)}")
    size = scale * h
    factor = 2 ** (len(config.channel_mult) - 1)
    if size % factor:
        raise ValueError(f"the upscaled size {size} must be divisible by {factor} for this network")
    timesteps = make_timesteps(diffusion.num_train_timesteps, int(steps), timestep_spacing)
    aug_t = aug_timestep(aug_level, diffusion.num_train_timesteps)
    precision = resolve_precision(precision, device)
    if config.cond_dim > 0:
        if cond is None:
            raise ValueError("this SR model is text-conditioned: pass cond (the prompts' embeddings)")
        cond = torch.as_tensor(np.asarray(cond) if not isinstance(cond, torch.Tensor) else cond,
                               dtype=torch.float32, device=device)
        if cond.shape[0] != n:
            raise ValueError(f"cond has {cond.shape[0]} rows for {n} images")
    else:
        cond = None

    seeds = [int(seed) + i for i in range(n)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # CPU generators: the same on every device
    x = randn_like_batch((n, config.out_channels, size, size), gens, device)
    aug_noise = randn_like_batch((n, config.out_channels, size, size), gens, device)
    terms = diffusion.terms()
    bicubic = upsample_bicubic(low, size)
    low_up = augment_low_res(terms, bicubic, torch.full((n,), aug_t, device=device), aug_noise)
    base = bicubic if getattr(config, "residual", False) else torch.zeros_like(bicubic)
    net = LowResConditioned(sr_model, low_up, torch.tensor(aug_t, device=device))
    denoise = GuidedDenoiser(net, terms, cond, diffusion.prediction_type, guidance_scale if cond is not None else 1.0)

    frames: list[np.ndarray] = []
    frame_ts: list[int] = []

    def on_step(info: StepInfo) -> None:
        last = info.step + 1 == info.num_steps
        if return_frames and (info.step % max(1, frame_every) == 0 or last):
            frames.append(to_uint8(base + (info.x0_pred if not last else info.x)))
            frame_ts.append(info.timestep)
        if callback is not None:
            callback(StepInfo(info.step, info.num_steps, info.timestep, info.x, base + info.x0_pred))

    was_training = sr_model.training
    sr_model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    try:
        with autocast:
            out = dpm_solver_pp_sample(denoise, x, timesteps=timesteps, callback=on_step)
    finally:
        sr_model.train(was_training)
    recipe = {"upscale_steps": int(steps), "upscale_aug": float(aug_level)}
    return UpscaleResult(to_uint8(base + out), seeds, frames, frame_ts, recipe)

# --------------------------------------------------------------------------- studio helpers (the app's Learn,
# img2img preview and interpolation tabs; each is what generate_images does, exposed on its own)
SAMPLER_DEFAULTS = {"ddpm": (None, "leading"), "ddim": (50, "trailing"), "dpm++": (20, "trailing")}  # as generate_images


def sampler_timesteps(diffusion: DiffusionConfig, sampler: str, num_steps: int | None = None,
                      timestep_spacing: str | None = None, strength: float = 1.0) -> list[int]:
    """The model timesteps ``generate_images`` visits for these settings (the SDEdit tail when ``strength`` < 1)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    steps, spacing = SAMPLER_DEFAULTS[sampler]
    steps = diffusion.num_train_timesteps if steps is None else steps
    ts = make_timesteps(diffusion.num_train_timesteps, steps if num_steps is None else int(num_steps),
                        timestep_spacing or spacing)
    return ts if strength == 1.0 else img2img_timesteps(ts, strength, diffusion.num_train_timesteps)


def log_snr(diffusion: DiffusionConfig) -> np.ndarray:
    """log(alpha-bar / (1 - alpha-bar)) at every timestep t = 0..T-1 (float64)."""
    ab = diffusion.terms().alphas_cumprod.double().numpy()
    return np.log(ab) - np.log1p(-ab)


def sdedit_start(
    diffusion: DiffusionConfig, init_images: np.ndarray | torch.Tensor, seeds: Sequence[int], strength: float,
    sampler: str, num_steps: int | None = None, timestep_spacing: str | None = None,
    variation_seed: int | None = None, variation_strength: float = 0.0,
) -> tuple[torch.Tensor, int | None]:
    """The x_t that ``generate_images(init_images=..., strength=...)`` starts sampling from, and its t
    (None when the strength is too low to reach a step: the image itself). Same noise, same t."""
    x0 = images_to_tensor(init_images)
    if x0.shape[0] == 1 and len(seeds) > 1:
        x0 = x0.expand(len(seeds), -1, -1, -1)
    noise = starting_noise(tuple(x0.shape), seeds, "cpu", variation_seed, variation_strength)
    ts = sampler_timesteps(diffusion, sampler, num_steps, timestep_spacing, strength)
    if strength == 1.0:
        return noise, ts[0]
    if not ts:
        return x0.clone(), None
    t0 = torch.full((x0.shape[0],), ts[0], dtype=torch.long)
    return q_sample(diffusion.terms(), x0, t0, noise), ts[0]


def interpolation_inputs(
    cond_a: np.ndarray | torch.Tensor, cond_b: np.ndarray | torch.Tensor, noise_a: torch.Tensor,
    noise_b: torch.Tensor, num_frames: int,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(conds (N, D), noises (N, C, H, W), fractions) for ``num_frames`` frames from a to b.

    Both the starting noise and the text embedding move along the great
    circle (slerp): the noise stays as noisy as a fresh draw, and the unit-norm
    embedding stays where the encoder's embeddings live. Frame 0 is exactly a,
    the last exactly b. Pass them to ``generate_images(cond=..., noise=...)``.
    """
    if num_frames < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got {num_frames}")
    ca = torch.as_tensor(np.asarray(cond_a) if not isinstance(cond_a, torch.Tensor) else cond_a,
                         dtype=torch.float32).reshape(1, -1)
    cb = torch.as_tensor(np.asarray(cond_b) if not isinstance(cond_b, torch.Tensor) else cond_b,
                         dtype=torch.float32).reshape(1, -1)
    na, nb = noise_a.reshape(1, *noise_a.shape[-3:]), noise_b.reshape(1, *noise_b.shape[-3:])
    fractions = [i / (num_frames - 1) for i in range(num_frames)]
    conds = torch.cat([slerp(ca, cb, f) for f in fractions])
    noises = torch.cat([slerp(na, nb, f) for f in fractions])
    return conds, noises, fractions


@dataclass
class StepTrace:
    """One image's denoising, step by step: what the network saw and what it predicted."""

    timesteps: list[int]
    x_t: list[np.ndarray]  # uint8 (H, W, 3): the sample the network was given at each step
    x0: list[np.ndarray]  # uint8: its estimate of the clean image
    eps: list[np.ndarray]  # uint8: its predicted noise (scaled from about [-3, 3] to [0, 255])
    result: "GenerationResult | UpscaleResult"


class _StepRecorder:
    """A sampler callback that keeps x_t (the sample each step starts from), the x_0 estimate and the
    noise they imply (``eps_from_x0``). ``offset``: what the pictures add back (a residual SR model's
    bicubic image); the callback's x_0 estimate already includes it, the samples do not."""

    def __init__(self, terms: DiffusionTerms, start: torch.Tensor, offset: torch.Tensor | float = 0.0,
                 callback: StepCallback | None = None):
        self.terms, self.current, self.offset, self.callback = terms, start, offset, callback
        self.trace = StepTrace([], [], [], [], None)  # result filled in by the caller

    def __call__(self, info: StepInfo) -> None:
        x_t = self.current.float()
        t = torch.full((x_t.shape[0],), info.timestep, dtype=torch.long, device=x_t.device)
        eps = eps_from_x0(self.terms, x_t, t, info.x0_pred.float() - self.offset)
        self.trace.x_t.append(to_uint8(x_t + self.offset)[0])
        self.trace.x0.append(to_uint8(info.x0_pred)[0])
        self.trace.eps.append(to_uint8(eps / 3.0)[0])
        self.trace.timesteps.append(info.timestep)
        self.current = info.x
        if self.callback is not None:
            self.callback(info)


def trace_denoising(model: torch.nn.Module, diffusion: DiffusionConfig, prompt: str, *,
                    callback: StepCallback | None = None, **kw: Any) -> StepTrace:
    """``generate_images`` for one image, recording x_t, the x_0 estimate and the noise the
    network implies (``eps_from_x0``) at every step."""
    seed = int(kw.get("seed", 0))
    device = torch.device(kw.get("device") or next(model.parameters()).device)
    size = kw.get("image_size") or model.config.image_size
    shape = (1, model.config.in_channels, size, size)
    start = kw.pop("noise", None)
    if start is None:
        start = starting_noise(shape, [seed], device, kw.get("variation_seed"), kw.get("variation_strength", 0.0))
    record = _StepRecorder(diffusion.terms(), start.to(device), callback=callback)
    record.trace.result = generate_images(model, diffusion, prompt, num_images=1, noise=start, callback=record, **kw)
    return record.trace


def trace_upscale(sr_model: torch.nn.Module, diffusion: DiffusionConfig, low_res_image: np.ndarray, *,
                  seed: int = 0, callback: StepCallback | None = None, **kw: Any) -> StepTrace:
    """``upscale`` for one uint8 (h, w, 3) image, recorded step by step as ``trace_denoising`` records
    the first stage. A residual SR model denoises the difference to the bicubic image; its x_t and x_0
    rows are shown with the bicubic image added back (what the result is made of), its noise row as is."""
    low = images_to_tensor(np.asarray(low_res_image)[None])
    size = low.shape[-1] * int(kw.get("scale", 2))
    device = torch.device(kw.get("device") or next(sr_model.parameters()).device)
    # upscale's first draw from the image's generator is its starting noise (its documented order)
    start = randn_like_batch((1, sr_model.config.out_channels, size, size), [torch.Generator().manual_seed(seed)],
                             device)
    residual = getattr(sr_model.config, "residual", False)
    offset = upsample_bicubic(low.to(device), size) if residual else 0.0
    record = _StepRecorder(diffusion.terms(), start, offset, callback)
    record.trace.result = upscale(sr_model, diffusion, low, seed=seed, callback=record, **kw)
    return record.trace


def noised_versions(terms: DiffusionTerms, image: np.ndarray | torch.Tensor, timesteps: Sequence[int], *,
                    seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The first image noised to each timestep by q(x_t | x_0), with the same noise at every t (so
    only the schedule differs): a (len(timesteps), C, H, W) batch in [-1, 1]. The forward strips."""
    T = int(terms.alphas_cumprod.shape[0])
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 <= t < T for t in ts):
        raise ValueError(f"timesteps must be in [0, {T})")
    x0 = images_to_tensor(image)[:1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x0s = x0.expand(len(ts), -1, -1, -1)
    return q_sample(terms, x0s, torch.tensor(ts), noise.expand_as(x0s)).to(device)


@torch.no_grad()
def one_step_x0(model: torch.nn.Module, diffusion: DiffusionConfig, image: np.ndarray | torch.Tensor,
                cond: np.ndarray | torch.Tensor, timesteps: Sequence[int], *, guidance_scale: float = 1.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` noised to each t (``noised_versions``) and the model's one-step guess of x_0 from
    each x_t, conditioned on ``cond`` (1, D): two uint8 (len(timesteps), H, W, 3) batches. What
    the forward process destroys, and how much of it the network recovers in one step."""
    device = next(model.parameters()).device
    terms = diffusion.terms()
    xt = noised_versions(terms, image, timesteps, seed=seed, device=device)
    cond = torch.as_tensor(np.asarray(cond) if not isinstance(cond, torch.Tensor) else cond,
                           dtype=torch.float32).reshape(1, -1).to(device)
    denoise = GuidedDenoiser(model, terms, cond, diffusion.prediction_type, guidance_scale)
    was_training = model.training
    model.eval()
    try:  # one t per call: the denoiser takes a single timestep for its whole batch
        guesses = np.concatenate([to_uint8(denoise(xt[i:i + 1], int(t))[0]) for i, t in enumerate(timesteps)])
    finally:
        model.train(was_training)
    return to_uint8(xt), guesses


if __name__ == "__main__":
    from cli import main

    sys.exit(main())
