"""Network code: the conditional U-Net and its time and text encoders.

Names are imported lazily (PEP 562), so ``import models.text_encoder`` does
not pull in torch, and the text encoder's sentence-transformers loads only
when a prompt is first encoded.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConditionalUNet": "unet", "UNetConfig": "unet", "count_parameters": "unet",
    "TimestepEmbedder": "time_encoder", "timestep_embedding": "time_encoder",
    "TextEncoder": "text_encoder", "get_text_encoder": "text_encoder", "encode_prompts": "text_encoder",
    "class_prompt": "text_encoder", "DEFAULT_PROMPT_TEMPLATE": "text_encoder", "PROMPT_TEMPLATES": "text_encoder",
    "TEXT_EMBED_DIM": "text_encoder", "TEXT_MODEL_NAME": "text_encoder",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
