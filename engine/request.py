"""One generation request: what the CLI, every app tab and the figures ask the core for.

A ``GenerationRequest`` holds what a user chose; what they left as ``None`` is the model's own
default (its ``sampler_defaults`` and guidance band), else the core's (``core.samplers``), decided
in one place, ``resolve_sampler_settings``.
``generate(lm, request)`` resolves those defaults, the snapping toward the model's classes, the
img2img start and the optional second stage (an upscaler), runs ``core.generate_images`` once,
and returns the images with each image's own recipe: the PNG metadata that regenerates it.
Equal requests give equal pixels by construction, wherever they come from.

    lm = engine.store.load_model("default_model")
    gen = generate(lm, GenerationRequest(class_names=["goldfish"], num_images=4, seed=3))
    gen.images, gen.recipes[0]   # uint8 (4, 32, 32, 3); {"sampler": "dpm++", "steps": 20, "seed": 3, ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from core.autoguidance import check_guide_schedule
from core.generation import GenerationResult, generate_images, resolve_prompts
from core.noise import interpolation_inputs, slerp, starting_noise
from core.prompting import encode_weighted, snap_to_classes
from core.samplers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, check_sampler, default_steps
from core.sampling import StepCallback, parse_guidance_interval
from core.traces import StepTrace, trace_denoising
from engine.class_texts import SnapTargets, snap_targets
from engine.store import LoadedModel, load_model, model_sampler, model_type_of
from engine.upscaling import upscale_generation
from models.text_encoder import class_prompt, encode_prompts

EncodeFn = Callable[[list[str]], np.ndarray]
UNCONDITIONAL = "unconditional"  # "guide with" the model's own null branch: classifier-free guidance


@dataclass
class GenerationRequest:
    """What to generate. ``None`` means "the model's default" (then the core's)."""

    prompts: Sequence[str] | None = None  # free text, cycled over the images (blends: "a:0.7 | b:0.3")
    class_names: Sequence[str] | None = None  # or class names, turned into the model's prompts
    num_images: int = 1
    seed: int = 0  # image i starts from seed + i
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    guidance_interval: str | Sequence[float] | None = None  # None: the model's band; "none": every step
    eta: float = 0.0
    spacing: str | None = None
    precision: str = "auto"
    variation_seed: int | None = None
    variation_strength: float = 0.0
    init_image: np.ndarray | None = None  # uint8 (H, W, 3) or (N, H, W, 3), at the model's size
    init_name: str | None = None  # the init image's file name, recorded in each recipe
    strength: float | None = None  # img2img denoising strength (with init_image; None = 1)
    snap: float = 0.0  # pull the conditioning toward the model's classes by this much
    cond: np.ndarray | torch.Tensor | None = None  # explicit conditioning (N, D): replaces the prompts' encoding
    noise: torch.Tensor | None = None  # explicit starting noise (N, C, H, W): replaces the seeds' noise
    guide: str | None = None  # autoguidance: a weaker model of the store in place of the unconditional branch
    upscale: str | None = None  # an SR model of the store: the cascade's second stage
    upscale_steps: int | None = None
    upscale_aug: float | None = None


@dataclass
class Generation:
    """The images of one request, with what made each of them."""

    images: np.ndarray  # (N, H, W, 3) uint8 (the second stage's when upscaled)
    prompts: list[str]
    seeds: list[int]
    recipes: list[dict[str, Any]]  # one per image: what regenerates it (the PNG's parameters)
    frames: list[np.ndarray] = field(default_factory=list)  # x_0 estimates over the run (both stages)
    frame_timesteps: list[int] = field(default_factory=list)

    @property
    def recipe(self) -> dict[str, Any]:
        """The first image's recipe (what a grid cell or a single image records)."""
        return self.recipes[0]


@dataclass(frozen=True)
class Settings:
    """A request's sampler settings with the model's defaults filled in."""

    sampler: str
    steps: int
    guidance: float
    guidance_interval: tuple[float, float] | None


def resolve_sampler_settings(sampler_defaults: Mapping[str, Any], num_train_timesteps: int,
                             request: GenerationRequest) -> Settings:
    """The one resolver of sampler, steps, guidance and guidance band: what the user gave wins; then
    the model's ``sampler_defaults`` (its steps only for its own sampler, or for any when it names
    none); then the core's (``core.samplers``: ``DEFAULT_SAMPLER``, each sampler's default steps,
    ``DEFAULT_GUIDANCE``). The CLI, every tab of the app (its controls start at this), ``evaluate.py``
    and the training previews (a model without defaults: ``{}``) all decide here."""
    own = model_sampler(sampler_defaults)
    sampler = check_sampler(request.sampler or own or DEFAULT_SAMPLER)
    steps = request.steps
    if steps is None and (own or sampler) == sampler:
        steps = sampler_defaults.get("steps")
    if steps is None:
        steps = default_steps(sampler, num_train_timesteps)
    guidance = request.guidance
    if guidance is None:
        guidance = sampler_defaults.get("guidance_scale", DEFAULT_GUIDANCE)
    interval = sampler_defaults.get("guidance_interval") if request.guidance_interval is None \
        else request.guidance_interval
    return Settings(sampler, int(steps), float(guidance), parse_guidance_interval(interval))  # "none": every step


def resolve_settings(lm: LoadedModel, request: GenerationRequest) -> Settings:
    """``resolve_sampler_settings`` for a loaded model: its ``sampler_defaults`` and its T."""
    return resolve_sampler_settings(lm.sampler_defaults, lm.diffusion.num_train_timesteps, request)


def conditioning(lm: LoadedModel, texts: list[str], snap: float, encode_fn: EncodeFn,
                 targets: SnapTargets | None = None) -> np.ndarray | None:
    """The prompts' embeddings snapped toward the classes the model's training texts (else its class
    prompts) read them as (``engine.class_texts``; blend first, then snap); None when ``snap`` is 0 (the
    core encodes the prompts itself). ``targets``: the model's snap targets when the caller caches them."""
    if snap <= 0:
        return None
    if not 0 < snap <= 1:
        raise ValueError(f"snap strength must be in (0, 1], got {snap}")
    if targets is None:
        targets = snap_targets(lm, encode_fn)
    if targets is None:
        raise ValueError(f"{lm.name} has no classes to snap toward")
    return snap_to_classes(encode_weighted(texts, encode_fn), targets.keys, snap, targets.temperature, targets.values)


def generate(
    lm: LoadedModel,
    request: GenerationRequest,
    *,
    store: str | None = None,
    device: torch.device | str | None = None,
    encode_fn: EncodeFn | None = None,
    snap_to: SnapTargets | None = None,
    return_frames: bool = False,
    callback: StepCallback | None = None,
    load_guide: Callable[[str], LoadedModel] | None = None,
) -> Generation:
    """Run one request on a loaded model (and, with ``request.upscale``, its second stage).

    ``snap_to``: the model's snap targets when the caller caches them (the app; ``snap_targets``).
    ``load_guide``: how to load ``request.guide`` (the app's model cache); default: from ``store``.
    ``callback`` sees every step of both stages; frames are kept every ``steps // 40`` steps."""
    encode_fn = encode_fn or encode_prompts
    settings = resolve_settings(lm, request)
    texts = resolve_prompts(request.prompts, request.class_names, request.num_images, lm.prompt_template)
    cond = request.cond
    if cond is None:
        cond = conditioning(lm, texts, request.snap, encode_fn, snap_to)
    guide = None
    if request.guide:
        guide = (load_guide or (lambda name: load_model(name, store=store, device=device or "cpu")))(request.guide)
        check_guide(lm, guide)
    init = request.init_image
    if init is not None and init.ndim == 3:
        init = init[None]
    res = generate_images(
        lm.model, lm.diffusion, request.prompts, class_names=request.class_names,
        num_images=request.num_images, sampler=settings.sampler, num_steps=settings.steps,
        guidance_scale=settings.guidance, seed=request.seed, eta=request.eta, timestep_spacing=request.spacing,
        encode_fn=encode_fn, prompt_template=lm.prompt_template, return_frames=return_frames,
        frame_every=max(1, settings.steps // 40), callback=callback, device=device,  # <= ~40 frames
        variation_seed=request.variation_seed, variation_strength=request.variation_strength,
        init_images=init, strength=1.0 if request.strength is None else request.strength, cond=cond,
        noise=request.noise, precision=request.precision, guidance_interval=settings.guidance_interval,
        guide_model=guide.model if guide else None, guide_diffusion=guide.diffusion if guide else None)
    gen = Generation(res.images, res.prompts, res.seeds, [], res.frames, res.frame_timesteps)
    stage2: dict[str, Any] = {}
    if request.upscale:  # the same seeds and precision in the second stage
        up = upscale_generation(res, request.upscale, store=store, steps=request.upscale_steps,
                                aug_level=request.upscale_aug, device=device or "cpu",
                                precision=res.recipe["precision"], return_frames=return_frames,
                                encode_fn=encode_fn, callback=callback)
        gen.images, gen.frames, gen.frame_timesteps, stage2 = up.images, up.frames, up.frame_timesteps, up.recipe
    gen.recipes = image_recipes(res, lm.name, request, stage2)
    return gen


def trace(lm: LoadedModel, request: GenerationRequest, *, device: torch.device | str | None = None,
          encode_fn: EncodeFn | None = None, callback: StepCallback | None = None) -> StepTrace:
    """The request's first image step by step (``core.traces.trace_denoising``: x_t, the x_0 estimate and
    the predicted noise at each step), sampled with the settings ``generate`` resolves for it: the same
    pixels as ``generate``'s first image. A trace takes prompts or class names, the seed, variation and
    sampler settings; an init image, snapping, explicit inputs, a guide or an upscaler are refused."""
    if (request.init_image is not None or request.snap or request.cond is not None or request.noise is not None
            or request.guide or request.upscale):
        raise ValueError("a trace takes prompts, seeds and sampler settings only (no init image, snap, explicit "
                         "inputs, guide or upscaler)")
    settings = resolve_settings(lm, request)
    return trace_denoising(
        lm.model, lm.diffusion, request.prompts, class_names=request.class_names, callback=callback,
        sampler=settings.sampler, num_steps=settings.steps, guidance_scale=settings.guidance, seed=request.seed,
        eta=request.eta, timestep_spacing=request.spacing, encode_fn=encode_fn or encode_prompts,
        prompt_template=lm.prompt_template, device=device, variation_seed=request.variation_seed,
        variation_strength=request.variation_strength, precision=request.precision,
        guidance_interval=settings.guidance_interval)


def check_guide(lm: LoadedModel, guide: LoadedModel) -> None:
    """A guide for autoguidance: a base model that makes images of the same size on the same schedule."""
    if model_type_of(guide.config) != "base":
        raise ValueError(f"{guide.name} is a super-resolution model; a guide is a base model of the store")
    if guide.image_size != lm.image_size:
        raise ValueError(f"the guide {guide.name} makes {guide.image_size} px images; {lm.name} makes "
                         f"{lm.image_size} px")
    check_guide_schedule(lm.diffusion, guide.diffusion)


def image_recipes(res: GenerationResult, model_name: str, request: GenerationRequest,
                  stage2: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each image's recipe: the run's settings with its own seed (and variation seed), the model,
    the init image's name, the snap and the second stage's settings."""
    recipes = []
    for i, seed in enumerate(res.seeds):
        r = dict(res.recipe, seed=seed, model=model_name, **(stage2 or {}))
        if "variation_seed" in r:
            r["variation_seed"] += i  # image i's variation noise came from variation_seed + i
        if request.init_image is not None and request.init_name:
            r["init_image"] = request.init_name
        if request.snap > 0:
            r["snap"] = float(request.snap)
        if request.guide:
            r["guide"] = request.guide
        recipes.append(r)
    return recipes


def interpolation(lm: LoadedModel, prompt_a: str, prompt_b: str, seed_a: int, seed_b: int, frames: int,
                  encode_fn: EncodeFn | None = None) -> tuple[GenerationRequest, list[float]]:
    """A request for ``frames`` images from (prompt a, seed a) to (prompt b, seed b): the starting noise
    and the text embedding both slerped (``core.noise.interpolation_inputs``); and the fractions."""
    cond = encode_weighted([prompt_a, prompt_b], encode_fn or encode_prompts)
    shape = (1, lm.model.config.in_channels, lm.image_size, lm.image_size)
    conds, noises, fractions = interpolation_inputs(cond[0], cond[1], starting_noise(shape, [seed_a]),
                                                    starting_noise(shape, [seed_b]), frames)
    labels = [f"{prompt_a} -> {prompt_b} at {f:.2f}" for f in fractions]
    return GenerationRequest(prompts=labels, num_images=frames, seed=seed_a, cond=conds, noise=noises), fractions


def interpolation_at(lm: LoadedModel, prompt_a: str, prompt_b: str, seed_a: int, seed_b: int, position: float,
                     encode_fn: EncodeFn | None = None) -> GenerationRequest:
    """A request for the one image at ``position`` in [0, 1] on the way from (prompt a, seed a) to
    (prompt b, seed b): the frame ``interpolation`` would make at that fraction (Live's position slider)."""
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    cond = encode_weighted([prompt_a, prompt_b], encode_fn or encode_prompts)
    shape = (1, lm.model.config.in_channels, lm.image_size, lm.image_size)
    ca, cb = (torch.as_tensor(c, dtype=torch.float32).reshape(1, -1) for c in cond)
    return GenerationRequest(prompts=[f"{prompt_a} -> {prompt_b} at {position:.2f}"], num_images=1, seed=seed_a,
                             cond=slerp(ca, cb, position),
                             noise=slerp(starting_noise(shape, [seed_a]), starting_noise(shape, [seed_b]), position))

