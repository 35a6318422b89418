"""The conditional U-Net: timestep + text conditioning, classifier-free-guidance ready."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .modules import Downsample, ResBlock, SelfAttention, Upsample, group_norm, zero_init
from .text_encoder import TEXT_EMBED_DIM
from .time_encoder import TimestepEmbedder


@dataclass
class UNetConfig:
    """Everything needed to rebuild the network (stored in every checkpoint's JSON).

    ``attention_resolutions`` are feature-map sizes in pixels (for the
    ``image_size`` the network is built for) at which self-attention runs.

    Super-resolution networks (``training/superres.py``) use three more options:
    ``in_channels`` 6 (the noisy image and the upsampled low-resolution image,
    concatenated), ``aug_embed`` (the conditioning-augmentation level is an
    input, embedded like the timestep), ``middle_attention`` False with no
    ``attention_resolutions`` (fully convolutional: trains on crops, samples
    whole images), ``cond_dim`` 0 (no text conditioning at all) and ``residual``
    (the diffusion runs on ``x - upsample(low)``, the detail bicubic misses).
    """

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    head_channels: int = 32
    dropout: float = 0.1
    cond_dim: int = TEXT_EMBED_DIM  # 0: no text conditioning (no text embedding, no null condition)
    middle_attention: bool = True  # self-attention in the middle block
    aug_embed: bool = False  # a second timestep-like input: the conditioning-augmentation level (SR models)
    residual: bool = False  # SR models: the network denoises the residual x - upsample(low), not x itself
    emb_dim: int = 0  # width of the time + text embedding that modulates every block; 0 = 4 x base_channels
    # The text embedding is multiplied by this before its MLP. MiniLM's embeddings are unit vectors
    # (entries ~ 1/sqrt(384)), so at 1.0 the condition enters ~20x weaker than the timestep and, under
    # Adam, learns ~20x slower; sqrt(cond_dim) gives it unit-variance entries (see BENCHMARKS.md).
    cond_scale: float = 1.0
    # Few-step students (``core.distill``): the guidance scale is an input, embedded like the timestep,
    # so one forward gives the guided prediction (guided distillation, Meng et al. 2023).
    guidance_embed: bool = False
    # The text embedding scales and shifts every block through a projection of its own, not summed
    # into the time embedding first (the 200-class speedrun's "text-film" recipe).
    text_film: bool = False

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^(levels-1) = {factor} "
                f"for channel_mult {self.channel_mult}"
            )
        if self.base_channels <= 0 or self.num_res_blocks <= 0 or not self.channel_mult:
            raise ValueError("base_channels, num_res_blocks and channel_mult must be positive / non-empty")
        if not self.cond_scale > 0:
            raise ValueError(f"cond_scale must be positive, got {self.cond_scale}")
        if self.cond_dim < 0 or self.in_channels <= 0 or self.out_channels <= 0 or self.emb_dim < 0:
            raise ValueError("cond_dim and emb_dim must be >= 0 and in_channels, out_channels positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {sorted(unknown)}")
        return cls(**d)


class ConditionalUNet(nn.Module):
    """U-Net predicting noise (or v) from ``(x_t, t, text embedding)``.

    Time and text embeddings are summed into one vector that scales and shifts
    every residual block, at every level and in the middle. ``drop_cond`` marks
    rows whose text is replaced by a learned null embedding: that is both the
    training-time condition dropout and the unconditional branch of
    classifier-free guidance.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = config.emb_dim or 4 * ch
        self.time_embed = TimestepEmbedder(ch, emb_dim)
        self.text_film = config.text_film
        if config.text_film and config.cond_dim == 0:
            raise ValueError("text_film needs a text-conditioned network (cond_dim > 0)")
        if config.cond_dim > 0:
            self.cond_embed = nn.Sequential(nn.Linear(config.cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.null_cond = nn.Parameter(torch.zeros(config.cond_dim))
        if config.aug_embed:
            self.aug_embed = TimestepEmbedder(ch, emb_dim)
        if config.guidance_embed:
            if config.cond_dim == 0:
                raise ValueError("guidance_embed needs a text-conditioned network (cond_dim > 0)")
            self.guidance_embed = TimestepEmbedder(ch, emb_dim)
            # zero at the start: a student initialised from its teacher is the teacher's conditional branch
            zero_init(self.guidance_embed.mlp[-1])

        self.input_conv = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [ch]
        resolution = config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(self._block(ch, mult * config.base_channels, emb_dim, resolution))
                ch = mult * config.base_channels
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
                resolution //= 2

        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, config.dropout, self.text_film),
             SelfAttention(ch, config.head_channels) if config.middle_attention else nn.Identity(),
             ResBlock(ch, ch, emb_dim, config.dropout, self.text_film)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                out_ch = mult * config.base_channels
                self.up.append(self._block(ch + skip_channels.pop(), out_ch, emb_dim, resolution))
                ch = out_ch
            if level != 0:
                self.up.append(Upsample(ch))
                resolution *= 2

        self.out_norm = group_norm(ch)
        self.out_conv = zero_init(nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def _block(self, in_ch: int, out_ch: int, emb_dim: int, resolution: int) -> nn.Module:
        res = ResBlock(in_ch, out_ch, emb_dim, self.config.dropout, self.text_film)
        if resolution in self.config.attention_resolutions:
            return nn.ModuleList([res, SelfAttention(out_ch, self.config.head_channels)])
        return nn.ModuleList([res])

    @staticmethod
    def _run_block(block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(block, (Downsample, Upsample)):
            return block(h)
        h = block[0](h, emb)
        for extra in block[1:]:
            h = extra(h)
        return h

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond: torch.Tensor | None,
        drop_cond: torch.Tensor | None = None,
        aug_level: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W); ``timesteps``: (B,) or scalar; ``cond``: (B, cond_dim), or None
        for a network without text (``cond_dim`` 0); ``drop_cond``: optional (B,) bool, True
        where the null condition is used; ``aug_level``: (B,) or scalar, the conditioning-augmentation
        timestep of a network with ``aug_embed`` (required there, refused elsewhere); ``guidance``: (B,)
        or scalar, the guidance scale a student (``guidance_embed``) folds in (required there, refused
        elsewhere)."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {factor}")
        b = x.shape[0]
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        emb = self.time_embed(timesteps)
        if self.config.cond_dim > 0:
            if cond is None:
                raise ValueError("this network is text-conditioned: cond is required")
            cond = cond.to(self.null_cond.dtype)
            if drop_cond is not None:
                cond = torch.where(drop_cond[:, None], self.null_cond.expand_as(cond), cond)
            if self.config.cond_scale != 1.0:
                cond = cond * self.config.cond_scale
            text_emb = self.cond_embed(cond)
            if not self.text_film:
                emb = emb + text_emb
        if self.config.aug_embed:
            if aug_level is None:
                raise ValueError("this network takes the conditioning-augmentation level: aug_level is required")
            aug_level = torch.as_tensor(aug_level, device=x.device)
            emb = emb + self.aug_embed(aug_level.expand(b) if aug_level.ndim == 0 else aug_level)
        elif aug_level is not None:
            raise ValueError("aug_level given to a network without an augmentation-level input (aug_embed)")
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this network is a few-step student: guidance (the scale it folds in) is required")
            guidance = torch.as_tensor(guidance, device=x.device, dtype=torch.float32)
            emb = emb + self.guidance_embed(guidance_features(guidance.expand(b) if guidance.ndim == 0 else guidance))
        elif guidance is not None:
            raise ValueError("guidance given to a network without a guidance input (guidance_embed)")

        if self.text_film:  # blocks split it back into [time, text] (ResBlock)
            emb = torch.cat([emb, text_emb], dim=1)
        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = self._run_block(block, h, emb)
            skips.append(h)
        h = self.middle[0](h, emb)
        h = self.middle[1](h)  # self-attention, or the identity (middle_attention False)
        h = self.middle[2](h, emb)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))


GUIDANCE_FEATURE_SCALE = 100.0  # guidance 0..10 spans the sinusoids' range as timesteps 0..1000 do


def guidance_features(guidance: torch.Tensor) -> torch.Tensor:
    """What a student's guidance embedder sees: the scale on the timestep embedder's range."""
    return guidance.float() * GUIDANCE_FEATURE_SCALE


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
