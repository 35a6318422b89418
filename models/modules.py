"""U-Net building blocks: conditioned residual block, self-attention, resampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises a low-precision CPU tensor in fp32, on a contiguous copy.

    Why: under bf16 autocast on a CPU, convolutions hand back bf16 tensors in channels-last layout,
    and PyTorch's CPU group norm is slow on exactly those at 8-16 px (about 0.5 ms for 4x64x16x16,
    4-5x the time of this path): a third of a bf16 forward went there, and a bf16 training step is
    1.3x faster without it (``benchmarks/bench_groupnorm.py``). PyTorch's bf16 kernel also takes its
    statistics in fp32, so the results are the same (bit for bit on this project's AVX512-BF16 CPU).
    An fp32 input takes ``nn.GroupNorm``'s own path, so fp32 results are unchanged to the bit; on a
    GPU, autocast already runs group norm in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or x.device.type != "cpu":
            return super().forward(x)
        y = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return y.to(x.dtype)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides channels."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return GroupNorm32(groups, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer so the block starts as the identity (stabilises early training)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the conditioning vector scales and shifts the
    second normalisation (FiLM / "adaptive group norm", as in guided-diffusion).

    With ``text_film`` the vector is two halves, [time, text], each with its own projection to the
    scale and shift (the text's reaches every block directly instead of through a sum with time)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0,
                 text_film: bool = False):
        super().__init__()
        self.text_film = text_film
        if text_film:
            self.cond_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.text_film:
            time_emb, text_emb = emb.chunk(2, dim=1)
            film = self.emb_proj(F.silu(time_emb)) + self.cond_proj(F.silu(text_emb))
        else:
            film = self.emb_proj(F.silu(emb))
        scale, shift = film[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (residual)."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"channels ({channels}) must be a multiple of head_channels ({head_channels})")
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (b, heads, h*w, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
