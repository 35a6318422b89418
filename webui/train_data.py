"""The Train tab's data: folders under the app's data root (``web.py --data-root``), prepared
with the project's own ``dataprep.pipeline.preprocess``, and shown as counts and example images.

Every path a request names is resolved and must stay under the data root: no ``..``, no absolute
paths, no symlink that leads out of it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dataprep.defaults import IMAGE_EXTENSIONS
from webui.validation import InputError

PREPARED_SUFFIX = "px"  # a prepared copy of folder F at size S is F_Spx, beside it
MAX_LISTED = 200  # folders listed in the picker
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$")


@dataclass(frozen=True)
class DataFolder:
    """A folder under the data root: ``prepared`` (has train_images.npy) or raw pictures."""

    name: str  # relative to the data root
    path: Path
    prepared: bool

    @property
    def label(self) -> str:
        return f"{self.name} (prepared)" if self.prepared else f"{self.name} (pictures: prepare first)"


def resolve_under(root: Path, name: str) -> Path:
    """``root / name`` resolved, refused unless it stays inside ``root`` (symlinks followed)."""
    name = str(name or "").strip()
    if not name:
        raise InputError("Pick a data folder.")
    if os.path.isabs(name) or any(part in ("..", "") for part in Path(name).parts) or "\\" in name:
        raise InputError(f"{name!r}: give a folder inside the data root, by its name")
    root = root.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InputError(f"{name!r} leads outside the data root ({root})")
    return path


def list_data(root: Path) -> list[DataFolder]:
    """The data root's folders one level down: prepared ones first, then folders holding pictures."""
    if not root.is_dir():
        return []
    found = []
    resolved_root = root.resolve()
    for p in sorted(root.iterdir(), key=lambda p: p.name.lower())[: 4 * MAX_LISTED]:
        if not p.is_dir() or p.name.startswith(".") or p.name.endswith(".partial"):
            continue
        if not p.resolve().is_relative_to(resolved_root):  # a symlink out of the root is not listed
            continue
        if (p / "train_images.npy").exists():
            found.append(DataFolder(p.name, p, True))
        elif _has_pictures(p):
            found.append(DataFolder(p.name, p, False))
    found.sort(key=lambda d: (not d.prepared, d.name.lower()))
    return found[:MAX_LISTED]


def _has_pictures(folder: Path, limit: int = 2000) -> bool:
    for i, (_, _, files) in enumerate(os.walk(folder)):
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            return True
        if i > limit:
            return False
    return False


def prepared_name(name: str, size: int) -> str:
    return f"{name}_{size}{PREPARED_SUFFIX}"


def prepare(root: Path, name: str, size: int, val_fraction: float, embed_fn: Callable | None = None,
            min_free_bytes: int = 256 * 2**20) -> Path:
    """Preprocess raw folder ``name`` into ``<name>_<size>px`` beside it (resumes an interrupted run;
    an up-to-date one is reused). A single folder of pictures is one class, named after the folder."""
    from dataprep.defaults import PreprocessError
    from dataprep.pipeline import preprocess

    src = resolve_under(root, name)
    if not src.is_dir():
        raise InputError(f"{name!r} is not a folder under the data root")
    if (src / "train_images.npy").exists():
        raise InputError(f"{name!r} is already prepared: pick it to train")
    if size not in (16, 32, 64):
        raise InputError(f"image size {size}: choose 16, 32 or 64")
    if not 0 <= val_fraction < 0.5:
        raise InputError(f"held-out fraction {val_fraction}: choose from 0 up to 0.5")
    free = shutil.disk_usage(root).free
    if free < min_free_bytes:
        raise InputError(f"only {free / 2**20:.0f} MB free under the data root: preparing needs "
                         f"{min_free_bytes / 2**20:.0f} MB")
    out = resolve_under(root, prepared_name(src.name, size))
    single = _single_class_view(src)
    try:
        preprocess(single or src, out, size=size, val_fraction=val_fraction, embed_fn=embed_fn, progress=True,
                   workers=1 if single else None)
    except PreprocessError as e:
        raise InputError(str(e)) from None
    finally:
        if single is not None:
            shutil.rmtree(single.parent, ignore_errors=True)
    return out


def _single_class_view(src: Path) -> Path | None:
    """For a folder of pictures with no class folders: a temporary ``<tmp>/view/<folder name>/`` of
    symlinks to them, so it trains as one class named after the folder (someone's cat photos)."""
    import tempfile

    entries = list(src.iterdir())
    if any(e.is_dir() for e in entries):
        return None
    pictures = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS]
    if not pictures:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="single-class-"))
    cls = tmp / "view" / src.name
    cls.mkdir(parents=True)
    for p in pictures:
        (cls / p.name).symlink_to(p.resolve())
    return cls.parent


def summary(folder: Path) -> str:
    """Markdown: classes and counts, skipped files and duplicates, from the folder's manifest."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        classes = _classes(folder)
    except (OSError, ValueError, KeyError):
        return f"**{folder.name}**: no manifest (not prepared by this project's preprocess)."
    c = manifest.get("counts", {})
    per = manifest.get("per_class", {})
    names = {cl.get("wnid"): cl.get("name") or (cl.get("names") or ["?"])[0] for cl in classes}
    lines = [f"**{folder.name}**: {len(classes)} class(es), {c.get('train', 0):,} training + {c.get('val', 0):,} "
             f"held-out images at {manifest.get('image_size', '?')} px; {c.get('skipped', 0)} skipped, "
             f"{c.get('duplicates', 0)} duplicate(s), {c.get('broken_links', 0)} broken link(s).", "",
             "| class | train | held out |", "| --- | ---: | ---: |"]
    for wnid, n in list(per.items())[:50]:
        lines.append(f"| {names.get(wnid, wnid)} | {n.get('train', 0)} | {n.get('val', 0)} |")
    if len(per) > 50:
        lines.append(f"| ... {len(per) - 50} more | | |")
    skipped = manifest.get("skipped") or []
    if skipped:
        lines += ["", "Skipped: " + "; ".join(
            f"`{Path(str(s.get('path', '?'))).name}` ({s.get('reason', '?')})" if isinstance(s, dict) else f"`{s}`"
            for s in skipped[:8]) + (" ..." if len(skipped) > 8 else "")]
    return "\n".join(lines)


def examples(folder: Path, per_class: int = 1, max_classes: int = 24) -> list[tuple[np.ndarray, str]]:
    """The first ``per_class`` training images of up to ``max_classes`` classes, captioned by class."""
    try:
        images = np.load(folder / "train_images.npy", mmap_mode="r")
        labels = np.load(folder / "train_labels.npy", mmap_mode="r")
        classes = _classes(folder)
    except (OSError, ValueError, KeyError):
        return []
    out = []
    for i, cl in enumerate(classes[:max_classes]):
        for j in np.flatnonzero(np.asarray(labels) == i)[:per_class]:
            out.append((np.asarray(images[j]), cl.get("name") or str(i)))
    return out


def _classes(folder: Path) -> list[dict[str, Any]]:
    data = json.loads((folder / "classes.json").read_text())
    return data["classes"] if isinstance(data, dict) else data


def parse_folder_choice(choice: Any) -> str:
    """The picker's value is the folder's name (its label adds a note)."""
    name = str(choice or "").strip()
    if name and not NAME.match(name):
        raise InputError(f"{name!r} is not a data folder name")
    return name


def manifest_of(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
