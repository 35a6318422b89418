"""Network code: the conditional U-Net and its time and text encoders.

The text encoder's heavy dependencies (sentence-transformers) load lazily, so
importing this package is cheap.
"""
from .text_encoder import (
    DEFAULT_PROMPT_TEMPLATE,
    PROMPT_TEMPLATES,
    TEXT_EMBED_DIM,
    TEXT_MODEL_NAME,
    TextEncoder,
    class_prompt,
    encode_prompts,
    get_text_encoder,
)
from .time_encoder import TimestepEmbedder, timestep_embedding
from .unet import ConditionalUNet, UNetConfig, count_parameters

__all__ = [
    "ConditionalUNet", "UNetConfig", "count_parameters", "TimestepEmbedder", "timestep_embedding",
    "TextEncoder", "get_text_encoder", "encode_prompts", "class_prompt", "DEFAULT_PROMPT_TEMPLATE",
    "PROMPT_TEMPLATES", "TEXT_EMBED_DIM", "TEXT_MODEL_NAME",
]
