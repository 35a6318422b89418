"""Super-resolution math (a cascade's second stage): box down- and bicubic up-sampling,
conditioning augmentation, the low-res-conditioned network wrapper and ``upscale``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.loss import q_sample
from core.pixels import images_to_tensor, to_uint8
from core.precision import resolve_precision
from core.sampling import (
    GuidedDenoiser,
    StepCallback,
    StepInfo,
    dpm_solver_pp_sample,
    make_timesteps,
    randn_like_batch,
)
from core.schedules import DiffusionConfig, DiffusionTerms

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
