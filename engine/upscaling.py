"""A cascade's second stage at generation time: upscale images or a whole generation with a
stored super-resolution model (its sampler defaults, loaded once and cached).

* ``upscale_images``: the app's "Upscale 2x"; ``upscale_generation``: the CLI's and the Generate
  tab's second stage (``sample --upscale sr64``); ``trace_upscale_image``: the Learn tab's view.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import core as D
from core.cascade import SR_DEFAULT_AUG_LEVEL, SR_DEFAULT_STEPS, UpscaleResult
from core.generation import GenerationResult
from core.prompting import encode_weighted
from core.sampling import StepCallback
from core.traces import StepTrace, trace_upscale
from engine.store import CONFIG_FILE, load_sr_model, resolve_model_path
from models.text_encoder import encode_prompts


# --------------------------------------------------------------------------- the CLI's second stage
@dataclass
class CascadeStage:
    """What the second stage changes in a generation's output."""

    images: np.ndarray
    recipe: dict[str, Any]  # upscaler, upscale_steps, upscale_aug: added to each PNG's recipe
    frames: list[np.ndarray] = field(default_factory=list)  # both stages, at the high resolution
    frame_timesteps: list[int] = field(default_factory=list)


def load_upscaler(name: str = "sr64", *, store: str | None = None, device: str = "cpu") -> Any:
    """The SR model ``name`` (a ``model_store.LoadedModel``), loaded once per folder and device
    (and again when its config.json changes: a re-exported model replaces the cached one)."""

    folder = resolve_model_path(name, store)
    key = (str(folder.resolve()), (folder / CONFIG_FILE).stat().st_mtime_ns, str(device))
    with _CACHE_LOCK:
        if key not in _UPSCALERS:
            _UPSCALERS[key] = load_sr_model(name, store=store, device=device)
        return _UPSCALERS[key]


_UPSCALERS: dict[tuple[str, int, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def upscale_images(images: np.ndarray, upscaler: str = "sr64", *, seed: int = 0, store: str | None = None,
                   steps: int | None = None, aug_level: float | None = None, device: str = "cpu",
                   precision: str = "fp32", cond: np.ndarray | None = None, return_frames: bool = False,
                   frame_every: int | None = None, callback: StepCallback | None = None) -> UpscaleResult:
    """Upscale uint8 (N, h, w, 3) images 2x with the stored SR model ``upscaler`` (image i: seed + i).

    The app's "Upscale to 64 px" (a fresh result or a gallery image with its recipe's seed): settings
    not given come from the SR model's ``sampler_defaults`` (``steps``, ``aug_level``), else the core's
    defaults (10 DPM-Solver++ steps, level 0.05); the result's ``recipe`` gains ``upscaler``.
    """
    sr = load_upscaler(upscaler, store=store, device=device)
    steps, aug_level = sr_settings(sr, steps, aug_level)
    up = D.upscale(sr.model, sr.diffusion, images, steps=steps, aug_level=aug_level, seed=seed, cond=cond,
                   device=device, precision=precision, return_frames=return_frames,
                   frame_every=frame_every or max(1, steps // 20), callback=callback)
    up.recipe = dict(upscaler=sr.name, **up.recipe)
    return up


def sr_settings(sr: Any, steps: int | None = None, aug_level: float | None = None) -> tuple[int, float]:
    """(steps, aug_level): those given, else the SR model's ``sampler_defaults``, else the core's defaults."""
    defaults = sr.sampler_defaults
    steps = int(steps if steps is not None else defaults.get("steps", SR_DEFAULT_STEPS))
    aug_level = float(aug_level if aug_level is not None else defaults.get("aug_level", SR_DEFAULT_AUG_LEVEL))
    return steps, aug_level


def trace_upscale_image(image: np.ndarray, upscaler: str = "sr64", *, seed: int = 0, store: str | None = None,
                        device: str = "cpu", cond: np.ndarray | None = None,
                        callback: StepCallback | None = None) -> StepTrace:
    """The Learn tab's second stage: ``diffusion.trace_upscale`` of one uint8 (h, w, 3) image with the
    stored SR model ``upscaler`` at its default settings (the same image ``upscale_images`` makes)."""
    sr = load_upscaler(upscaler, store=store, device=device)
    steps, aug_level = sr_settings(sr)
    if sr.model.config.cond_dim == 0:
        cond = None
    return trace_upscale(sr.model, sr.diffusion, image, seed=seed, steps=steps, aug_level=aug_level, cond=cond,
                           device=device, callback=callback)


def upscale_generation(result: GenerationResult, upscaler: str, *, store: str | None = None,
                       steps: int | None = None, aug_level: float | None = None, device: str = "cpu",
                       precision: str = "fp32", return_frames: bool = False,
                       encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                       callback: StepCallback | None = None) -> CascadeStage:
    """Upscale ``generate_images``' output with the SR model ``upscaler`` (a store name or folder).

    Image i keeps its seed (``result.seeds[i]``) in the second stage (``upscale_images``); with
    ``return_frames`` the frames are both stages' (the first stage's shown by pixel repetition).
    """
    seeds = result.seeds
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError("upscale_generation expects consecutive seeds (image i = seed + i)")
    cond = None
    if load_upscaler(upscaler, store=store, device=device).model.config.cond_dim > 0:
        if encode_fn is None:
            encode_fn = encode_prompts
        cond = encode_weighted(result.prompts, encode_fn)
    up = upscale_images(result.images, upscaler, seed=seeds[0], store=store, steps=steps, aug_level=aug_level,
                        device=device, precision=precision, cond=cond, return_frames=return_frames,
                        callback=callback)
    frames, frame_ts = [], []
    if return_frames:
        size = up.images.shape[1]
        frames = [nearest_resize(f, size) for f in result.frames] + up.frames
        frame_ts = list(result.frame_timesteps) + up.frame_timesteps
    return CascadeStage(up.images, up.recipe, frames, frame_ts)


def nearest_resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, h, w, C) -> (N, size, size, C) by pixel repetition (a preview frame, not a result)."""
    h = images.shape[1]
    if size % h:
        raise ValueError(f"{size} is not a multiple of {h}")
    k = size // h
    return np.repeat(np.repeat(images, k, axis=1), k, axis=2)
