"""The super-resolution stage of a cascade (Ho et al. 2021): 32 px base images -> 64 px.

The SR model is the project's U-Net (``models.unet``) with six input channels
(the noisy high-resolution image and the bicubic-upsampled low-resolution
image), a second timestep-like input (the conditioning-augmentation level)
and, by default, no text and no attention: fully convolutional, so it trains
on crops of the high-resolution images and samples whole images.

The diffusion math lives in the core (``diffusion.py``: ``downsample_box``,
``upsample_bicubic``, ``augment_low_res``, ``LowResConditioned``, ``upscale``);
this module holds what is specific to training and using the stage:

* ``sr_training_batch`` / ``sr_training_loss``: the training loop's batch, as
  crops paired with their low-resolution counterparts, with augmentation;
* ``write_sr_samples``: the periodic sample grid (low res, bicubic, SR, truth);
* ``upscale_images``: upscale uint8 images with a stored SR model (its defaults, cached): the
  app's "Upscale to 64 px"; ``upscale_generation``: the CLI's second stage (``sample --upscale sr64``);
  ``trace_upscale_image``: the Learn tab's step-by-step view of the second stage.

Train one with ``python diffusion.py train --preset sr64`` (see training.py).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import diffusion as D

SR_MODEL_TYPE = "sr"


@dataclass
class SRBatch:
    """One SR training batch: high-resolution targets and the network's conditioning."""

    x0: torch.Tensor  # (B, 3, c, c) high-resolution crops in [-1, 1]
    low_res_up: torch.Tensor  # (B, 3, c, c) the augmented, upsampled low-resolution crops
    bicubic: torch.Tensor  # (B, 3, c, c) the same crops before augmentation (a residual model's reference)
    aug_t: torch.Tensor  # (B,) long: the augmentation timestep of each example


