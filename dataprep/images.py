"""Image decoding and resizing, the one place it is done: training data (``preprocess.py``), the app's uploads
and the CLI's ``--init-image`` all go through ``decode_image`` (RGB, centre crop, Lanczos resize)."""
from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("preprocess")

from dataprep.defaults import DEFAULT_MAX_PIXELS

# --------------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, P


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Center-crop to a square and resize to ``size``: halve with a box filter while >= 2x, then bicubic.

    The same arithmetic as guided-diffusion's ``center_crop_arr``, except that
    the crop comes first, so the discarded border is never resampled.
    """
    w, h = img.size
    m = min(w, h)
    if w != h:
        left, top = (w - m) // 2, (h - m) // 2
        img = img.crop((left, top, left + m, top + m))
    while img.size[0] >= 2 * size:
        img = img.reduce(2)  # 2x2 box average
    if img.size[0] != size:
        img = img.resize((size, size), resample=Image.BICUBIC)
    return img


def decode_image(fp: io.BytesIO | Any, size: int) -> np.ndarray:
    """Decode one image file object into a ``(size, size, 3)`` uint8 RGB array.

    Raises on truncated, unreadable or oversized (decompression bomb) files;
    callers turn that into a skipped entry. Call inside a context where
    ``Image.DecompressionBombWarning`` is an error (see :func:`strict_pil`).
    """
    with Image.open(fp) as img:
        if img.format == "JPEG":
            # DCT-domain downscaling: decode at 1/2, 1/4 or 1/8 scale as long as
            # both sides stay >= 2*size. This is most of the speed-up on
            # full-size photos.
            img.draft("RGB", (2 * size, 2 * size))
        img.load()
        rgb = _to_rgb(img)
        out = resize_center_crop(rgb, size)
        arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return arr


class strict_pil:
    """Context: PIL's decompression-bomb warning becomes an error; ``max_pixels`` is the limit."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_pixels = max_pixels

    def __enter__(self):
        self._old = Image.MAX_IMAGE_PIXELS
        self._cw = warnings.catch_warnings()
        self._cw.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        return self

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self._old
        self._cw.__exit__(*exc)
        return False


def load_init_image(path: str | os.PathLike, size: int, flag: str = "--init-image") -> np.ndarray:
    """An image file as uint8 (size, size, 3), prepared exactly as training data (``decode_image``):
    the CLI's ``--init-image``, the figures' ``--image`` and the app's uploads. ``flag`` names the
    input in the error messages."""
    try:
        with strict_pil(), open(path, "rb") as f:
            return decode_image(f, size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; the user needs the one line
        raise ValueError(f"{flag} {path} is not a readable image ({type(e).__name__}: {e})") from None
