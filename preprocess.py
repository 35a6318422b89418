#!/usr/bin/env python3
"""Turn ImageNet-format data into training-ready arrays, once.

Training (and the app) never decode a JPEG: they read the folder this tool
writes through :class:`data.PreprocessedDataset`.

Inputs (the layout is detected; a zip is read in place, never extracted):

* ILSVRC-2012 style ``train/<wnid>/*.JPEG`` (also the ``train`` folder itself,
  or any folder above it such as Kaggle's ``ILSVRC/Data/CLS-LOC/train``). Class
  names come from ``--synsets``, else a ``LOC_synset_mapping.txt`` next to
  ``train/`` (or above it), else the built-in copy in
  ``assets/LOC_synset_mapping.txt``.
* Tiny ImageNet: ``tiny-imagenet-200.zip`` or its extracted folder,
  ``train/<wnid>/images/*.JPEG`` with ``wnids.txt`` (the class list) and
  ``words.txt`` (the names).
* A generic folder of class folders whose names are the class names
  (``cats/…``, ``golden_retriever/…``; underscores become spaces in names).

Output folder (``--out``)::

    train_images.npy   uint8 (N, size, size, 3), np.load(..., mmap_mode="r")
    train_labels.npy   int64 (N,)
    val_images.npy     the held-out split (--val-fraction; may have 0 rows)
    val_labels.npy
    classes.json       index, wnid, names, prompt, count per class
    class_embeddings.npy     float32 (C, 384): each class prompt
    template_embeddings.npy  float32 (C, K, 384): K training prompts per class (--text-variants)
    manifest.json      source, layout, counts, skipped files, duplicates and broken
                       links (symlinks are followed; each real file is read once),
                       versions, options

The work goes to ``<out>.partial`` and is renamed to ``<out>`` only when
complete. An interrupted run (Ctrl-C, SIGTERM, a crash, a kill) leaves a
checkpoint there; re-running the same command resumes from it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import signal
import stat
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import multiprocessing as mp

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

log = logging.getLogger("preprocess")

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent
BUILTIN_SYNSETS = REPO_ROOT / "assets" / "LOC_synset_mapping.txt"
DEFAULT_OUT = "data/preprocessed"
DEFAULT_DOWNLOAD_DIR = "data/downloads"
DEFAULT_SIZE = 64
DEFAULT_DESCRIPTIONS = REPO_ROOT / "assets" / "class_descriptions.tsv"
# 2% of each class is held out by default (10 of Tiny ImageNet's 500 per class;
# a class with a single image keeps it for training).
DEFAULT_VAL_FRACTION = 0.02
# Images above this many pixels are refused as possible decompression bombs.
# 100 MP is far above any ImageNet photo (the largest are ~ 20 MP) and below
# what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
WNID_RE = re.compile(r"^n\d{8}$")

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The MD5 of the official archive (248,100,043 bytes) as published in many
# public Tiny ImageNet loaders (torchvision-style ``md5 = ...`` constants). We
# could not fetch the archive from here to compute its SHA-256, so the default
# verification for the official URL is this MD5; the SHA-256 is always
# computed and printed, and checked when ``--sha256`` is given. (The shared
# ``../shared/data/tiny-imagenet-200.zip`` is a train-only repack with a
# different checksum.)
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
DOWNLOADS = {"tiny-imagenet": {"url": TINY_IMAGENET_URL, "md5": TINY_IMAGENET_MD5, "filename": "tiny-imagenet-200.zip"}}

EmbedFn = Callable[[list[str]], np.ndarray]


class PreprocessError(RuntimeError):
    """A problem with the input or the options, reported without a traceback by the CLI."""


# --------------------------------------------------------------------------- sources


class NotRegularFileError(OSError):
    """A path that is a FIFO, socket or device, not a file: reading it could block forever or have side effects."""


def _file_kind(mode: int) -> str:
    """A short name for what an ``st_mode`` describes (for reasons in the manifest)."""
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "unknown type"


# Entries of each list kept in the manifest (the counts are always complete).
MAX_LISTED = 1000


@dataclass
class ScanReport:
    """What a folder scan met besides plain files: the same file or folder reached again, dangling links,
    and special files. Zip sources have none of these."""

    # {"path", "same_as"}: one real file under a second name (symlink or hard link)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    # {"path", "same_as"}: a link to a folder already read (``loop -> ../..``), not walked again
    repeated_folders: list[dict[str, str]] = field(default_factory=list)
    broken_links: list[dict[str, str]] = field(default_factory=list)  # {"path", "target"}
    not_regular: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: FIFOs, sockets, devices

    def any(self) -> bool:
        return bool(self.duplicates or self.repeated_folders or self.broken_links or self.not_regular)

    def summary(self) -> str:
        return (f"{len(self.duplicates)} duplicate files (one real file reached under several names), "
                f"{len(self.repeated_folders)} links to folders already read, {len(self.broken_links)} broken links, "
                f"{len(self.not_regular)} special files (FIFOs, sockets, devices) skipped")


class Source:
    """A zip archive or a folder, seen as a list of relative POSIX paths."""

    kind: str = "?"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.scan_report = ScanReport()  # filled in by ``files()`` where it applies

    def files(self) -> list[str]:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "type": self.kind}

    def close(self) -> None:  # pragma: no cover - trivial
        pass


class FolderSource(Source):
    kind = "folder"

    def files(self) -> list[str]:
        """Every non-hidden regular file below the folder, following symlinks.

        Each real folder is read once and each real file listed once, keyed by
        ``(st_dev, st_ino)``: a link back up the tree (``loop -> ../..``) would
        otherwise be walked until the path got too long, and a file reached under
        two names would be trained on twice. Real entries win over links: a
        folder's own files and subfolders are read first and links are followed
        afterwards, so a link never takes the name of a folder that is really in
        the tree. What was left out is in ``self.scan_report``.
        """
        report = self.scan_report = ScanReport()
        seen_dirs: dict[tuple[int, int], str] = {}
        seen_files: dict[tuple[int, int], str] = {}
        out: list[str] = []
        links: list[str] = []  # relative paths of symlinks, followed after all real entries

        def rel_of(rel_dir: str, name: str) -> str:
            return f"{rel_dir}/{name}" if rel_dir else name

        def add_special(rel: str, mode: int) -> None:
            report.not_regular.append({"path": rel, "reason": f"not a regular file ({_file_kind(mode)})"})

        def add_file(rel: str, key: tuple[int, int]) -> None:
            if key in seen_files:
                report.duplicates.append({"path": rel, "same_as": seen_files[key]})
                return
            seen_files[key] = rel
            out.append(rel)

        def walk(rel_dir: str, st: os.stat_result) -> None:
            """Read the real folder ``rel_dir`` and the real folders below it; queue the links met."""
            pending = [(rel_dir, st)]
            while pending:
                d, dst = pending.pop()
                if (dst.st_dev, dst.st_ino) in seen_dirs:  # a bind mount of a folder already read
                    report.repeated_folders.append({"path": d, "same_as": seen_dirs[(dst.st_dev, dst.st_ino)]})
                    continue
                seen_dirs[(dst.st_dev, dst.st_ino)] = d
                try:
                    with os.scandir(self.path / d if d else self.path) as it:
                        entries = sorted(it, key=lambda e: e.name)
                except OSError as e:
                    log.warning("cannot read folder %s: %s", self.path / d, e)
                    continue
                subdirs = []
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    rel = rel_of(d, e.name)
                    try:
                        if e.is_symlink():
                            links.append(rel)
                        elif e.is_dir(follow_symlinks=False):
                            subdirs.append((rel, e.stat(follow_symlinks=False)))
                        else:
                            # stat, not the listing's inode number: on overlay filesystems only
                            # stat's (st_dev, st_ino) is sure to name one file (about 1 us a file).
                            fst = e.stat(follow_symlinks=False)
                            if stat.S_ISREG(fst.st_mode):
                                add_file(rel, (fst.st_dev, fst.st_ino))
                            else:
                                add_special(rel, fst.st_mode)
                    except OSError as err:  # vanished while scanning, or no permission
                        log.warning("cannot stat %s: %s", self.path / rel, err)
                pending.extend(reversed(subdirs))

        try:
            root_st = os.stat(self.path)
        except OSError as e:
            raise PreprocessError(f"cannot read --src {self.path}: {e}") from e
        walk("", root_st)
        # Links are followed only once the real tree is known, in the order met (so
        # the result does not depend on where a link sits relative to its target).
        i = 0
        while i < len(links):
            rel = links[i]
            i += 1
            path = self.path / rel
            try:
                st = os.stat(path)  # follows the link (and any chain of links); opens nothing
            except OSError:
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                report.broken_links.append({"path": rel, "target": target})
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    report.repeated_folders.append({"path": rel, "same_as": seen_dirs[key]})
                else:
                    walk(rel, st)
            elif stat.S_ISREG(st.st_mode):
                add_file(rel, (st.st_dev, st.st_ino))
            else:
                add_special(rel, st.st_mode)
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        path = self.path / rel
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"not a regular file ({_file_kind(st.st_mode)})")
        # O_NONBLOCK: should the path have become a FIFO since the check, opening
        # returns at once instead of waiting for a writer; it changes nothing for files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(f"not a regular file ({_file_kind(mode)})")
            return f.read()


class ZipSource(Source):
    kind = "zip"

    def __init__(self, path: Path):
        super().__init__(path)
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1

    @property
    def zf(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited over fork shares its file
        # offset with the parent and the other workers.
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def files(self) -> list[str]:
        out = []
        for info in self.zf.infolist():
            name = info.filename
            if info.is_dir() or name.startswith("__MACOSX/"):
                continue
            if any(part.startswith(".") for part in name.split("/")):
                continue
            out.append(name)
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        return self.zf.read(rel)

    def identity(self) -> dict[str, Any]:
        st = self.path.stat()
        return {**super().identity(), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def close(self) -> None:
        if self._zf is not None and self._pid == os.getpid():
            self._zf.close()
        self._zf = None

    def __getstate__(self):
        return {"path": self.path, "scan_report": ScanReport(), "_zf": None, "_pid": -1}


def open_source(src: str | os.PathLike) -> Source:
    """Open ``src`` (a zip file or a folder)."""
    p = Path(src).expanduser()
    if not p.exists():
        raise PreprocessError(f"--src {p} does not exist")
    if p.is_dir():
        return FolderSource(p)
    if zipfile.is_zipfile(p):
        return ZipSource(p)
    raise PreprocessError(f"--src {p} is neither a folder nor a zip archive")


def is_image_name(name: str) -> bool:
    """Whether a path has an image file extension (case-insensitive)."""
    dot = name.rfind(".")
    return dot > name.rfind("/") + 1 and name[dot:].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- layout


@dataclass
class ClassInfo:
    wnid: str
    names: list[str]
    files: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class Layout:
    kind: str  # "ilsvrc", "tiny-imagenet" or "generic"
    base: str  # the folder holding the class folders, relative to the source ("" = top)
    classes: list[ClassInfo]
    names_from: str
    empty_classes: list[str] = field(default_factory=list)


def _dirname(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _parent(d: str) -> str:
    return _dirname(d)


def _ancestors(d: str) -> Iterator[str]:
    """The folders above ``d`` (relative paths), nearest first, ending with the top ``""``."""
    while d:
        d = _parent(d)
        yield d


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def parse_synsets_text(text: str) -> dict[str, list[str]]:
    """Parse ``LOC_synset_mapping.txt`` (``wnid names``) or ``words.txt`` (``wnid<TAB>names``)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        wnid = parts[0]
        names = [n.strip() for n in parts[1].split(",")] if len(parts) > 1 else []
        names = [n for n in names if n]
        out[wnid] = names or [wnid]
    return out


