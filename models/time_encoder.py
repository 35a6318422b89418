"""Timestep conditioning: sinusoidal features (DDPM / Transformer) and their MLP."""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: float = 10_000.0,
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape ``(N, dim)``.

    Frequencies are ``max_period ** (-i / (half - downscale_freq_shift))`` for
    ``i < half``; the output is ``[sin, cos]`` (or ``[cos, sin]`` when
    ``flip_sin_to_cos``), zero-padded when ``dim`` is odd. This is exactly
    diffusers' ``get_timestep_embedding``; the defaults are those of its
    ``UNet2DModel`` and of guided-diffusion.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features followed by a two-layer SiLU MLP."""

    def __init__(self, freq_dim: int, out_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
