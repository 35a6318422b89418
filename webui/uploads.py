"""Files the browser uploads: the path in gradio's payload, the upload folder, and a PNG's recipe
(checked before it is read: an image, not too large, in gradio's upload folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder

from engine.recipe import RecipeError, load_recipe
from webui.validation import InputError, check_upload

RESTORE_MISSING = ("Drop a PNG written by this app, its CLI or AUTOMATIC1111 (it carries the settings in a "
                   "'parameters' text chunk).")


def file_path(value: Any) -> str | None:
    """The path in a gradio FileData payload (a dict), a plain path string, or None."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if isinstance(value, str) and value else None


def upload_folder() -> str:
    return get_upload_folder()


def recipe_of(value: Any, max_bytes: int) -> dict[str, Any]:
    """The recipe of an uploaded PNG (a file in gradio's upload folder), or InputError with a plain reason."""

    path = file_path(value)
    if not path:
        raise InputError(f"No file. {RESTORE_MISSING}")
    check_upload(path, max_bytes=max_bytes, upload_dir=upload_folder())  # an image, not too large, ours to read
    try:
        return load_recipe(path)
    except RecipeError as e:
        name = Path(path).name
        raise InputError(f"No recipe could be read from that image: {str(e).replace(path, name)}. "
                         f"{RESTORE_MISSING}") from None