def parse_synsets_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """A synset mapping from a text file (see above) or ``imagenet_class_index.json``."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        out: dict[str, list[str]] = {}
        for value in data.values() if isinstance(data, dict) else data:
            wnid, name = value[0], value[1]
            out[wnid] = [n.strip().replace("_", " ") for n in str(name).split(",") if n.strip()] or [wnid]
        return out
    return parse_synsets_text(text)


def builtin_synsets() -> dict[str, list[str]]:
    """The built-in 1000-class ILSVRC-2012 mapping (``assets/LOC_synset_mapping.txt``)."""
    if BUILTIN_SYNSETS.is_file():
        return parse_synsets_text(BUILTIN_SYNSETS.read_text(encoding="utf-8"))
    log.warning("built-in synset mapping %s is missing", BUILTIN_SYNSETS)
    return {}


def _find_imagenet_train_dir(files: Sequence[str]) -> tuple[str, bool] | None:
    """The shallowest ``.../train`` folder whose sub-folders are wnids; and whether images sit in ``images/``."""
    image_dirs = {rel.rpartition("/")[0] for rel in files if "/" in rel and is_image_name(rel)}
    best: tuple[int, str, bool] | None = None
    for d in image_dirs:
        parts = d.split("/")
        # .../train/<wnid>/<file> or .../train/<wnid>/images/<file>
        for k, tiny in ((len(parts) - 2, False), (len(parts) - 3, True)):
            if k < 0 or parts[k] != "train" or not WNID_RE.match(parts[k + 1]):
                continue
            if tiny and parts[k + 2] != "images":
                continue
            cand = (k, "/".join(parts[: k + 1]), tiny)
            if best is None or cand < best:
                best = cand
    if best is not None:
        return best[1], best[2]
    # The train folder itself was given: <wnid>/<file> or <wnid>/images/<file>.
    tops = {r.split("/", 1)[0] for r in files if "/" in r}
    if tops and all(WNID_RE.match(t) for t in tops):
        flat = any("/" not in d for d in image_dirs)
        tiny = any(d.count("/") == 1 and d.endswith("/images") for d in image_dirs)
        if flat or tiny:
            return "", tiny and not flat
    return None


def _group_by_class(files: Sequence[str], base: str) -> dict[str, tuple[list[str], list[str]]]:
    """``{class_folder: (image files, other files)}`` for files below ``base/<class>/``."""
    prefix = base + "/" if base else ""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for rel in files:
        if not rel.startswith(prefix):
            continue
        rest = rel[len(prefix):]
        if "/" not in rest:
            continue
        cls = rest.split("/", 1)[0]
        imgs, other = groups.setdefault(cls, ([], []))
        (imgs if is_image_name(rel) else other).append(rel)
    return groups


def _subdirs(source: Source, base: str) -> list[str]:
    """Folders directly below ``base`` in a folder source (so that empty class folders are seen)."""
    if not isinstance(source, FolderSource):
        return []
    root = source.path / base if base else source.path
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _generic_base(files: Sequence[str]) -> str:
    base = ""
    for _ in range(4):
        prefix = base + "/" if base else ""
        below = [r[len(prefix):] for r in files if r.startswith(prefix)]
        subdirs = {r.split("/", 1)[0] for r in below if "/" in r}
        if "train" in subdirs and any(r.startswith("train/") and r.count("/") >= 2 for r in below):
            base = _join(base, "train")
            continue
        direct = [r for r in below if "/" not in r and is_image_name(r)]
        if len(subdirs) == 1 and not direct and not any(r.count("/") == 1 and is_image_name(r) for r in below):
            base = _join(base, next(iter(subdirs)))
            continue
        break
    return base


def detect_layout(source: Source, files: Sequence[str] | None = None, synsets: str | os.PathLike | None = None) -> Layout:
    """Work out which of the supported layouts ``source`` holds, its classes and their files."""
    files = list(files if files is not None else source.files())
    if not files:
        raise PreprocessError(f"{source.path} holds no files")
    fileset = set(files)
    found = _find_imagenet_train_dir(files)
    user_map = parse_synsets_file(synsets) if synsets else None

    if found is not None:
        base, images_subdir = found
        parent = _parent(base) if base else ""
        wnids_txt = _join(parent, "wnids.txt") if base else None
        words_txt = _join(parent, "words.txt") if base else None
        groups = _group_by_class(files, base)
        is_tiny = images_subdir or (wnids_txt in fileset) or (words_txt in fileset)
        if base == "" and isinstance(source, FolderSource):
            # The train folder itself: look beside it for the metadata files.
            outer = source.path.resolve().parent
            if (outer / "wnids.txt").is_file() or (outer / "words.txt").is_file():
                is_tiny = True
        names_map: dict[str, list[str]] = {}
        names_from = "built-in LOC_synset_mapping.txt"
        wanted: list[str]
        if is_tiny:
            kind = "tiny-imagenet"
            wnids_text = _read_meta(source, wnids_txt, "wnids.txt")
            words_text = _read_meta(source, words_txt, "words.txt")
            if wnids_text is not None:
                wanted = sorted({w.strip() for w in wnids_text.split() if w.strip()})
            else:
                wanted = sorted(c for c in groups if WNID_RE.match(c))
            names_map = builtin_synsets()
            if words_text is not None:
                names_map.update(parse_synsets_text(words_text))
                names_from = "words.txt"
        else:
            kind = "ilsvrc"
            wanted = sorted({c for c in groups if WNID_RE.match(c)} | {c for c in _subdirs(source, base) if WNID_RE.match(c)})
            mapping_text = None
            # LOC_synset_mapping.txt next to train/, or in any folder above it.
            for d in _ancestors(base):
                cand = _join(d, "LOC_synset_mapping.txt")
                if cand in fileset:
                    mapping_text = source.read_bytes(cand).decode("utf-8")
                    names_from = cand
                    break
            if mapping_text is None and isinstance(source, FolderSource):
                outer = source.path.resolve()
                for p in (outer / "LOC_synset_mapping.txt", outer.parent / "LOC_synset_mapping.txt"):
                    if p.is_file():
                        mapping_text = p.read_text(encoding="utf-8")
                        names_from = str(p)
                        break
            names_map = builtin_synsets()
            if mapping_text is not None:
                names_map.update(parse_synsets_text(mapping_text))
        if user_map is not None:
            names_map.update(user_map)
            names_from = str(synsets)
        classes = []
        for wnid in wanted:
            imgs, other = groups.get(wnid, ([], []))
            names = names_map.get(wnid)
            if not names:
                if imgs:
                    log.warning("no human name for %s; using the wnid as its name", wnid)
                names = [wnid]
            classes.append(ClassInfo(wnid=wnid, names=list(names), files=sorted(imgs), ignored=sorted(other)))
        return Layout(kind=kind, base=base, classes=classes, names_from=names_from)

    base = _generic_base(files)
    groups = _group_by_class(files, base)
    if not groups:
        raise PreprocessError(
            f"{source.path}: no class folders found. Expected train/<wnid>/*.JPEG (ILSVRC), "
            "train/<wnid>/images/*.JPEG (Tiny ImageNet) or <class name>/<images> (generic)."
        )
    for folder in _subdirs(source, base):
        groups.setdefault(folder, ([], []))
    classes = []
    for folder in sorted(groups):
        imgs, other = groups[folder]
        name = folder.replace("_", " ").strip() or folder
        names = (user_map or {}).get(folder) or [name]
        classes.append(ClassInfo(wnid=folder, names=list(names), files=sorted(imgs), ignored=sorted(other)))
    return Layout(kind="generic", base=base, classes=classes, names_from=str(synsets) if user_map else "folder names")


def _read_meta(source: Source, rel: str | None, filename: str) -> str | None:
    if rel is not None:
        try:
            return source.read_bytes(rel).decode("utf-8", errors="replace")
        except (KeyError, FileNotFoundError, NotRegularFileError):
            pass
    if isinstance(source, FolderSource) and rel is None:
        p = source.path.resolve().parent / filename
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    return None


# --------------------------------------------------------------------------- selection


def parse_class_selection(spec: str | Sequence[str] | None) -> list[str] | None:
    """``--classes``: comma-separated wnids/names, or a file with one per line (``wnid name`` lines are fine)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [s.strip() for s in spec if s and s.strip()]
    p = Path(spec).expanduser()
    if p.is_file():
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            first = line.split(None, 1)[0]
            out.append(first if WNID_RE.match(first) else line)
        return out
    return [s.strip() for s in spec.split(",") if s.strip()]


