"""Samplers (DDPM, DDIM, DPM-Solver++, consistency) and what they share: the timestep table, the
guided denoiser (classifier-free guidance with an optional guidance interval), step reports, and
the registry ``run_sampler`` dispatches through.

``core.samplers.SAMPLER_DEFAULTS`` is the one table of each sampler's default steps and spacing:
the CLI, the app and ``evaluate.py`` read it (``default_steps``). ``SAMPLER_REGISTRY`` pairs each of
its names with the function that runs it, and refuses at import a name with no runner."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from core.guidance import APGSettings, ProjectedGuidance
from core.loss import eps_from_x0, predict_x0_eps
from core.samplers import SAMPLER_DEFAULTS, SamplerSpec, check_sampler, default_steps
from core.schedules import TIMESTEP_SPACINGS, DiffusionConfig, DiffusionTerms


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


def folds_guidance(model: object) -> bool:
    """Whether ``model`` is a few-step student: the guidance scale is one of its inputs (``core.distill``)."""
    return bool(getattr(getattr(model, "config", None), "guidance_embed", False))


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
        apg: APGSettings | None = None,
    ):
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        self.model, self.terms, self.cond = model, terms, cond
        self.prediction_type, self.guidance_scale, self.clip_denoised = prediction_type, guidance_scale, clip_denoised
        self.guidance_interval = guidance_interval
        # adaptive projected guidance (core.guidance) in place of plain CFG at the guided steps
        self.projected = ProjectedGuidance(apg) if apg is not None else None
        # a few-step student takes the guidance scale as an input: one forward, no null branch
        self.folded = folds_guidance(model)

    def guided_at(self, t: int) -> bool:
        """Whether step t runs classifier-free guidance (both branches)."""
        if self.guidance_scale == 1.0 or self.folded:
            return False
        if self.guidance_interval is None:
            return True
        lo, hi = self.guidance_interval
        return lo < noise_level(self.terms, t) <= hi

    def model_output(self, x: torch.Tensor, t: int) -> torch.Tensor:
        b = x.shape[0]
        if self.folded:
            ts = torch.full((b,), t, device=x.device, dtype=torch.long)
            w = torch.full((b,), float(self.guidance_scale), device=x.device)
            return self.model(x, ts, self.cond, None, guidance=w).float()
        if not self.guided_at(t):
            ts = torch.full((b,), t, device=x.device, dtype=torch.long)
            return self.model(x, ts, self.cond, None).float()
        ts = torch.full((2 * b,), t, device=x.device, dtype=torch.long)
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = self.model(torch.cat([x, x]), ts, torch.cat([self.cond, self.cond]), drop).float()
        cond_out, null_out = out.chunk(2)
        return null_out + self.guidance_scale * (cond_out - null_out)

    def _projected_x0(self, x: torch.Tensor, t: int, tt: torch.Tensor) -> torch.Tensor:
        """APG's x_0 at a guided step: both branches in one forward, combined in x_0 space."""
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = self.model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([self.cond, self.cond]), drop).float()
        x0_cond, x0_null = (predict_x0_eps(self.terms, x, tt, o, self.prediction_type)[0] for o in out.chunk(2))
        return self.projected(x0_cond, x0_null, self.guidance_scale)

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if self.projected is not None and self.guided_at(t):
            x0 = self._projected_x0(x, t, tt)
            if self.clip_denoised:
                x0 = x0.clamp(-1, 1)
            return x0, eps_from_x0(self.terms, x, tt, x0)
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

