"""``generate_images``: prompts or class names in, uint8 images (and denoising frames) out.
The one sampling entry point below the app, the CLI, figures and training."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.autoguidance import AutoGuidedDenoiser, check_guide_schedule
from core.guidance import APGSettings
from core.loss import q_sample
from core.noise import starting_noise
from core.pixels import images_to_tensor, to_uint8
from core.precision import resolve_precision
from core.prompting import encode_weighted
from core.samplers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SAMPLER_DEFAULTS, check_sampler, default_steps
from core.sampling import (
    GuidedDenoiser,
    StepCallback,
    StepInfo,
    folds_guidance,
    img2img_timesteps,
    make_timesteps,
    parse_guidance_interval,
    run_sampler,
)
from core.schedules import DiffusionConfig
from models.text_encoder import class_prompt, encode_prompts


# --------------------------------------------------------------------------- the one generation entry point
@dataclass
class GenerationResult:
    images: np.ndarray  # (N, H, W, 3) uint8
    seeds: list[int]  # the seed of each image (image i used seed + i)
    prompts: list[str]
    frames: list[np.ndarray]  # each (N, H, W, 3) uint8: x_0 estimates over the run
    frame_timesteps: list[int]  # the model timestep of each frame
    recipe: dict[str, Any]


def resolve_prompts(
    prompts: Sequence[str] | str | None, class_names: Sequence[str] | str | None, num_images: int, template: str
) -> list[str]:
    """Prompts for ``num_images`` images: given prompts (cycled), or class
    names turned into prompts with ``template``. Empty text is an error."""

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


# Over 100 lines on purpose: a third is the docstring (every option a caller can pass), the rest one
# straight path (check, encode, noise, SDEdit start, denoiser, sample, recipe) best read in one place.
@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    diffusion: DiffusionConfig,
    prompts: Sequence[str] | str | None = None,
    *,
    class_names: Sequence[str] | str | None = None,
    num_images: int = 1,
    sampler: str = DEFAULT_SAMPLER,
    num_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE,
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
    guide_model: torch.nn.Module | None = None,
    guide_diffusion: DiffusionConfig | None = None,
    apg: APGSettings | None = None,
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
    * A few-step student (``core.distill``) takes ``guidance_scale`` as an input: one forward per step;
      ``guidance_interval`` does not apply to it (it learnt its teacher's).
    * ``guide_model`` (with its ``guide_diffusion``, default the model's): autoguidance, a weaker model
      of the same schedule in place of the unconditional branch (``core.autoguidance``).
    * ``apg``: adaptive projected guidance in place of plain CFG (``core.guidance``); not with ``guide_model``.
    """
    check_sampler(sampler)
    texts = resolve_prompts(prompts, class_names, num_images, prompt_template)
    if encode_fn is None:
        encode_fn = encode_prompts
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = image_size or model.config.image_size
    num_steps = default_steps(sampler, diffusion.num_train_timesteps) if num_steps is None else int(num_steps)
    spacing = timestep_spacing or SAMPLER_DEFAULTS[sampler].spacing
    make_timesteps(diffusion.num_train_timesteps, num_steps, spacing)  # validates before any work
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    precision = resolve_precision(precision, device)

    if cond is None:
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
    x, timesteps = _start_from_images(x, timesteps, init_images, strength, terms, diffusion, shape)
    guidance_interval = parse_guidance_interval(guidance_interval)
    if folds_guidance(model):
        if guide_model is not None:
            raise ValueError("this model is a few-step student with its guidance folded in: it cannot be "
                             "autoguided (guide its teacher instead)")
        guidance_interval = None  # the student learnt its teacher's interval: it has no branches to switch
    if guide_model is None:
        denoise = GuidedDenoiser(model, terms, cond, diffusion.prediction_type, guidance_scale,
                                 guidance_interval=guidance_interval, apg=apg)
    else:
        if apg is not None:
            raise ValueError("adaptive projected guidance (apg) and autoguidance (guide_model) do not combine")
        guide_diffusion = guide_diffusion or diffusion
        check_guide_schedule(diffusion, guide_diffusion)
        denoise = AutoGuidedDenoiser(model, guide_model, terms, cond, diffusion.prediction_type,
                                     guide_diffusion.prediction_type, guidance_scale,
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

    nets = [model] + ([guide_model] if guide_model is not None and guide_model is not model else [])
    was_training = [net.training for net in nets]
    for net in nets:
        net.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    try:
        with autocast:
            out = run_sampler(sampler, denoise, x, timesteps, eta, generators, on_step)
    finally:
        for net, mode in zip(nets, was_training):
            net.train(mode)
    recipe = _recipe(sampler, num_steps, guidance_scale, seeds[0] if seeds else int(seed), eta, spacing, size,
                     precision, variation_seed, variation_strength, strength if init_images is not None else None,
                     guidance_interval)
    return GenerationResult(to_uint8(out), seeds, texts, frames, frame_ts, recipe)


def _start_from_images(x: torch.Tensor, timesteps: list[int], init_images: np.ndarray | torch.Tensor | None,
                       strength: float, terms: Any, diffusion: DiffusionConfig,
                       shape: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """SDEdit's start: the init images noised to the first of the sampler's timesteps at or below
    ``strength * T`` (with the seeds' noise ``x``), and that tail of the timesteps."""
    num_images = shape[0]
    device = x.device
    if init_images is not None:
        x0 = images_to_tensor(init_images, device)
        if x0.shape[0] == 1 and num_images > 1:
            x0 = x0.expand(num_images, -1, -1, -1)
        if tuple(x0.shape) != shape:
            raise ValueError(f"init images have shape {tuple(x0.shape)}, expected {shape}: resize them to {shape[-1]} px")
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
    return x, timesteps


def _recipe(sampler: str, num_steps: int, guidance_scale: float, seed: int, eta: float, spacing: str, size: int,
            precision: str, variation_seed: int | None, variation_strength: float, strength: float | None,
            guidance_interval: tuple[float, float] | None) -> dict[str, Any]:
    """The settings that reproduce a generation (the PNG recipe's core)."""
    recipe = {
        "sampler": sampler, "steps": num_steps, "guidance_scale": guidance_scale, "seed": seed,
        "eta": eta, "timestep_spacing": spacing, "size": size, "precision": precision,
    }
    if variation_seed is not None and variation_strength > 0:
        recipe.update(variation_seed=int(variation_seed), variation_strength=float(variation_strength))
    if strength is not None:
        recipe["strength"] = float(strength)
    if guidance_interval is not None:
        recipe["guidance_interval"] = f"{guidance_interval[0]:g}-{guidance_interval[1]:g}"
    return recipe
