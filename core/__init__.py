"""The diffusion core: noise schedules, the forward process and loss, the samplers, generation,
the cascade's super-resolution math and the studio's traces; no app, CLI or store code.

    core.schedules   beta schedules, DiffusionConfig / DiffusionTerms, log_snr
    core.loss        q_sample, the network's parameterisations (epsilon, v), training_loss, per_sample_loss
    core.samplers    the table of samplers, their default steps, the default sampler and guidance (no torch:
                     the app's checks read it)
    core.sampling    timesteps, the guided denoiser, DDPM / DDIM / DPM-Solver++ / consistency, the registry
                     that pairs each sampler of the table with its runner
    core.precision   bf16 autocast where the hardware is fast at it
    core.noise       seeded starting noise, variations, img2img start, interpolation inputs
    core.pixels      uint8 images <-> [-1, 1] tensors
    core.prompting   text conditioning: weighted blends, class texts, snapping, prompt coverage
    core.generation  generate_images: prompts in, images out
    core.cascade     super-resolution math and upscale
    core.traces      step-by-step traces for the Learn tab and the figures

The package re-exports the public names of its modules (``import core; core.generate_images``), lazily
(PEP 562): ``import core.samplers`` stays light, and a name loads its module on first use. Code
inside the package imports from the defining module.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # public name -> the module that defines it
    **dict.fromkeys(
        (
            "BETA_SCHEDULES",
            "PREDICTION_TYPES",
            "TIMESTEP_SPACINGS",
            "linear_beta_schedule",
            "cosine_beta_schedule",
            "sigmoid_beta_schedule",
            "DiffusionTerms",
            "precompute_diffusion_terms",
            "DiffusionConfig",
            "at_t",
            "log_snr",
        ),
        "schedules",
    ),
    **dict.fromkeys(
        (
            "TIMESTEP_SAMPLINGS",
            "q_sample",
            "velocity",
            "predict_x0_eps",
            "eps_from_x0",
            "snr",
            "sample_timesteps",
            "training_loss",
            "per_sample_loss",
        ),
        "loss",
    ),
    **dict.fromkeys(
        (
            "SamplerSpec",
            "SAMPLER_DEFAULTS",
            "SAMPLERS",
            "DEFAULT_SAMPLER",
            "DEFAULT_GUIDANCE",
            "check_sampler",
            "default_steps",
        ),
        "samplers",
    ),
    **dict.fromkeys(
        (
            "StepInfo",
            "StepCallback",
            "Generators",
            "randn_like_batch",
            "make_timesteps",
            "noise_level",
            "NO_INTERVAL",
            "parse_guidance_interval",
            "GuidedDenoiser",
            "ddpm_sample",
            "ddim_sample",
            "dpm_solver_pp_sample",
            "img2img_timesteps",
            "consistency_sample",
            "SamplerRunner",
            "SAMPLER_RUNNERS",
            "Sampler",
            "SAMPLER_REGISTRY",
            "build_registry",
            "run_sampler",
            "sampler_timesteps",
        ),
        "sampling",
    ),
    **dict.fromkeys(
        (
            "PRECISIONS",
            "fast_bf16",
            "resolve_precision",
        ),
        "precision",
    ),
    **dict.fromkeys(
        (
            "slerp",
            "starting_noise",
            "sdedit_start",
            "interpolation_inputs",
        ),
        "noise",
    ),
    **dict.fromkeys(
        (
            "images_to_tensor",
            "to_uint8",
        ),
        "pixels",
    ),
    **dict.fromkeys(
        (
            "GenerationResult",
            "resolve_prompts",
            "generate_images",
        ),
        "generation",
    ),
    **dict.fromkeys(
        (
            "SR_DEFAULT_STEPS",
            "SR_DEFAULT_AUG_LEVEL",
            "downsample_box",
            "upsample_bicubic",
            "aug_timestep",
            "augment_low_res",
            "LowResConditioned",
            "UpscaleResult",
            "upscale",
        ),
        "cascade",
    ),
    **dict.fromkeys(
        (
            "StepTrace",
            "trace_denoising",
            "trace_upscale",
            "noised_versions",
            "one_step_x0",
        ),
        "traces",
    ),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"core.{module}"), name)
    globals()[name] = value  # next time without the lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
