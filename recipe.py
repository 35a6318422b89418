"""Generation recipes in PNG metadata, AUTOMATIC1111 style.

Every PNG the CLI and the app write carries a ``parameters`` text chunk::

    a photo of a goldfish
    Steps: 20, Sampler: dpm++, CFG scale: 3.0, Seed: 1234, Size: 32x32, Model: default_model, Timestep spacing: trailing, Eta: 0.0

so a downloaded image says exactly how to make it again.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

# key in the text line -> key in our recipe dict, and its type
_FIELDS = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "CFG scale": ("guidance_scale", float),
    "Seed": ("seed", int),
    "Size": ("size", str),
    "Model": ("model", str),
    "Timestep spacing": ("timestep_spacing", str),
    "Eta": ("eta", float),
}


def format_parameters(prompt: str, recipe: dict[str, Any]) -> str:
    """The two-line A1111 ``parameters`` string for one image."""
    size = recipe.get("size")
    parts = []
    for label, (key, _) in _FIELDS.items():
        value = recipe.get(key)
        if key == "size" and size is not None and not isinstance(size, str):
            value = f"{size}x{size}"
        if value is not None:
            parts.append(f"{label}: {value}")
    # Newlines in a prompt would break the format: A1111 keeps the prompt on line one.
    one_line = " ".join(str(prompt).split())
    return f"{one_line}\n" + ", ".join(parts)


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of ``format_parameters``: ``{"prompt": ..., "steps": 20, ...}``."""
    prompt, _, line = text.rpartition("\n")
    out: dict[str, Any] = {"prompt": prompt}
    for m in re.finditer(r"([A-Za-z][A-Za-z ]*?): ([^,]*)(?:, |$)", line):
        label, value = m.group(1).strip(), m.group(2).strip()
        if label in _FIELDS:
            key, typ = _FIELDS[label]
            out[key] = typ(value)
    return out


def save_png(path: str | os.PathLike, image: np.ndarray, prompt: str, recipe: dict[str, Any]) -> Path:
    """Write a uint8 (H, W, 3) image as PNG with its recipe in a ``parameters`` chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(prompt, recipe))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG", pnginfo=info)
    return path


def read_png_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe stored in a PNG written by ``save_png`` (empty dict if none)."""
    with Image.open(path) as im:
        text = im.info.get("parameters") or getattr(im, "text", {}).get("parameters")
    return parse_parameters(text) if text else {}
