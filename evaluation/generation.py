"""The evaluation's images: ``per_class`` of every class (or prompt), the j-th of each from one seed."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from core.generation import generate_images
from core.guidance import APGSettings


def generate_per_class(lm: Any, sampler: str, steps: int, per_class: int, guidance: float, seed: int,
                       batch_size: int, device: torch.device,
                       encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                       prompts: Sequence[str] | None = None, precision: str = "fp32",
                       guidance_interval: tuple[float, float] | None = None,
                       guide: Any = None, apg: APGSettings | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``per_class`` images of every class prompt (or of each of ``prompts``), the j-th image of
    every prompt from the same seed ``seed + j`` (so the conditioning check can compare classes
    drawn from one noise); returns (images, prompt index of each image, seconds). ``guide``: a
    weaker ``LoadedModel`` guiding in place of the unconditional branch (autoguidance); ``apg``: adaptive
    projected guidance in place of plain CFG (``core.guidance``)."""

    prompts = list(prompts) if prompts else [c["prompt"] for c in lm.classes]
    labels = np.repeat(np.arange(len(prompts)), per_class)
    seeds = seed + np.tile(np.arange(per_class), len(prompts))
    images = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(labels), batch_size), desc=f"{sampler} {steps}", dynamic_ncols=True):
        chunk = labels[i:i + batch_size]
        res = generate_images(lm.model, lm.diffusion, [prompts[j] for j in chunk], num_images=len(chunk),
                                sampler=sampler, num_steps=steps, guidance_scale=guidance,
                                seeds=seeds[i:i + batch_size].tolist(), encode_fn=encode_fn, device=device,
                                precision=precision, guidance_interval=guidance_interval,
                                guide_model=guide.model if guide else None,
                                guide_diffusion=guide.diffusion if guide else None, apg=apg)
        images.append(res.images)
    return np.concatenate(images), labels, time.perf_counter() - start
