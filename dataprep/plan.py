"""What one preprocessing run will do, settled before any image is decoded: the options checked, the
source scanned, the classes chosen and split, their texts, and the hashes that identify the output."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from core.prompting import TEXT_VARIANTS
from dataprep.defaults import FORMAT_VERSION, EmbedFn, PreprocessError
from dataprep.layout import ClassInfo, Layout, detect_layout, parse_class_selection, select_classes, split_files
from dataprep.sources import ScanReport, Source
from dataprep.texts import class_texts, text_model_name

log = logging.getLogger("preprocess")

Items = list[tuple[str, int]]  # (path in the source, class index) per image


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def check_options(
    template: str,
    size: int,
    val_fraction: float,
    max_per_class: int | None,
    text_variants: str,
    descriptions: str | os.PathLike | None,
) -> None:
    """Refuse bad option values with the flag's name, before the source is opened."""
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


@dataclass
class Plan:
    """The classes and images of one run and what identifies its output."""

    layout: Layout
    scan: ScanReport
    scan_skipped: list[dict[str, Any]]  # special files, reported among the skipped files
    chosen: list[ClassInfo]  # the selected classes that have images, in label order
    empty: list[str]  # wnids of selected classes without image files (left out)
    ignored: list[str]  # non-image files in the chosen class folders
    train_items: Items
    val_items: Items
    training_texts: list[list[str]]
    text_model: str
    options: dict[str, Any]  # as given, recorded in the manifest
    work_key: dict[str, Any]  # what the image arrays depend on (a checkpoint is resumed only if it matches)
    config_hash: str  # what the whole output depends on (a complete output is kept only if it matches)

    @property
    def splits(self) -> dict[str, Items]:
        return {"train": self.train_items, "val": self.val_items}


def plan_run(
    source: Source,
    src: str | os.PathLike,
    *,
    size: int,
    classes: str | Sequence[str] | None,
    max_per_class: int | None,
    val_fraction: float,
    synsets: str | os.PathLike | None,
    workers: int,
    template: str,
    seed: int,
    max_pixels: int,
    embed_fn: EmbedFn | None,
    text_variants: str,
    descriptions: str | os.PathLike | None,
    described: dict[str, list[str]],
) -> Plan:
    """Scan ``source``, choose and split its classes, and hash what the output will depend on."""
    scan, scan_skipped, layout, selection, chosen, empty = _scan_and_select(source, synsets, classes)
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
        "train": hash_json(train_items),
        "val": hash_json(val_items),
    }
    text_model = text_model_name(embed_fn)
    training_texts = class_texts(chosen, described, text_variants)
    identity = {**work_key, "classes": [[c.wnid, c.names] for c in chosen], "template": template, "text": text_model}
    if text_variants != "basic":  # (basic keeps the identity folders made before the option existed have)
        identity["training_texts"] = hash_json(training_texts)
    config_hash = hash_json(identity)
    options["text_variants"] = text_variants
    options["descriptions"] = str(descriptions) if descriptions is not None else None
    return Plan(layout, scan, scan_skipped, chosen, empty, ignored, train_items, val_items, training_texts,
                text_model, options, work_key, config_hash)


def _scan_and_select(
    source: Source, synsets: str | os.PathLike | None, classes: str | Sequence[str] | None
) -> tuple[ScanReport, list[dict[str, Any]], Layout, list[str] | None, list[ClassInfo], list[str]]:
    """List the source, detect its layout and keep the selected classes that have images."""
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
    return scan, scan_skipped, layout, selection, chosen, empty
