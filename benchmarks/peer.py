"""The diffusers peer every benchmark compares against: a ``UNet2DModel`` laid out like
our networks (by default the 7.1M layout, 64/128/128 channels, 2 res blocks per level, attention at the
8 px level, 32-channel heads, scale-shift time conditioning), class-conditional with one
extra index as the null class for guidance. One definition, so the speedrun, the
training-throughput and the sampling benchmarks all measure the same peer."""
from __future__ import annotations

import torch


def peer_unet(size: int, num_class_embeds: int, dropout: float = 0.0,
              block_out_channels: tuple[int, ...] = (64, 128, 128), layers_per_block: int = 2) -> torch.nn.Module:
    """The peer; ``block_out_channels`` and ``layers_per_block`` follow one of ours (attention stays at the
    last of three levels, the 8 px one at 32 px, as in ours)."""
    from diffusers import UNet2DModel

    if len(block_out_channels) != 3:
        raise ValueError("the peer has three levels (the last with attention), like our presets")
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32, norm_num_groups=32,
        resnet_time_scale_shift="scale_shift", num_class_embeds=num_class_embeds, dropout=dropout,
    )