def random_crops(images: Sequence[torch.Tensor] | torch.Tensor, crop: int,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The same random ``crop`` x ``crop`` window of each image in every tensor (one window per example).

    ``images``: tensors of one shape (B, C, H, W). ``crop`` 0 or >= H keeps the whole images.
    """
    tensors = [images] if isinstance(images, torch.Tensor) else list(images)
    b, _, h, w = tensors[0].shape
    if crop <= 0 or (crop >= h and crop >= w):
        return tensors
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    device = generator.device if generator is not None else tensors[0].device
    oy = torch.randint(0, h - crop + 1, (b,), generator=generator, device=device).tolist()
    ox = torch.randint(0, w - crop + 1, (b,), generator=generator, device=device).tolist()
    return [torch.stack([t[i, :, y:y + crop, x:x + crop] for i, (y, x) in enumerate(zip(oy, ox))]) for t in tensors]


def sr_training_batch(x_high: torch.Tensor, terms: D.DiffusionTerms, *, crop: int, aug_max: float,
                      scale: int = 2, generator: torch.Generator | None = None) -> SRBatch:
    """From high-resolution images (B, 3, H, W) in [-1, 1]: the SR model's training batch.

    The low-resolution image is the whole image shrunk ``scale`` times (``downsample_box``, as
    preprocess.py makes 32 px data from 64 px images) and upsampled back (``upsample_bicubic``);
    then both are cropped at the same random window, so a 32 px crop of a 64 px image is paired
    with its 16 px counterpart, upsampled, exactly as whole images are paired at sampling time.
    Conditioning augmentation: the upsampled crop is noised to a timestep drawn uniformly from
    ``[0, aug_timestep(aug_max)]``, and that timestep is the network's ``aug_level`` input.
    """
    size = x_high.shape[-1]
    low_up = D.upsample_bicubic(D.downsample_box(x_high, scale), size)
    x0, bicubic = random_crops([x_high.float(), low_up], crop, generator)
    b = x0.shape[0]
    device = x0.device
    max_t = D.aug_timestep(aug_max, terms.num_train_timesteps)
    gen_device = generator.device if generator is not None else device
    aug_t = torch.randint(0, max_t + 1, (b,), generator=generator, device=gen_device).to(device)
    noise = torch.randn(bicubic.shape, generator=generator, device=gen_device).to(device)
    return SRBatch(x0, D.augment_low_res(terms, bicubic, aug_t, noise), bicubic, aug_t)


def sr_training_loss(
    model: Callable[..., torch.Tensor],
    terms: D.DiffusionTerms,
    x_high: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    crop: int,
    aug_max: float,
    prediction_type: str,
    drop_cond: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
    residual: bool = False,
) -> torch.Tensor:
    """``diffusion.training_loss`` on an SR batch: the network sees ``[x_t, low_res_up]`` and ``aug_t``;
    with ``residual`` the clean image is ``x - bicubic`` (what ``upscale`` adds the bicubic image back to)."""
    batch = sr_training_batch(x_high, terms, crop=crop, aug_max=aug_max, generator=generator)
    x0, low = batch.x0 - batch.bicubic if residual else batch.x0, batch.low_res_up
    if channels_last:
        x0, low = x0.contiguous(memory_format=torch.channels_last), low.contiguous(memory_format=torch.channels_last)
    net = D.LowResConditioned(model, low, batch.aug_t)
    return D.training_loss(net, terms, x0, cond, prediction_type=prediction_type, drop_cond=drop_cond,
                           min_snr_gamma=min_snr_gamma, t=t, generator=generator)


# --------------------------------------------------------------------------- periodic samples in training
def write_sr_samples(run_dir: Path, ema: torch.nn.Module, diffusion: D.DiffusionConfig, data_dir: str, step: int,
                     device: torch.device, *, n: int = 8, steps: int = D.SR_DEFAULT_STEPS,
                     aug_level: float = D.SR_DEFAULT_AUG_LEVEL) -> Path:
    """A grid of held-out images: rows low res (nearest), bicubic, SR (EMA weights), truth."""
    import plot_func
    from data import PreprocessedDataset

    try:
        data = PreprocessedDataset(data_dir, split="val")
    except FileNotFoundError:
        data = PreprocessedDataset(data_dir, split="train")
    truth = np.asarray(data.images[: min(n, len(data))])
    rows = comparison_rows(ema, diffusion, truth, steps=steps, aug_level=aug_level, device=device)
    out = Path(run_dir) / "samples" / f"grid_{step:07d}.png"
    plot_func.sample_grid(np.concatenate(rows), nrow=len(truth), path=out)
    return out


def comparison_rows(sr_model: torch.nn.Module, diffusion: D.DiffusionConfig, truth: np.ndarray, *,
                    steps: int = D.SR_DEFAULT_STEPS, aug_level: float = D.SR_DEFAULT_AUG_LEVEL, seed: int = 0,
                    device: torch.device | str = "cpu") -> list[np.ndarray]:
    """For uint8 high-resolution images: [low res shown nearest, bicubic, SR, truth], each (N, H, W, 3)."""
    hi = D.images_to_tensor(truth, device)
    low = D.downsample_box(hi)
    size = hi.shape[-1]
    nearest = F.interpolate(low, size=(size, size), mode="nearest")
    sr = D.upscale(sr_model, diffusion, low, steps=steps, aug_level=aug_level, seed=seed, device=device)
    return [D.to_uint8(nearest), D.to_uint8(D.upsample_bicubic(low, size)), sr.images, np.asarray(truth)]


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
    from model_store import CONFIG_FILE, load_sr_model, resolve_model_path

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
                   frame_every: int | None = None, callback: D.StepCallback | None = None) -> D.UpscaleResult:
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
    steps = int(steps if steps is not None else defaults.get("steps", D.SR_DEFAULT_STEPS))
    aug_level = float(aug_level if aug_level is not None else defaults.get("aug_level", D.SR_DEFAULT_AUG_LEVEL))
    return steps, aug_level


def trace_upscale_image(image: np.ndarray, upscaler: str = "sr64", *, seed: int = 0, store: str | None = None,
                        device: str = "cpu", cond: np.ndarray | None = None,
                        callback: D.StepCallback | None = None) -> D.StepTrace:
    """The Learn tab's second stage: ``diffusion.trace_upscale`` of one uint8 (h, w, 3) image with the
    stored SR model ``upscaler`` at its default settings (the same image ``upscale_images`` makes)."""
    sr = load_upscaler(upscaler, store=store, device=device)
    steps, aug_level = sr_settings(sr)
    if sr.model.config.cond_dim == 0:
        cond = None
    return D.trace_upscale(sr.model, sr.diffusion, image, seed=seed, steps=steps, aug_level=aug_level, cond=cond,
                           device=device, callback=callback)


def upscale_generation(result: D.GenerationResult, upscaler: str, *, store: str | None = None,
                       steps: int | None = None, aug_level: float | None = None, device: str = "cpu",
                       precision: str = "fp32", return_frames: bool = False,
                       encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                       callback: D.StepCallback | None = None) -> CascadeStage:
    """Upscale ``generate_images``' output with the SR model ``upscaler`` (a store name or folder).

    Image i keeps its seed (``result.seeds[i]``) in the second stage (``upscale_images``); with
    ``return_frames`` the frames are both stages' (the first stage's shown by pixel repetition).
    """
    seeds = result.seeds
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError("upscale_generation expects consecutive seeds (image i = seed + i)")
    cond = None
    if load_upscaler(upscaler, store=store, device=device).model.config.cond_dim > 0:
        from prompting import encode_weighted

        if encode_fn is None:
            from models.text_encoder import encode_prompts as encode_fn
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