def select_classes(classes: list[ClassInfo], wanted: Sequence[str] | None) -> list[ClassInfo]:
    """Keep the classes named in ``wanted`` (wnids, folder names or human names, case-insensitive)."""
    if not wanted:
        return classes
    by_id = {c.wnid.lower(): c for c in classes}
    by_name: dict[str, list[ClassInfo]] = {}
    for c in classes:
        for n in {n.lower() for n in c.names}:
            by_name.setdefault(n, []).append(c)
    chosen: dict[str, ClassInfo] = {}
    unknown, ambiguous = [], []
    for w in wanted:
        key = w.strip().lower()
        if key in by_id:
            chosen[by_id[key].wnid] = by_id[key]
        elif key in by_name:
            hits = by_name[key]
            first = [c for c in hits if c.names[0].lower() == key]
            if len(hits) == 1 or len(first) == 1:
                c = hits[0] if len(hits) == 1 else first[0]
                chosen[c.wnid] = c
            else:
                ambiguous.append(f"{w!r} ({', '.join(c.wnid for c in hits)})")
        else:
            unknown.append(repr(w))
    if unknown or ambiguous:
        msg = []
        if unknown:
            msg.append(f"unknown classes: {', '.join(unknown)}")
        if ambiguous:
            msg.append(f"ambiguous names, give the wnid instead: {'; '.join(ambiguous)}")
        raise PreprocessError("--classes: " + "; ".join(msg))
    return [c for c in classes if c.wnid in chosen]


