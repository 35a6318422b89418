"""Generation recipes in PNG metadata, AUTOMATIC1111 style.

Every PNG the CLI and the app write carries a ``parameters`` text chunk::
    a photo of a goldfish
    Steps: 20, Sampler: dpm++, CFG scale: 3.0, Seed: 1234, Size: 32x32, Model: default_model, Timestep spacing: trailing, Eta: 0.0

so a downloaded image says exactly how to make it again: ``read_png_recipe``
reads it back (``python diffusion.py sample --from-png FILE``, and the app's
"Restore from PNG"). Chunks written by AUTOMATIC1111 itself are read too: its
"Negative prompt:" line is kept apart, and its sampler names map to ours
where one matches ("DPM++ 2M" -> dpm++, "DDIM" -> ddim).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

# label in the text line -> key in our recipe dict, and its type (AUTOMATIC1111's labels where it has one)
_FIELDS = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "CFG scale": ("guidance_scale", float),
    "Seed": ("seed", int),
    "Size": ("size", str),
    "Model": ("model", str),
    "Timestep spacing": ("timestep_spacing", str),
    "Eta": ("eta", float),
    "Variation seed": ("variation_seed", int),
    "Variation seed strength": ("variation_strength", float),
    "Denoising strength": ("strength", float),
    "Init image": ("init_image", str),
    "Guidance interval": ("guidance_interval", str),
    "Precision": ("precision", str),
    # the cascade's second stage (sample --upscale): Size stays the first stage's size, as A1111's hires fix
    "Upscaler": ("upscaler", str),
    "Upscale steps": ("upscale_steps", int),
    "Upscale noise": ("upscale_aug", float),
    "Class snap": ("snap", float),  # the app's "snap to known classes" (prompting.snap_to_classes)
    "Guide": ("guide", str),  # autoguidance: the weaker model guiding in place of the unconditional branch
}
# AUTOMATIC1111 sampler names -> ours (the same solver; others have no counterpart here)
A1111_SAMPLERS = {"dpm++ 2m": "dpm++", "dpm++ 2m karras": "dpm++", "dpm++ 2m sde": "dpm++", "ddim": "ddim",
                  "ddpm": "ddpm", "dpm++": "dpm++"}


class RecipeError(ValueError):
    """A PNG without a readable recipe."""


def format_parameters(prompt: str, recipe: dict[str, Any]) -> str:
    """The two-line A1111 ``parameters`` string for one image."""
    size = recipe.get("size")
    parts = []
    for label, (key, _) in _FIELDS.items():
        value = recipe.get(key)
        if key == "size" and size is not None and not isinstance(size, str):
            value = f"{size}x{size}"
        if value is not None:
            # a comma or newline in a value would break the one-line format
            parts.append(f"{label}: {' '.join(str(value).replace(',', ' ').split())}")
    # Newlines in a prompt would break the format: A1111 keeps the prompt on line one.
    one_line = " ".join(str(prompt).split())
    return f"{one_line}\n" + ", ".join(parts)


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of ``format_parameters``: ``{"prompt": ..., "steps": 20, ...}``.

    Raises ``RecipeError`` when the text has no settings line (``Steps: ...``)
    or a field has a value of the wrong type.
    """
    lines = [ln for ln in str(text).replace("\r\n", "\n").split("\n")]
    settings_at = next((i for i in range(len(lines) - 1, -1, -1) if re.match(r"\s*Steps:\s*\d", lines[i])), None)
    if settings_at is None:
        raise RecipeError("the PNG's parameters chunk has no settings line ('Steps: ..., Sampler: ..., Seed: ...')")
    prompt_lines, negative = [], None
    for ln in lines[:settings_at]:
        if ln.startswith("Negative prompt:"):
            negative = ln[len("Negative prompt:"):].strip()
        elif negative is not None:
            negative += " " + ln.strip()
        else:
            prompt_lines.append(ln)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines).strip()}
    if negative:
        out["negative_prompt"] = negative
    for m in re.finditer(r"([A-Za-z][A-Za-z0-9 ]*?): ([^,]*)(?:, |,|$)", lines[settings_at]):
        label, value = m.group(1).strip(), m.group(2).strip()
        if label in _FIELDS:
            key, typ = _FIELDS[label]
            try:
                out[key] = typ(value)
            except ValueError:
                raise RecipeError(f"the PNG's recipe has a bad {label!r}: {value!r}") from None
    if "sampler" in out:
        out["sampler"] = A1111_SAMPLERS.get(out["sampler"].lower(), out["sampler"])
    return out


def save_png(path: str | os.PathLike, image: np.ndarray, prompt: str, recipe: dict[str, Any],
             extra: dict[str, str] | None = None) -> Path:
    """Write a uint8 (H, W, 3) image as PNG with its recipe in a ``parameters`` chunk
    (and ``extra`` text chunks: an interpolation's or a grid's own settings)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(prompt, recipe))
    for key, text in (extra or {}).items():
        info.add_text(key, text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG", pnginfo=info)
    return path


def png_parameters(path: str | os.PathLike) -> str | None:
    """The raw ``parameters`` text of a PNG (None if it has none)."""
    with Image.open(path) as im:
        return im.info.get("parameters") or getattr(im, "text", {}).get("parameters")


def read_png_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe stored in a PNG written by ``save_png`` (empty dict if none)."""
    text = png_parameters(path)
    return parse_parameters(text) if text else {}


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe of a PNG for regenerating it; ``RecipeError`` with a clear reason when there is none."""
    try:
        text = png_parameters(path)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except OSError as e:  # not an image, or damaged
        raise RecipeError(f"{path} is not a readable image ({e})") from None
    if not text:
        raise RecipeError(f"{Path(path).name} has no generation recipe (no 'parameters' text chunk): "
                          "only PNGs written by this app, its CLI or AUTOMATIC1111 carry one")
    recipe = parse_parameters(text)
    missing = [k for k in ("seed", "sampler") if k not in recipe]
    if missing or not recipe.get("prompt"):
        raise RecipeError(f"{Path(path).name}: the recipe lacks {', '.join(missing) or 'a prompt'}")
    return recipe
