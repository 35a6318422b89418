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
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dataprep.defaults import DOWNLOADS, IMAGE_EXTENSIONS, PreprocessError
from dataprep.download import download
from dataprep.pipeline import preprocess
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
        if self.prepared:
            return f"{self.name} (prepared)"
        return f"{self.name} ({'uploaded zip' if self.name.lower().endswith('.zip') else 'pictures'}: prepare first)"


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
        if p.name.startswith(".") or not p.resolve().is_relative_to(resolved_root):  # a symlink out: not listed
            continue
        if p.is_file() and p.suffix.lower() == ".zip" and NAME.match(p.name):
            found.append(DataFolder(p.name, p, False))
            continue
        if not p.is_dir() or p.name.endswith(".partial"):
            continue
        if (p / "train_images.npy").exists():
            if training_count(p) > 0:  # one prepared with no usable picture is nothing to train on
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


def training_count(folder: Path) -> int:
    """How many training pictures a prepared folder holds (0 when none, or when it cannot be read)."""
    try:
        return len(np.load(folder / "train_labels.npy", mmap_mode="r"))
    except (OSError, ValueError):
        return 0


def require_training_pictures(out: Path, source: str) -> None:
    """A preparation that kept no picture has failed: say why (the skipped files' reasons) and remove
    what it wrote, so that it is never offered as a data folder."""
    if training_count(out) > 0:
        return
    manifest = manifest_of(out)
    skipped = manifest.get("skipped") or []
    reasons = "; ".join(f"{Path(str(s.get('path', '?'))).name}: {s.get('reason', '?')}" if isinstance(s, dict)
                        else str(s) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    if manifest.get("tool") == "preprocess.py":  # written by this preparation (or an earlier empty one): ours
        shutil.rmtree(out, ignore_errors=True)
    candidates = (manifest.get("counts") or {}).get("candidates", len(skipped))
    raise InputError(f"preparing {source!r} failed: none of its {candidates} file(s) could be read as a picture"
                     + (f" ({reasons})" if reasons else "") + ". Nothing was prepared; add pictures (.jpg, .png, "
                     ".webp ...) and press Prepare again.")


def prepared_name(name: str, size: int) -> str:
    stem = name[:-len(".zip")] if name.lower().endswith(".zip") else name
    return f"{stem}_{size}{PREPARED_SUFFIX}"


# An uploaded zip is checked before it is kept, and read in place by preprocess (never extracted).
MAX_ZIP_FILES = 50_000
MAX_ZIP_RATIO = 200  # uncompressed / compressed, per member and overall: more is a zip bomb
MAX_ZIP_UNPACKED = 8 * 2**30


def check_zip(path: Path, max_bytes: int) -> list[str]:
    """Refuse anything but a plain zip of pictures: too large, not a zip, too many files, a member
    that would land outside the folder (absolute, ``..``, a symlink), or a compression ratio only a
    zip bomb has. Returns the picture names."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"the zip is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB (--max-upload-mb)")
    if not zipfile.is_zipfile(path):
        raise InputError("that file is not a zip archive: upload a .zip of class folders of pictures")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"the zip cannot be read ({e})") from None
    if len(infos) > MAX_ZIP_FILES:
        raise InputError(f"the zip holds {len(infos):,} entries; at most {MAX_ZIP_FILES:,} are accepted")
    total = 0
    pictures = []
    for info in infos:
        name = info.filename
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise InputError(f"the zip has an entry outside its own folder ({name!r}): refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"the zip has a symbolic link ({name!r}): refused")
        if info.flag_bits & 0x1:
            raise InputError("the zip is encrypted: upload an unencrypted one")
        total += info.file_size
        if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
            raise InputError(f"{name!r} expands {info.file_size / max(1, info.compress_size):.0f}x: refused as a "
                             "zip bomb")
        if not info.is_dir() and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            pictures.append(name)
    if total > MAX_ZIP_UNPACKED or total > MAX_ZIP_RATIO * max(size, 1) and total > 64 * 2**20:
        raise InputError(f"the zip expands to {total / 2**20:.0f} MB: refused as a zip bomb")
    if not pictures:
        raise InputError("the zip holds no pictures (.jpg, .png, .webp ...)")
    return pictures


def accept_zip(root: Path, upload: Path, original_name: str, max_bytes: int) -> str:
    """Check an uploaded zip and keep it in the data root as ``<name>.zip`` (a new name if taken);
    returns that name, which Prepare then reads in place."""
    check_zip(upload, max_bytes)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(original_name or "upload").stem).strip("._-")[:60] or "upload"
    root.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(root).free < upload.stat().st_size + 256 * 2**20:
        raise InputError("not enough free disk space under the data root for that zip")
    name, k = f"{stem}.zip", 1
    while (root / name).exists() or (root / prepared_name(name, 32)).exists():
        k += 1
        name = f"{stem}_{k}.zip"
    shutil.copyfile(upload, root / name)
    return name


def prepare(root: Path, name: str, size: int, val_fraction: float, embed_fn: Callable | None = None,
            min_free_bytes: int = 256 * 2**20) -> Path:
    """Preprocess raw folder ``name`` into ``<name>_<size>px`` beside it (resumes an interrupted run;
    an up-to-date one is reused). A single folder of pictures is one class, named after the folder."""
    src = resolve_under(root, name)
    is_zip = src.is_file() and src.suffix.lower() == ".zip"
    if not (src.is_dir() or is_zip):
        raise InputError(f"{name!r} is not a folder (or an uploaded zip) under the data root")
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
    single = None if is_zip else _single_class_view(src)
    try:
        preprocess(single or src, out, size=size, val_fraction=val_fraction, embed_fn=embed_fn, progress=True,
                   workers=1 if single else None)
    except PreprocessError as e:
        raise InputError(str(e)) from None
    finally:
        if single is not None:
            shutil.rmtree(single.parent, ignore_errors=True)
    require_training_pictures(out, name)
    return out


TINY_IMAGENET_ZIP = "tiny-imagenet-200.zip"


def tiny_imagenet_zip(root: Path) -> Path | None:
    """Tiny ImageNet's zip in the data root (downloaded there, or put there by hand), if present."""
    path = root / TINY_IMAGENET_ZIP
    return path if path.is_file() and path.resolve().is_relative_to(root.resolve()) else None


def download_tiny_imagenet(root: Path, url: str | None = None, md5: str | None = None,
                           min_free_bytes: int = 600 * 2**20) -> Path:
    """Fetch Tiny ImageNet's zip into the data root (resumable; the official URL's MD5 is checked, a
    mirror's only when ``md5`` is given); a zip already there is kept."""
    if (have := tiny_imagenet_zip(root)) is not None:
        return have
    spec = DOWNLOADS["tiny-imagenet"]
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < min_free_bytes:
        raise InputError(f"only {free / 2**20:.0f} MB free under the data root: Tiny ImageNet needs "
                         f"{min_free_bytes / 2**20:.0f} MB")
    try:
        url = url or spec["url"]
        return download(url, root / spec["filename"], md5=md5 or (spec["md5"] if url == spec["url"] else None),
                        progress=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"the Tiny ImageNet download failed: {e}") from None


def prepare_tiny_imagenet(root: Path, class_names: str, size: int, val_fraction: float,
                          embed_fn: Callable | None = None) -> Path:
    """Tiny ImageNet classes picked by name (or wnid), comma-separated, from its zip in the data root,
    into ``tiny_<names>_<size>px``."""
    names = [n.strip() for n in str(class_names or "").split(",") if n.strip()]
    if not names:
        raise InputError("Name some Tiny ImageNet classes, comma-separated (e.g. goldfish, tabby, school bus).")
    if len(names) > 200:
        raise InputError(f"{len(names)} classes: Tiny ImageNet has 200")
    if size not in (16, 32, 64):
        raise InputError(f"image size {size}: choose 16, 32 or 64")
    if not 0 <= val_fraction < 0.5:
        raise InputError(f"held-out fraction {val_fraction}: choose from 0 up to 0.5")
    src = tiny_imagenet_zip(root)
    if src is None:
        raise InputError(f"no {TINY_IMAGENET_ZIP} in the data root: press Download (237 MB, checksummed) or "
                         "copy it there")
    slug = re.sub(r"[^a-z0-9]+", "-", "_".join(names[:3]).lower()).strip("-")[:40] or "classes"
    slug += f"-and-{len(names) - 3}-more" if len(names) > 3 else ""
    out = resolve_under(root, f"tiny_{slug}_{size}{PREPARED_SUFFIX}")
    try:
        preprocess(src, out, size=size, classes=names, val_fraction=val_fraction, embed_fn=embed_fn, progress=True,
                   overwrite=True)
    except PreprocessError as e:
        raise InputError(str(e)) from None
    require_training_pictures(out, ", ".join(names))
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


def examples(folder: Path, per_class: int = 6, max_classes: int = 24) -> list[tuple[np.ndarray, str]]:
    """A strip of each class's first ``per_class`` training images side by side (one picture per
    class, up to ``max_classes`` classes), captioned with the class name."""
    try:
        images = np.load(folder / "train_images.npy", mmap_mode="r")
        labels = np.asarray(np.load(folder / "train_labels.npy", mmap_mode="r"))
        classes = _classes(folder)
    except (OSError, ValueError, KeyError):
        return []
    out = []
    for i, cl in enumerate(classes[:max_classes]):
        picks = np.flatnonzero(labels == i)[:per_class]
        if len(picks):
            strip = np.concatenate([np.asarray(images[j]) for j in picks], axis=1)  # (H, k*W, 3)
            out.append((strip, cl.get("name") or str(i)))
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