def split_files(
    classes: list[ClassInfo], val_fraction: float, max_per_class: int | None, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Per class, a seeded shuffle picks at most ``max_per_class`` files and holds out ``val_fraction`` of them.

    Each split is returned in (class index, path) order, so the output is
    deterministic and independent of the number of workers.
    """
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for idx, c in enumerate(classes):
        files = sorted(c.files)
        rng = random.Random(f"{seed}:{c.wnid}")
        rng.shuffle(files)
        if max_per_class is not None:
            files = files[:max_per_class]
        n_val = int(round(len(files) * val_fraction)) if len(files) > 1 else 0
        n_val = min(n_val, len(files) - 1) if files else 0
        val.extend((f, idx) for f in sorted(files[:n_val]))
        train.extend((f, idx) for f in sorted(files[n_val:]))
    return train, val


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


def _reason(e: BaseException) -> str:
    if isinstance(e, NotRegularFileError):
        return str(e)  # already a reason ("not a regular file (fifo)"), not an error to decode
    msg = str(e).strip().replace("\n", " ")
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", msg)  # keep manifests reproducible
    return f"{type(e).__name__}: {msg}"[:300] if msg else type(e).__name__


# Worker-process state, set by _init_worker (or by the in-process path).
_W: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """Worker side: exit when the parent dies (killed with -9, say) instead of lingering as an orphan."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(source: Source, size: int, max_pixels: int, parent: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's checkpointing handler
    if parent is not None:
        _exit_with_parent(parent)
    _W.update(source=source, size=size)
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")


def process_chunk(paths: Sequence[str]) -> tuple[np.ndarray, list[bool], list[str]]:
    """Decode ``paths`` with the worker's source: (ok images stacked, ok flag per path, reason per failure)."""
    source: Source = _W["source"]
    size: int = _W["size"]
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    ok: list[bool] = []
    reasons: list[str] = []
    n = 0
    for rel in paths:
        try:
            data = source.read_bytes(rel)
            if not data:
                raise ValueError("empty file (0 bytes)")
            out[n] = decode_image(io.BytesIO(data), size)
            n += 1
            ok.append(True)
        except MemoryError as e:
            ok.append(False)
            reasons.append(_reason(e))
        except Exception as e:  # noqa: BLE001 - any bad file is skipped, never a crash
            ok.append(False)
            reasons.append(_reason(e))
    return out[:n], ok, reasons


# --------------------------------------------------------------------------- output helpers


def _shrink_npy(path: Path, n: int) -> None:
    """Rewrite a C-order .npy's first dimension to ``n`` in place and truncate the data."""
    with open(path, "rb") as f:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        old_len = f.tell()
    if shape[0] == n:
        return
    new_shape = (n, *shape[1:])
    buf = io.BytesIO()
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": fortran, "shape": new_shape}
    if version == (1, 0):
        npformat.write_array_header_1_0(buf, header)
    else:
        npformat.write_array_header_2_0(buf, header)
    new_header = buf.getvalue()
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if len(new_header) == old_len:
        with open(path, "r+b") as f:
            f.write(new_header)
            f.truncate(old_len + n * row_bytes)
    else:  # pragma: no cover - numpy leaves room for this, but be safe
        arr = np.load(path, mmap_mode="r")[:n].copy()
        np.save(path, arr)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import PIL

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "preprocess_format": str(FORMAT_VERSION),
    }


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_embed_fn(prompts: list[str]) -> np.ndarray:
    """The project's text encoder (all-MiniLM-L6-v2, 384-d, unit norm)."""
    from models.text_encoder import encode_prompts

    return encode_prompts(prompts)