@torch.no_grad()
def consistency_sample(
    denoise: GuidedDenoiser,
    x: torch.Tensor,
    *,
    num_steps: int = 4,
    timestep_spacing: str = "trailing",
    generator: Generators = None,
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023; diffusers' ``LCMScheduler``): at each step take
    the model's clean estimate, then noise it afresh to the next step's level with q(x_s | x_0); the last
    step returns the estimate. For students that map any x_t to the end of its path (``core.distill``).
    ``timesteps``: as in ``ddpm_sample``."""
    terms = denoise.terms
    timesteps = (list(timesteps) if timesteps is not None
                 else make_timesteps(terms.num_train_timesteps, num_steps, timestep_spacing))
    ac = terms.alphas_cumprod
    for i, t in enumerate(timesteps):
        x0, _ = denoise(x, t)
        if i + 1 == len(timesteps):
            x = x0
        else:
            ab = ac[timesteps[i + 1]].item()
            x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * randn_like_batch(x.shape, generator, x.device)
        _report(callback, i, len(timesteps), t, x, x0)
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


# --------------------------------------------------------------------------- the registry
# A runner takes the sampler's timesteps (decreasing), DDIM's eta and the generators, whatever it uses of them.
SamplerRunner = Callable[[GuidedDenoiser, torch.Tensor, list[int], float, Generators, StepCallback], torch.Tensor]


def _run_ddpm(denoise, x, timesteps, eta, generators, on_step):  # noqa: ARG001 - eta is DDIM's alone
    return ddpm_sample(denoise, x, timesteps=timesteps, generator=generators, callback=on_step)


def _run_ddim(denoise, x, timesteps, eta, generators, on_step):
    return ddim_sample(denoise, x, eta=eta, timesteps=timesteps, generator=generators, callback=on_step)


def _run_dpm_solver_pp(denoise, x, timesteps, eta, generators, on_step):  # noqa: ARG001 - deterministic
    return dpm_solver_pp_sample(denoise, x, timesteps=timesteps, callback=on_step)


def _run_consistency(denoise, x, timesteps, eta, generators, on_step):  # noqa: ARG001
    return consistency_sample(denoise, x, timesteps=timesteps, generator=generators, callback=on_step)


SAMPLER_RUNNERS: dict[str, SamplerRunner] = {
    "ddpm": _run_ddpm, "ddim": _run_ddim, "dpm++": _run_dpm_solver_pp, "lcm": _run_consistency,
}


@dataclass(frozen=True)
class Sampler:
    """One entry of the registry: a sampler's name, what runs it and its defaults."""

    name: str
    run: SamplerRunner
    spec: SamplerSpec


def build_registry(specs: dict[str, SamplerSpec], runners: dict[str, SamplerRunner]) -> dict[str, Sampler]:
    """The registry, keyed by name in the table's order. A sampler in the table without a runner (or a
    runner without a table entry) is an error here, at import, never another sampler run in its place."""
    if set(specs) != set(runners):
        missing, extra = sorted(set(specs) - set(runners)), sorted(set(runners) - set(specs))
        raise RuntimeError(f"the sampler table (core.samplers) and its runners (core.sampling) disagree: "
                           f"no runner for {missing}, no table entry for {extra}")
    return {name: Sampler(name, runners[name], spec) for name, spec in specs.items()}


SAMPLER_REGISTRY = build_registry(SAMPLER_DEFAULTS, SAMPLER_RUNNERS)


def run_sampler(sampler: str, denoise: GuidedDenoiser, x: torch.Tensor, timesteps: list[int], eta: float,
                generators: Generators, on_step: StepCallback) -> torch.Tensor:
    """Run the registry's ``sampler`` over ``timesteps``; an unknown name is a ValueError naming the choices."""
    entry = SAMPLER_REGISTRY[check_sampler(sampler)]
    if not timesteps:  # img2img at a strength too low to reach any step
        return x
    return entry.run(denoise, x, timesteps, eta, generators, on_step)


def sampler_timesteps(diffusion: DiffusionConfig, sampler: str, num_steps: int | None = None,
                      timestep_spacing: str | None = None, strength: float = 1.0) -> list[int]:
    """The model timesteps ``generate_images`` visits for these settings (the SDEdit tail when ``strength`` < 1)."""
    check_sampler(sampler)
    T = diffusion.num_train_timesteps
    ts = make_timesteps(T, default_steps(sampler, T) if num_steps is None else int(num_steps),
                        timestep_spacing or SAMPLER_DEFAULTS[sampler].spacing)
    return ts if strength == 1.0 else img2img_timesteps(ts, strength, diffusion.num_train_timesteps)
