"""Pictures of the diffusion process: forward-noising strips, denoising frames, GIFs and strips,
and the one-step guess of x_0 under each noised image.

Frame labels state the real model timestep. These draw what they are given (the sampler's
frames, the model's guesses); only the forward strip computes anything, q(x_t | x_0) itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from core.pixels import to_uint8
from core.schedules import DiffusionConfig
from core.traces import noised_versions
from drawing.pictures import ImageBatch, as_uint8, labelled, sample_grid, save, stack, upscale, write_gif


def forward_diffusion_strip(
    image: ImageBatch,
    timesteps: Sequence[int] = (0, 100, 250, 500, 750, 999),
    *,
    beta_schedule: str = "cosine",
    num_train_timesteps: int = 1000,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    min_side: int = 96,
) -> np.ndarray:
    """One image noised to each timestep by q(x_t | x_0), side by side, labelled ``t=...``.

    The same noise is used at every t, so the strip shows only the schedule.
    """
    terms = DiffusionConfig(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule).terms()
    xt = noised_versions(terms, as_uint8(image)[:1], timesteps, seed=seed)
    ts = [int(t) for t in timesteps]
    frames = [labelled(f, f"t={t}", min_side) for f, t in zip(to_uint8(xt), ts)]
    out = np.asarray(stack(frames, horizontal=True))
    save(out, path)
    return out


def denoising_frames(frames: Sequence[ImageBatch], timesteps: Sequence[int], nrow: int | None = None,
                     min_side: int = 0) -> list[np.ndarray]:
    """Each step's batch as one labelled grid (``t=...``, the real model timestep),
    scaled up (nearest neighbour, whole factors) until its short side is at least ``min_side``."""
    if len(frames) != len(timesteps):
        raise ValueError(f"{len(frames)} frames but {len(timesteps)} timesteps")
    out = []
    for batch, t in zip(frames, timesteps):
        grid = sample_grid(batch, nrow, padding=1)
        out.append(np.asarray(labelled(grid, f"t={int(t)}", min_side=max(min_side, grid.shape[0]))))
    return out


def denoising_gif(
    frames: Sequence[ImageBatch],
    timesteps: Sequence[int],
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    fps: float = 8.0,
    hold_last: float = 1.5,
    min_side: int = 0,
) -> Path:
    """Write the denoising process as a looping GIF (the final image held ``hold_last`` s)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pictures = denoising_frames(frames, timesteps, nrow, min_side)
    if not pictures:
        raise ValueError("no frames to write")
    durations = [1000.0 / fps] * len(pictures)
    durations[-1] = hold_last * 1000.0
    return write_gif(path, pictures, durations)


def denoising_strip(
    frames: Sequence[ImageBatch],
    timesteps: Sequence[int],
    *,
    max_frames: int = 8,
    max_images: int = 4,
    path: str | os.PathLike | None = None,
    min_side: int = 64,
) -> np.ndarray:
    """Intermediate steps as a table: one row per image (at most ``max_images``),
    one column per chosen step (``max_frames`` spread evenly, always the first
    and the last), each column labelled with its real model timestep."""
    if len(frames) != len(timesteps):
        raise ValueError(f"{len(frames)} frames but {len(timesteps)} timesteps")
    if not frames:
        raise ValueError("no frames")
    n = len(frames)
    k = max(1, min(int(max_frames), n))
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]
    batches = [as_uint8(frames[i])[:max(1, int(max_images))] for i in picks]
    columns = []
    for i, batch in zip(picks, batches):
        col = stack([upscale(Image.fromarray(img), min_side) for img in batch], horizontal=False)
        columns.append(labelled(np.asarray(col), f"t={int(timesteps[i])}", min_side=min_side))
    out = np.asarray(stack(columns, horizontal=True))
    save(out, path)
    return out


@torch.no_grad()
def forward_and_prediction_strip(
    noisy: ImageBatch,
    guesses: ImageBatch,
    timesteps: Sequence[int],
    *,
    path: str | os.PathLike | None = None,
    min_side: int = 96,
) -> np.ndarray:
    """Top row: an image noised to each t (``noisy``); bottom row: the model's one-step guess of
    x_0 from each x_t (``guesses``), as ``diffusion.one_step_x0`` returns them.

    Shows what the forward process destroys and how much of it the model can
    recover in one step: the picture behind "predict the clean image".
    """
    noisy, guesses = as_uint8(noisy), as_uint8(guesses)
    ts = [int(t) for t in timesteps]
    if not len(noisy) == len(guesses) == len(ts):
        raise ValueError(f"{len(noisy)} noisy images, {len(guesses)} guesses and {len(ts)} timesteps")
    top = stack([labelled(f, f"x_t, t={t}", min_side) for f, t in zip(noisy, ts)], horizontal=True)
    bottom = stack([labelled(f, "guess of x_0", min_side) for f in guesses], horizontal=True)
    out = np.asarray(stack([top, bottom], horizontal=False))
    save(out, path)
    return out
