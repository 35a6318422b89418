"""The super-resolution stage of a cascade (Ho et al. 2021): 32 px base images -> 64 px.

The SR model is the project's U-Net (``models.unet``) with six input channels
(the noisy high-resolution image and the bicubic-upsampled low-resolution
image), a second timestep-like input (the conditioning-augmentation level)
and, by default, no text and no attention: fully convolutional, so it trains
on crops of the high-resolution images and samples whole images.

The diffusion math lives in the core (``core.cascade``: ``downsample_box``,
``upsample_bicubic``, ``augment_low_res``, ``LowResConditioned``, ``upscale``);
this module holds what is specific to training the stage (using it is ``engine.upscaling``):
* ``sr_training_batch`` / ``sr_training_loss``: the training loop's batch, as
  crops paired with their low-resolution counterparts, with augmentation;
* ``write_sr_samples``: the periodic sample grid (low res, bicubic, SR, truth).

Train one with ``python diffusion.py train --preset sr64`` (the preset: training/config.py; the task:
training/tasks.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import core as D
import drawing
from core.cascade import (
    SR_DEFAULT_AUG_LEVEL,
    SR_DEFAULT_STEPS,
)
from core.loss import training_loss
from core.pixels import images_to_tensor, to_uint8
from core.schedules import DiffusionConfig, DiffusionTerms
from dataprep.dataset import PreprocessedDataset

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


def sr_training_batch(x_high: torch.Tensor, terms: DiffusionTerms, *, crop: int, aug_max: float,
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
    terms: DiffusionTerms,
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
    return training_loss(net, terms, x0, cond, prediction_type=prediction_type, drop_cond=drop_cond,
                           min_snr_gamma=min_snr_gamma, t=t, generator=generator)


# --------------------------------------------------------------------------- periodic samples in training
def write_sr_samples(run_dir: Path, ema: torch.nn.Module, diffusion: DiffusionConfig, data_dir: str, step: int,
                     device: torch.device, *, n: int = 8, steps: int = SR_DEFAULT_STEPS,
                     aug_level: float = SR_DEFAULT_AUG_LEVEL) -> Path:
    """A grid of held-out images: rows low res (nearest), bicubic, SR (EMA weights), truth."""

    try:
        data = PreprocessedDataset(data_dir, split="val")
    except FileNotFoundError:
        data = PreprocessedDataset(data_dir, split="train")
    truth = np.asarray(data.images[: min(n, len(data))])
    cond = None
    if getattr(getattr(ema, "config", None), "cond_dim", 0):  # a text-conditioned SR model: each image's class text
        cond = data.class_embeddings[torch.as_tensor(np.asarray(data.labels[: len(truth)]), dtype=torch.long)]
    rows = comparison_rows(ema, diffusion, truth, steps=steps, aug_level=aug_level, device=device, cond=cond)
    out = Path(run_dir) / "samples" / f"grid_{step:07d}.png"
    drawing.sample_grid(np.concatenate(rows), nrow=len(truth), path=out)
    return out


def comparison_rows(sr_model: torch.nn.Module, diffusion: DiffusionConfig, truth: np.ndarray, *,
                    steps: int = SR_DEFAULT_STEPS, aug_level: float = SR_DEFAULT_AUG_LEVEL, seed: int = 0,
                    device: torch.device | str = "cpu", cond: torch.Tensor | None = None) -> list[np.ndarray]:
    """For uint8 high-resolution images: [low res shown nearest, bicubic, SR, truth], each (N, H, W, 3);
    ``cond``: the images' text embeddings, for a text-conditioned SR model."""
    hi = images_to_tensor(truth, device)
    low = D.downsample_box(hi)
    size = hi.shape[-1]
    nearest = F.interpolate(low, size=(size, size), mode="nearest")
    sr = D.upscale(sr_model, diffusion, low, steps=steps, aug_level=aug_level, seed=seed, device=device, cond=cond)
    return [to_uint8(nearest), to_uint8(D.upsample_bicubic(low, size)), sr.images, np.asarray(truth)]
