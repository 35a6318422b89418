"""Where sampling starts: seeded noise, variations (slerp), img2img (SDEdit) and interpolation inputs."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.loss import q_sample
from core.pixels import images_to_tensor
from core.sampling import randn_like_batch, sampler_timesteps
from core.schedules import DiffusionConfig


# --------------------------------------------------------------------------- where sampling starts
def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between noise batches, per image: ``t=0`` is ``a``, ``t=1`` is ``b``.

    Gaussian noise lives near a sphere; a straight line between two draws
    passes inside it (too little noise, washed-out images), the arc does not.
    """
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1, 1))[:, None]
    so = torch.sin(omega)
    nearly_parallel = so.abs() < 1e-6  # the arc is a line there: lerp avoids 0/0
    wa = torch.where(nearly_parallel, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so)
    wb = torch.where(nearly_parallel, torch.full_like(so, t), torch.sin(t * omega) / so)
    return (wa * fa + wb * fb).reshape(a.shape).to(a.dtype)


def starting_noise(
    shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu",
    variation_seed: int | None = None, variation_strength: float = 0.0,
) -> torch.Tensor:
    """x_T for each image: noise from its seed, or (AUTOMATIC1111's variation seeds)
    the slerp from it toward the noise of ``variation_seed + i`` by ``variation_strength``
    (0: the seed's own image, 1: the variation seed's own image)."""
    if not 0.0 <= variation_strength <= 1.0:
        raise ValueError(f"variation strength must be in [0, 1], got {variation_strength}")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]  # CPU: the same noise on every device
    x = randn_like_batch(shape, gens, device)
    if variation_seed is not None and variation_strength > 0:
        var_gens = [torch.Generator().manual_seed(int(variation_seed) + i) for i in range(len(seeds))]
        x = slerp(x, randn_like_batch(shape, var_gens, device), variation_strength)
    return x




def sdedit_start(
    diffusion: DiffusionConfig, init_images: np.ndarray | torch.Tensor, seeds: Sequence[int], strength: float,
    sampler: str, num_steps: int | None = None, timestep_spacing: str | None = None,
    variation_seed: int | None = None, variation_strength: float = 0.0,
) -> tuple[torch.Tensor, int | None]:
    """The x_t that ``generate_images(init_images=..., strength=...)`` starts sampling from, and its t
    (None when the strength is too low to reach a step: the image itself). Same noise, same t."""
    x0 = images_to_tensor(init_images)
    if x0.shape[0] == 1 and len(seeds) > 1:
        x0 = x0.expand(len(seeds), -1, -1, -1)
    noise = starting_noise(tuple(x0.shape), seeds, "cpu", variation_seed, variation_strength)
    ts = sampler_timesteps(diffusion, sampler, num_steps, timestep_spacing, strength)
    if strength == 1.0:
        return noise, ts[0]
    if not ts:
        return x0.clone(), None
    t0 = torch.full((x0.shape[0],), ts[0], dtype=torch.long)
    return q_sample(diffusion.terms(), x0, t0, noise), ts[0]


def interpolation_inputs(
    cond_a: np.ndarray | torch.Tensor, cond_b: np.ndarray | torch.Tensor, noise_a: torch.Tensor,
    noise_b: torch.Tensor, num_frames: int,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(conds (N, D), noises (N, C, H, W), fractions) for ``num_frames`` frames from a to b.

    Both the starting noise and the text embedding move along the great
    circle (slerp): the noise stays as noisy as a fresh draw, and the unit-norm
    embedding stays where the encoder's embeddings live. Frame 0 is exactly a,
    the last exactly b. Pass them to ``generate_images(cond=..., noise=...)``.
    """
    if num_frames < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got {num_frames}")
    ca = torch.as_tensor(np.asarray(cond_a) if not isinstance(cond_a, torch.Tensor) else cond_a,
                         dtype=torch.float32).reshape(1, -1)
    cb = torch.as_tensor(np.asarray(cond_b) if not isinstance(cond_b, torch.Tensor) else cond_b,
                         dtype=torch.float32).reshape(1, -1)
    na, nb = noise_a.reshape(1, *noise_a.shape[-3:]), noise_b.reshape(1, *noise_b.shape[-3:])
    fractions = [i / (num_frames - 1) for i in range(num_frames)]
    conds = torch.cat([slerp(ca, cb, f) for f in fractions])
    noises = torch.cat([slerp(na, nb, f) for f in fractions])
    return conds, noises, fractions
