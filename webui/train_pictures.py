"""The Train tab's pictures as HTML: each class's strip of training pictures, the newest sample grid
and the timeline of grids. Each picture is shown whole, at a whole-number zoom of its own pixels
(nearest-neighbour, so a 16 px picture stays crisp), with its caption as text under it.

Why not ``gr.Gallery``: a gallery cuts every tile to a square and scales it to the column, so a
class's strip of six pictures showed two blown-up halves and a grid's class names were clipped;
a gallery caption is cut to the tile's width too. Pictures travel inline as PNG data (they are
small: a strip of six 64 px pictures is tens of kB), so the run folder is never served as files.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

PICTURE_PX = 96  # a training picture is zoomed to about this size: 16 px x6, 32 px x3, 64 px x2
GRID_PX = 400  # the newest sample grid, about this wide
TIMELINE_PX = 270  # each grid of the timeline, about this wide (three to a row in the tab's column)
MAX_ZOOM = 8


def zoom_for(native_px: int, target_px: int) -> int:
    """The whole-number zoom that brings ``native_px`` nearest ``target_px`` (1 at least: a picture
    larger than the target is shown at its own size, never shrunk)."""
    return int(max(1, min(MAX_ZOOM, round(target_px / max(1, native_px)))))


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(image: np.ndarray | Image.Image, caption: str, zoom: int) -> str:
    """One picture at ``zoom`` times its own size, uncropped, with its caption as text under it."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    w, h = img.size
    text = html.escape(caption)
    return (f'<figure class="train-picture" style="margin:0;flex:none">'
            f'<img src="{png_data_uri(img)}" width="{w * zoom}" height="{h * zoom}" alt="{text}" '
            f'data-zoom="{zoom}" style="image-rendering:pixelated;max-width:none;width:{w * zoom}px;'
            f'height:{h * zoom}px;display:block">'
            f'<figcaption style="text-align:center;font-size:var(--text-md);overflow-wrap:anywhere">{text}'
            f'</figcaption></figure>')


def row(figures: Iterable[str], empty: str = "") -> str:
    """Figures side by side, wrapping to the next line rather than shrinking; a lone one too wide for
    the column scrolls sideways."""
    body = "".join(figures)
    if not body:
        return f'<p class="train-pictures-empty">{html.escape(empty)}</p>' if empty else ""
    return f'<div class="train-pictures" style="display:flex;flex-wrap:wrap;gap:12px;overflow-x:auto">{body}</div>'


def examples_html(strips: Sequence[tuple[np.ndarray, str]]) -> str:
    """Each class's strip of training pictures (``train_data.examples``), captioned with its name."""
    if not strips:
        return ""
    zoom = zoom_for(strips[0][0].shape[0], PICTURE_PX)  # one zoom for all: the classes compare side by side
    return row(figure(strip, name, zoom) for strip, name in strips)


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError):  # a grid being written as the page asks: shown at the next refresh
        return None


def grid_html(path: Path | None, caption: str = "") -> str:
    """The newest sample grid."""
    img = _open(path) if path else None
    if img is None:
        return row([], "No samples yet: the first grid is drawn after the run's first sample interval.")
    return row([figure(img, caption, zoom_for(img.width, GRID_PX))])


def timeline_html(grids: Sequence[tuple[int, Path]]) -> str:
    """The same seeds' grids over training, captioned with their step."""
    images = [(step, img) for step, p in grids if (img := _open(p)) is not None]
    if not images:
        return ""
    zoom = zoom_for(max(img.width for _, img in images), TIMELINE_PX)
    return row(figure(img, f"step {step:,}", zoom) for step, img in images)
