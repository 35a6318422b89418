"""Image outputs reach the browser through gradio's cache without a half-written file.

Gradio (6.x) saves an image output under a folder named by the hash of its encoded bytes, with a
plain ``write_bytes`` (``gradio.processing_utils.save_pil_to_cache``). When two requests return
the same picture at once (two people asking for the same forward-process strip, a double click),
the second request truncates and rewrites the very file the first one's browser is downloading,
and that download fails ("peer closed connection without sending complete message body"; seen in
the fuzz run, tests/test_web_fuzz.py). Gradio already writes files it is given by path under a
temporary name and renames them into place (``save_file_to_cache``); ``install`` does the same for
images: identical bytes that are already cached are not written again, and new ones appear by
``os.replace``, so a reader sees the whole file or none.
"""
from __future__ import annotations

import os
from pathlib import Path

from gradio import processing_utils
from PIL import Image

from fileio import atomic_write_bytes


def save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """``processing_utils.save_pil_to_cache`` with the same path and bytes, written atomically."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    try:
        if path.stat().st_size == len(data):  # the same hash and size: these bytes, already whole
            os.utime(path)  # gradio's delete_cache ages files by time: a reused one is fresh again
            return str(path)
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, durable=False)
    return str(path)


def install() -> None:
    """Route every gradio image output (Image, Gallery, AnnotatedImage) through the atomic save:
    they all look ``save_pil_to_cache`` up on the module when they save."""
    processing_utils.save_pil_to_cache = save_pil_to_cache