def compute_embeddings(
    names: Sequence[str], template: str, embed_fn: EmbedFn, training_prompts: Sequence[Sequence[str]] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class-prompt embeddings ``(C, D)``, training-prompt embeddings ``(C, K, D)`` and the class prompts.

    ``training_prompts``: K prompts per class (``prompting.prompt_table``); by
    default each class name in the six ``PROMPT_TEMPLATES``.
    """
    from models.text_encoder import PROMPT_TEMPLATES, TEXT_EMBED_DIM, class_prompt

    prompts = [class_prompt(n, template) for n in names]
    if training_prompts is None:
        training_prompts = [[class_prompt(n, t) for t in PROMPT_TEMPLATES] for n in names]
    if len(training_prompts) != len(names) or len({len(r) for r in training_prompts}) > 1:
        raise PreprocessError("training prompts must be one equally long list per class")
    width = len(training_prompts[0]) if names else len(PROMPT_TEMPLATES)
    if not names:
        return np.zeros((0, TEXT_EMBED_DIM), np.float32), np.zeros((0, width, TEXT_EMBED_DIM), np.float32), prompts
    # Each distinct text is encoded once (a padded table repeats some).
    unique = list(dict.fromkeys(prompts + [p for row in training_prompts for p in row]))
    # Modest calls: the text encoder shows a progress bar of its own for big ones.
    vecs = np.concatenate(
        [np.asarray(embed_fn(unique[i: i + 256]), dtype=np.float32) for i in range(0, len(unique), 256)]
    )
    if vecs.ndim != 2 or vecs.shape[0] != len(unique):
        raise PreprocessError(f"embedding function returned shape {vecs.shape}")
    row_of = {p: i for i, p in enumerate(unique)}
    cls = np.ascontiguousarray(vecs[[row_of[p] for p in prompts]])
    tmpl = np.ascontiguousarray(vecs[[[row_of[p] for p in row] for row in training_prompts]])
    return cls, tmpl, prompts


# --------------------------------------------------------------------------- main pipeline


OUTPUT_FILES = (
    "train_images.npy",
    "train_labels.npy",
    "val_images.npy",
    "val_labels.npy",
    "classes.json",
    "class_embeddings.npy",
    "template_embeddings.npy",
    "manifest.json",
)


@dataclass
class Result:
    out: Path
    manifest: dict[str, Any]
    skipped_run: bool = False  # True when the output was already complete and up to date


def _chunk_size_for(n: int, workers: int, requested: int | None) -> int:
    if requested:
        return max(1, requested)
    return int(min(256, max(4, math.ceil(n / max(1, workers * 8)))))


def preprocess(
    src: str | os.PathLike,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    size: int = DEFAULT_SIZE,
    classes: str | Sequence[str] | None = None,
    max_per_class: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    synsets: str | os.PathLike | None = None,
    workers: int | None = None,
    prompt_template: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    embed_fn: EmbedFn | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_size: int | None = None,
    progress: bool = True,
    checkpoint_seconds: float = 10.0,
    text_variants: str = "rich",
    descriptions: str | os.PathLike | None = None,
) -> Result:
    """Preprocess ``src`` into ``out``; see the module docstring. Returns the manifest.

    ``embed_fn(list_of_prompts) -> (N, 384) float32`` defaults to the project's
    text encoder; tests pass a cheap stand-in. ``text_variants`` and
    ``descriptions`` choose the texts each class is trained under
    (``prompting.class_training_prompts``).
    """
    from models.text_encoder import DEFAULT_PROMPT_TEMPLATE, TEXT_MODEL_NAME
    from prompting import TEXT_VARIANTS, class_training_prompts, prompt_table, read_descriptions

    t0 = time.time()
    template = prompt_template or DEFAULT_PROMPT_TEMPLATE
    if template.count("{}") != 1:
        raise PreprocessError(f"--prompt-template must contain exactly one '{{}}', got {template!r}")
    if size < 8:
        raise PreprocessError(f"--size must be at least 8, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise PreprocessError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if max_per_class is not None and max_per_class < 1:
        raise PreprocessError(f"--max-per-class must be >= 1, got {max_per_class}")
    if text_variants not in TEXT_VARIANTS:
        raise PreprocessError(f"--text-variants must be one of {TEXT_VARIANTS}, got {text_variants!r}")
    if descriptions is not None and text_variants == "basic":
        raise PreprocessError("--descriptions needs --text-variants rich")
    try:
        described = read_descriptions(descriptions) if descriptions is not None else {}
    except (OSError, ValueError) as e:
        raise PreprocessError(f"--descriptions: {e}") from e
    workers = default_workers() if not workers or workers < 1 else workers
    out = Path(out).expanduser()
    partial = out.with_name(out.name + ".partial")

    source = open_source(src)
    stack = contextlib.ExitStack()
    try:
        log.info("scanning %s", source.path)
        files = source.files()
        scan = source.scan_report
        if scan.any():
            log.warning("scan of %s: %s (listed in manifest.json)", source.path, scan.summary())
        # Special files never become candidates (so they take no place in the splits); they are
        # reported among the skipped files, next to the ones that failed to decode.
        scan_skipped = [{"path": e["path"], "split": None, "label": None, "reason": e["reason"]}
                        for e in scan.not_regular]
        layout = detect_layout(source, files, synsets)
        selection = parse_class_selection(classes)
        chosen = select_classes(layout.classes, selection)
        empty = [c.wnid for c in chosen if not c.files]
        for w in empty:
            log.warning("class %s has no image files; it is left out", w)
        chosen = [c for c in chosen if c.files]
        if not chosen:
            raise PreprocessError(f"{source.path}: no images found in any selected class")
        ignored = [f for c in chosen for f in c.ignored]
        train_items, val_items = split_files(chosen, val_fraction, max_per_class, seed)
        log.info(
            "layout %s (base %r): %d classes, %d train + %d val images, names from %s",
            layout.kind, layout.base or ".", len(chosen), len(train_items), len(val_items), layout.names_from,
        )

        options = {
            "src": str(src),
            "size": size,
            "classes": selection,
            "max_per_class": max_per_class,
            "val_fraction": val_fraction,
            "synsets": str(synsets) if synsets else None,
            "prompt_template": template,
            "seed": seed,
            "max_pixels": max_pixels,
            "workers": workers,
        }
        work_key = {
            "format": FORMAT_VERSION,
            "source": source.identity(),
            "size": size,
            "max_pixels": max_pixels,
            "train": _hash_json(train_items),
            "val": _hash_json(val_items),
        }
        text_model = TEXT_MODEL_NAME if embed_fn is None else f"custom:{getattr(embed_fn, '__name__', 'embed_fn')}"
        try:
            training_texts = [class_training_prompts([c.name] + [n for n in c.names if n != c.name],
                                                     described.get(c.wnid, ()), text_variants) for c in chosen]
        except ValueError as e:
            raise PreprocessError(str(e)) from e
        identity = {**work_key, "classes": [[c.wnid, c.names] for c in chosen], "template": template, "text": text_model}
        if text_variants != "basic":  # (basic keeps the identity folders made before the option existed have)
            identity["training_texts"] = _hash_json(training_texts)
        config_hash = _hash_json(identity)
        options["text_variants"] = text_variants
        options["descriptions"] = str(descriptions) if descriptions is not None else None

        lock = _lock_output(out)
        stack.callback(_unlock_output, lock)
        if out.exists():
            if _is_complete(out, config_hash) and not overwrite:
                log.info("%s is already complete for these options; nothing to do (--overwrite to redo)", out)
                return Result(out, json.loads((out / "manifest.json").read_text()), skipped_run=True)
            if not overwrite:
                raise PreprocessError(f"{out} already exists (made with other options?); pass --overwrite to replace it")
            if not _is_ours(out):
                raise PreprocessError(
                    f"refusing to replace {out}: it is not a preprocess.py output folder (choose another --out)"
                )

        # ---- images (resumable)
        splits = {"train": train_items, "val": val_items}
        state = _load_or_init_partial(partial, work_key, splits, size)
        if state["chunks_done"]:
            log.info("resuming from %s: %d images already done", partial, state["items_done"])
        chunk = state.get("chunk_size") or _chunk_size_for(len(train_items) + len(val_items), workers, chunk_size)
        state["chunk_size"] = chunk
        tasks: list[tuple[str, int, list[str]]] = []  # (split, start item index, paths)
        for split, items in splits.items():
            for s in range(0, len(items), chunk):
                tasks.append((split, s, [p for p, _ in items[s: s + chunk]]))
        _run_decode(source, partial, state, splits, tasks, size, workers, max_pixels, progress, checkpoint_seconds)

        # ---- finalize the arrays
        counts = {}
        for split, items in splits.items():
            n = state["written"][split]
            _shrink_npy(partial / f"{split}_images.npy", n)
            labels_mm = np.load(partial / f"{split}_labels.partial.npy", mmap_mode="r")
            _atomic_save_npy(partial / f"{split}_labels.npy", np.array(labels_mm[:n], dtype=np.int64))
            del labels_mm
            (partial / f"{split}_labels.partial.npy").unlink()
            counts[split] = n

        # ---- classes + embeddings
        train_labels = np.load(partial / "train_labels.npy")
        val_labels = np.load(partial / "val_labels.npy")
        n_train = np.bincount(train_labels, minlength=len(chosen)) if len(train_labels) else np.zeros(len(chosen), int)
        n_val = np.bincount(val_labels, minlength=len(chosen)) if len(val_labels) else np.zeros(len(chosen), int)
        embed = embed_fn or default_embed_fn
        table = prompt_table(training_texts)
        log.info("encoding %d class prompts and %d training prompts per class (%s text)", len(chosen),
                 len(table[0]), text_variants)
        with _tqdm_disabled(not progress):  # the encoder's own loading bars
            cls_emb, tmpl_emb, prompts = compute_embeddings([c.name for c in chosen], template, embed, table)
        _atomic_save_npy(partial / "class_embeddings.npy", cls_emb)
        _atomic_save_npy(partial / "template_embeddings.npy", tmpl_emb)
        classes_doc = {
            "prompt_template": template,
            "classes": [
                {
                    "index": i,
                    "wnid": c.wnid,
                    "name": c.name,
                    "names": c.names,
                    "prompt": prompts[i],
                    "count": int(n_train[i]),
                    "training_prompts": training_texts[i],
                }
                for i, c in enumerate(chosen)
            ],
        }
        _atomic_write_text(partial / "classes.json", json.dumps(classes_doc, indent=1, ensure_ascii=False) + "\n")

        for c, nt in zip(chosen, n_train):
            if nt == 0:
                log.warning("class %s (%s) has no training images after skipping bad files", c.wnid, c.name)
        elapsed = time.time() - t0
        decoded = len(train_items) + len(val_items)
        skipped = scan_skipped + state["skipped"]
        manifest = {
            "tool": "preprocess.py",
            "format_version": FORMAT_VERSION,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {**source.identity(), "given_as": str(src)},
            "layout": layout.kind,
            "layout_base": layout.base,
            "names_from": layout.names_from,
            "image_size": size,
            "size": size,
            "image_format": "uint8 RGB, (N, H, W, 3), center crop + box/bicubic resize",
            "num_classes": len(chosen),
            "counts": {
                "train": counts["train"],
                "val": counts["val"],
                "candidates": decoded,
                "skipped": len(skipped),
                "ignored_non_image_files": len(ignored),
                "duplicates": len(scan.duplicates),
                "repeated_folders": len(scan.repeated_folders),
                "broken_links": len(scan.broken_links),
            },
            "per_class": {c.wnid: {"train": int(n_train[i]), "val": int(n_val[i])} for i, c in enumerate(chosen)},
            "skipped": skipped,
            "num_skipped": len(skipped),
            "ignored_files": ignored[:MAX_LISTED],
            # Symlinks are followed, but each real file and folder is read once; these were not.
            "duplicates": scan.duplicates[:MAX_LISTED],
            "num_duplicates": len(scan.duplicates),
            "repeated_folders": scan.repeated_folders[:MAX_LISTED],
            "broken_links": scan.broken_links[:MAX_LISTED],
            "num_broken_links": len(scan.broken_links),
            "empty_classes": empty,
            "text_model": text_model,
            "text_variants": text_variants,
            "training_prompts_per_class": len(table[0]),
            "descriptions": ({"path": str(descriptions), "classes_described": sum(1 for c in chosen if c.wnid in described)}
                             if descriptions is not None else None),
            "versions": _versions(),
            "seconds": round(elapsed, 3),
            "images_per_second": round(decoded / elapsed, 1) if elapsed > 0 else None,
            "resumed": bool(state.get("resumed")),
            "options": options,
            "config_hash": config_hash,
        }
        _atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        (partial / "state.json").unlink(missing_ok=True)

        # ---- publish
        _publish(partial, out)
        log.info(
            "wrote %s: %d train + %d val images of %dx%d, %d classes, %d skipped, in %.1fs (%.0f images/s)",
            out, counts["train"], counts["val"], size, size, len(chosen), len(skipped), elapsed,
            decoded / max(elapsed, 1e-9),
        )
        return Result(out, manifest)
    finally:
        stack.close()
        source.close()


def _lock_output(out: Path) -> Any:
    """Hold ``<out>.lock`` so that two runs never write the same output at once."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return None
    path = out.with_name(out.name + ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise PreprocessError(f"another preprocess.py run is writing {out} (it holds {path}); wait for it to finish")
    return (f, path)


def _unlock_output(lock: Any) -> None:
    if lock is None:
        return
    f, path = lock
    try:
        path.unlink()
    except OSError:
        pass
    f.close()


@contextlib.contextmanager
def _tqdm_disabled(disable: bool) -> Iterator[None]:
    """Silence third-party progress bars while ``disable`` is true.

    tqdm reads ``TQDM_DISABLE``; transformers' bars follow
    ``HF_HUB_DISABLE_PROGRESS_BARS`` (read when it is first imported).
    """
    names = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    if not disable:
        yield
        return
    old = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _is_ours(folder: Path) -> bool:
    """Whether ``folder`` holds only files this tool writes (so replacing it loses nothing else)."""
    if not folder.is_dir():
        return False
    allowed = set(OUTPUT_FILES) | {"state.json", "train_labels.partial.npy", "val_labels.partial.npy"}
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_dir() or not (name in allowed or name.endswith((".tmp", ".tmp.npy"))):
            return False
    return True


def _is_complete(out: Path, config_hash: str) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("config_hash") == config_hash and all((out / f).exists() for f in OUTPUT_FILES)


def _publish(partial: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load_or_init_partial(
    partial: Path, work_key: dict[str, Any], splits: dict[str, list[tuple[str, int]]], size: int
) -> dict[str, Any]:
    key_hash = _hash_json(work_key)
    state_path = partial / "state.json"
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            if state.get("work_key") == key_hash and all(
                (partial / f"{s}_images.npy").is_file() and (partial / f"{s}_labels.partial.npy").is_file()
                for s in splits
            ):
                state["resumed"] = state["chunks_done"] > 0
                return state
            log.info("discarding %s: it was made with other inputs or options", partial)
        except (OSError, ValueError, KeyError):
            log.warning("discarding unreadable checkpoint in %s", partial)
    if partial.exists():
        if not _is_ours(partial):
            raise PreprocessError(f"refusing to delete {partial}: it holds files preprocess.py did not write")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for split, items in splits.items():
        n = len(items)
        mm = npformat.open_memmap(partial / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        del mm
        lm = npformat.open_memmap(partial / f"{split}_labels.partial.npy", mode="w+", dtype=np.int64, shape=(n,))
        del lm
    state = {
        "work_key": key_hash,
        "chunks_done": 0,
        "items_done": 0,
        "written": {s: 0 for s in splits},
        "skipped": [],
        "chunk_size": None,
        "resumed": False,
    }
    _atomic_write_text(state_path, json.dumps(state))
    return state


def _save_checkpoint(partial: Path, state: dict[str, Any], maps: dict[str, tuple[np.memmap, np.memmap]]) -> None:
    """Flush the arrays, then record how far they are valid (the order matters for crash safety)."""
    for images_mm, labels_mm in maps.values():
        if images_mm.size:
            images_mm.flush()
        if labels_mm.size:
            labels_mm.flush()
    _atomic_write_text(partial / "state.json", json.dumps(state))


def _mp_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _run_decode(
    source: Source,
    partial: Path,
    state: dict[str, Any],
    splits: dict[str, list[tuple[str, int]]],
    tasks: list[tuple[str, int, list[str]]],
    size: int,
    workers: int,
    max_pixels: int,
    progress: bool,
    checkpoint_seconds: float,
) -> None:
    from tqdm.auto import tqdm

    maps: dict[str, tuple[np.memmap, np.memmap]] = {}
    for split in splits:
        img_path, lab_path = partial / f"{split}_images.npy", partial / f"{split}_labels.partial.npy"
        if len(splits[split]):
            maps[split] = (np.load(img_path, mmap_mode="r+"), np.load(lab_path, mmap_mode="r+"))
        else:
            maps[split] = (np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int64))  # type: ignore[assignment]
    total = sum(len(t[2]) for t in tasks)
    start = state["chunks_done"]
    todo = tasks[start:]
    bar = tqdm(total=total, initial=state["items_done"], unit="img", desc="preprocess", disable=not progress,
               smoothing=0.1, dynamic_ncols=True)
    last_ckpt = time.time()

    busy = False  # True while ``state`` is being updated: it is not consistent then

    def consume(task: tuple[str, int, list[str]], result: tuple[np.ndarray, list[bool], list[str]]) -> None:
        nonlocal busy
        split, s, paths = task
        arr, ok, reasons = result
        images_mm, labels_mm = maps[split]
        items = splits[split]
        w = state["written"][split]
        k = len(arr)
        # Rows at and after ``written`` are not covered by any checkpoint, so
        # writing them cannot spoil one.
        if k:
            images_mm[w: w + k] = arr
        labels = [items[s + i][1] for i, good in enumerate(ok) if good]
        if labels:
            labels_mm[w: w + k] = labels
        skipped = []
        for (i, _), reason in zip(((i, g) for i, g in enumerate(ok) if not g), reasons):
            path, label = items[s + i]
            skipped.append({"path": path, "split": split, "label": label, "reason": reason})
            log.debug("skipped %s: %s", path, reason)
        busy = True
        state["skipped"].extend(skipped)
        state["written"][split] = w + k
        state["chunks_done"] += 1
        state["items_done"] += len(paths)
        busy = False
        bar.update(len(paths))

    def maybe_checkpoint(force: bool = False) -> None:
        nonlocal last_ckpt
        if force or time.time() - last_ckpt >= checkpoint_seconds:
            _save_checkpoint(partial, state, maps)
            last_ckpt = time.time()

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_inprocess = dict(_W)
            with strict_pil(max_pixels), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
                _W.update(source=source, size=size)
                try:
                    for task in todo:
                        consume(task, process_chunk(task[2]))
                        maybe_checkpoint()
                finally:
                    _W.clear()
                    _W.update(_init_inprocess)
        else:
            ctx = _mp_context()
            n_proc = min(workers, len(todo))
            with ProcessPoolExecutor(
                max_workers=n_proc, mp_context=ctx, initializer=_init_worker, initargs=(source, size, max_pixels, os.getpid())
            ) as ex:
                window = n_proc * 4
                pending: list[tuple[tuple[str, int, list[str]], Future]] = []
                it = iter(todo)
                try:
                    for task in it:
                        pending.append((task, ex.submit(process_chunk, task[2])))
                        if len(pending) >= window:
                            break
                    while pending:
                        task, fut = pending.pop(0)
                        try:
                            result = fut.result()
                        except BrokenProcessPool as e:
                            raise PreprocessError(
                                f"a worker process died while decoding {len(task[2])} files starting at "
                                f"{task[2][0]!r}; the work so far is checkpointed in {partial}. "
                                "Re-run with --workers 1 to find the file."
                            ) from e
                        consume(task, result)
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.append((nxt, ex.submit(process_chunk, nxt[2])))
                        maybe_checkpoint()
                except BaseException:
                    for _, fut in pending:
                        fut.cancel()
                    raise
        maybe_checkpoint(force=True)
    except KeyboardInterrupt:
        if not busy:  # otherwise the last periodic checkpoint stands
            maybe_checkpoint(force=True)
        bar.close()
        log.warning(
            "interrupted after %d of %d images; the work so far is saved in %s. Re-run the same command to resume.",
            state["items_done"], total, partial,
        )
        raise
    finally:
        bar.close()
        for images_mm, labels_mm in maps.values():
            del images_mm, labels_mm
        maps.clear()


# --------------------------------------------------------------------------- download


def file_digests(path: str | os.PathLike, chunk: int = 1 << 20) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    block_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    A dropped connection is retried (``retries`` times) from where it stopped;
    an interrupted run resumes the ``.part`` file next time. The finished file
    is checked against ``sha256`` and/or ``md5`` when given (its SHA-256 is
    always logged) and only then renamed to ``dest``. An existing ``dest`` that
    matches is reused.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def verify(path: Path) -> dict[str, str]:
        d = file_digests(path)
        log.info("%s: sha256 %s, md5 %s", path.name, d["sha256"], d["md5"])
        if sha256 and d["sha256"].lower() != sha256.lower():
            raise PreprocessError(f"checksum mismatch for {url}: sha256 {d['sha256']}, expected {sha256}")
        if md5 and d["md5"].lower() != md5.lower():
            raise PreprocessError(f"checksum mismatch for {url}: md5 {d['md5']}, expected {md5}")
        return d

    if dest.exists():
        try:
            verify(dest)
            log.info("%s already downloaded", dest)
            return dest
        except PreprocessError:
            log.warning("%s does not match the expected checksum; downloading again", dest)
            dest.unlink()

    attempt = 0
    total: int | None = None
    bar = None
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "preprocess.py"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if have and status == 206:
                    cr = resp.headers.get("Content-Range", "")
                    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", cr)
                    if not m or int(m.group(1)) != have:
                        raise PreprocessError(f"server sent an unexpected Content-Range {cr!r}")
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode = "ab"
                else:
                    if have:
                        log.info("server ignored the Range request; restarting the download")
                    have = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                    mode = "wb"
                if bar is None:
                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                               disable=not progress)
                else:
                    bar.reset(total=total)
                    bar.update(have)
                with open(part, mode) as f:
                    while True:
                        block = resp.read(block_size)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if total is not None and got < total:
                raise urllib.error.URLError(f"connection closed after {got} of {total} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                # Range not satisfiable: the .part is already complete (or bigger than the file).
                cr = e.headers.get("Content-Range", "") if e.headers else ""
                m = re.match(r"bytes \*/(\d+)", cr)
                if m and int(m.group(1)) == have:
                    break
                part.unlink()
                continue
            raise PreprocessError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            attempt += 1
            if attempt > retries:
                raise PreprocessError(
                    f"download of {url} failed after {retries} retries: {e}; re-run to resume from {part}"
                ) from e
            log.warning("download interrupted (%s); resuming (attempt %d of %d)", e, attempt, retries)
            time.sleep(min(2.0 ** (attempt - 1) * 0.1, 10.0))
    if bar is not None:
        bar.close()
    try:
        verify(part)
    except PreprocessError:
        bad = part.with_name(part.name.replace(".part", ".bad"))
        os.replace(part, bad)
        raise
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from models.text_encoder import DEFAULT_PROMPT_TEMPLATE

    p = argparse.ArgumentParser(
        prog="preprocess.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn ImageNet-format data into training-ready arrays (done once; training never decodes a JPEG).",
        epilog="""\
input layouts (detected automatically; zips are read in place):
  ILSVRC-2012     train/<wnid>/*.JPEG, names from --synsets, a LOC_synset_mapping.txt
                  beside train/ or the built-in assets/LOC_synset_mapping.txt
  Tiny ImageNet   tiny-imagenet-200.zip or its folder: train/<wnid>/images/*.JPEG,
                  class list from wnids.txt, names from words.txt
  generic         <class name>/<images>; the folder names are the class names

output (--out): train_images.npy uint8 (N,S,S,3) [mmap-able], train_labels.npy int64,
  val_images.npy, val_labels.npy, classes.json, class_embeddings.npy (C,384),
  template_embeddings.npy (C,T,384), manifest.json (counts, skipped files, versions)

Bad files (truncated, empty, not images, decompression bombs) are skipped and
listed in manifest.json. Work goes to <out>.partial; an interrupted run resumes
when re-run with the same options.

examples:
  python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --out data/tiny64
  python preprocess.py --src /data/imagenet --size 32 --classes goldfish,n01440764 --max-per-class 300
  python preprocess.py --download tiny-imagenet --out data/tiny64
""",
    )
    p.add_argument("--src", help="a zip archive or a folder (ILSVRC, Tiny ImageNet or generic class folders)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="output side in pixels, e.g. 64 or 32 (default 64)")
    p.add_argument("--classes", help="subset: comma-separated wnids or class names, or a file with one per line")
    p.add_argument("--max-per-class", type=int, help="use at most this many images per class (before the val split)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"fraction of each class held out as val (default {DEFAULT_VAL_FRACTION}; 0 for none)")
    p.add_argument("--synsets", help="class-name mapping: LOC_synset_mapping.txt, words.txt or imagenet_class_index.json")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help=f"text prompt per class, '{{}}' is the name (default {DEFAULT_PROMPT_TEMPLATE!r})")
    p.add_argument("--text-variants", choices=("basic", "rich"), default="rich",
                   help="texts each class is trained under: basic = its name in 6 templates; rich (default) = its "
                        "name in 14 templates, every WordNet synonym, and --descriptions")
    p.add_argument("--descriptions", default=str(DEFAULT_DESCRIPTIONS),
                   help="wnid<TAB>description file of extra training prompts, or 'none' "
                        "(default: the project's assets/class_descriptions.tsv, all Tiny ImageNet classes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class subset/val selection (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--download", choices=sorted(DOWNLOADS), help="fetch a public dataset first (then used as --src)")
    p.add_argument("--download-dir", default=DEFAULT_DOWNLOAD_DIR, help=f"where downloads go (default {DEFAULT_DOWNLOAD_DIR})")
    p.add_argument("--download-url", help="override the download URL (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the download (always computed and printed)")
    p.add_argument("--md5", help="expected MD5 of the download (default: the official value for the official URL)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(argv: Sequence[str] | None = None, *, embed_fn: EmbedFn | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    old_level = log.level
    if args.quiet:
        log.setLevel(logging.WARNING)
    if not args.src and not args.download:
        parser.error("give --src (a zip or folder) or --download tiny-imagenet")

    old_term = None
    if hasattr(signal, "SIGTERM") and _is_main_thread():
        def _term(signum, frame):  # a polite kill checkpoints like Ctrl-C
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        src = args.src
        if args.download:
            spec = DOWNLOADS[args.download]
            url = args.download_url or spec["url"]
            md5 = args.md5 or (spec["md5"] if url == spec["url"] else None)
            if not (args.sha256 or md5):
                log.warning("no expected checksum for %s: the download will not be verified "
                            "(its sha256 is printed; pass --sha256 next time)", url)
            path = download(url, Path(args.download_dir) / spec["filename"], sha256=args.sha256, md5=md5,
                            progress=not args.quiet)
            print(f"downloaded {path} (sha256 {file_digests(path)['sha256']})")
            src = src or str(path)
        result = preprocess(
            src,
            args.out,
            size=args.size,
            classes=args.classes,
            max_per_class=args.max_per_class,
            val_fraction=args.val_fraction,
            synsets=args.synsets,
            workers=args.workers,
            prompt_template=args.prompt_template,
            text_variants=args.text_variants,
            descriptions=(None if args.text_variants == "basic" or args.descriptions == "none" else args.descriptions),
            seed=args.seed,
            overwrite=args.overwrite,
            embed_fn=embed_fn,
            max_pixels=args.max_pixels,
            progress=not args.quiet,
        )
    except PreprocessError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        log.setLevel(old_level)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    m = result.manifest
    c = m["counts"]
    if not args.quiet:
        print(
            f"{result.out}: {c['train']} train + {c['val']} val images ({m['image_size']}px, {m['num_classes']} classes), "
            f"{c['skipped']} skipped, {m['seconds']:.1f}s" + (" [already up to date]" if result.skipped_run else "")
        )
    return 0


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
