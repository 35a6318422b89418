"""The table of samplers and their defaults, the one place each sampler's name, default steps and
spacing are written, and the defaults a request falls back to (sampler, guidance). The core's
dispatcher (``core.sampling.SAMPLER_REGISTRY`` pairs each name with its runner), the CLI, the app
and ``evaluate.py`` read it. Imports nothing heavy, so the app's input checks can use it without
loading torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler's defaults: the one table the core, the CLI, the app and ``evaluate.py`` read."""

    label: str  # its name in the app
    steps: int | None  # default steps (None: every training timestep, as the DDPM paper samples)
    spacing: str  # default timestep spacing (diffusers' names)
    min_steps: int  # the app's slider range (capped at the model's T)
    max_steps: int
    app_steps: int  # the app's steps on switching to it: DDPM's T steps are a long first wait on a CPU, so 250


# In the order the app lists them: the default first.
SAMPLER_DEFAULTS: dict[str, SamplerSpec] = {
    "dpm++": SamplerSpec("DPM-Solver++", 20, "trailing", 1, 50, 20),
    # from 1 step: a few-step student samples with DDIM in 1-4 (core/distill.py)
    "ddim": SamplerSpec("DDIM", 50, "trailing", 1, 250, 50),
    "ddpm": SamplerSpec("DDPM", None, "leading", 10, 1000, 250),
    # multistep consistency sampling (denoise, re-noise, denoise): what few-step students are made for
    "lcm": SamplerSpec("LCM (few-step students)", 4, "trailing", 1, 8, 4),
}
SAMPLERS = tuple(SAMPLER_DEFAULTS)
DEFAULT_SAMPLER = "dpm++"  # when neither the user nor the model names one
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale when neither the user nor the model names one


def check_sampler(name: object) -> str:
    """``name`` if it is a sampler of the table; else a ValueError that names the choices."""
    if not isinstance(name, str) or name not in SAMPLER_DEFAULTS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return name


def default_steps(sampler: str, num_train_timesteps: int) -> int:
    """A sampler's default number of steps (``SAMPLER_DEFAULTS``) for a model with T timesteps."""
    steps = SAMPLER_DEFAULTS[check_sampler(sampler)].steps
    return num_train_timesteps if steps is None else steps
