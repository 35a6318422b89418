"""What a source holds: its layout detected (ILSVRC, Tiny ImageNet, folder of class folders), class names from
synsets, the classes chosen and the train/val split."""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger("preprocess")

from dataprep.defaults import BUILTIN_SYNSETS, WNID_RE, PreprocessError
from dataprep.sources import FolderSource, NotRegularFileError, Source, is_image_name

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
