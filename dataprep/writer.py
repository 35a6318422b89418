"""The output folder: the resumable ``<out>.partial`` (memory-mapped arrays and a checkpoint), the class
texts and embeddings, the manifest, each written atomically, and the rename that publishes ``<out>``."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from numpy.lib import format as npformat

from dataprep.defaults import FORMAT_VERSION, PreprocessError
from dataprep.plan import Items, Plan, hash_json
from dataprep.sources import MAX_LISTED, Source
from fileio import atomic_save_npy, atomic_write_text, exclusive_lock

log = logging.getLogger("preprocess")

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


# --------------------------------------------------------------------------- the output folder


def lock_output(stack: contextlib.ExitStack, out: Path) -> None:
    """Hold ``<out>.lock`` until ``stack`` closes: one run writes ``out`` at a time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stack.enter_context(exclusive_lock(out.with_name(out.name + ".lock"), busy=lambda pid: PreprocessError(
        f"another preprocess.py run (pid {pid}) is writing {out}; wait for it to finish"), remove=True))


def existing_output(out: Path, config_hash: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of an ``out`` already complete for these options (kept unless ``overwrite``), else None.

    Refuses to go on over an ``out`` made otherwise without ``overwrite``, or one this tool did not write.
    """
    if out.exists():
        if _is_complete(out, config_hash) and not overwrite:
            log.info("%s is already complete for these options; nothing to do (--overwrite to redo)", out)
            return json.loads((out / "manifest.json").read_text())
        if not overwrite:
            raise PreprocessError(f"{out} already exists (made with other options?); pass --overwrite to replace it")
        if not _is_ours(out):
            raise PreprocessError(
                f"refusing to replace {out}: it is not a preprocess.py output folder (choose another --out)"
            )
    return None


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


def publish(partial: Path, out: Path) -> None:
    """Rename the finished ``partial`` to ``out``, replacing an old ``out``."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the arrays and their checkpoint


def load_or_init_partial(partial: Path, work_key: dict[str, Any], splits: dict[str, Items], size: int) -> dict[str, Any]:
    """The checkpoint state of ``partial`` if it was made for ``work_key``; else a fresh ``partial``
    with zero-filled memory-mapped arrays for every item and a fresh state."""
    key_hash = hash_json(work_key)
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
    atomic_write_text(state_path, json.dumps(state))
    return state


def save_checkpoint(partial: Path, state: dict[str, Any], maps: dict[str, tuple[np.memmap, np.memmap]]) -> None:
    """Flush the arrays, then record how far they are valid (the order matters for crash safety)."""
    for images_mm, labels_mm in maps.values():
        if images_mm.size:
            images_mm.flush()
        if labels_mm.size:
            labels_mm.flush()
    atomic_write_text(partial / "state.json", json.dumps(state))


def finalize_arrays(partial: Path, state: dict[str, Any], splits: dict[str, Items]) -> dict[str, int]:
    """Cut each split's arrays to the images that decoded; returns the image count per split."""
    counts = {}
    for split, items in splits.items():
        n = state["written"][split]
        _shrink_npy(partial / f"{split}_images.npy", n)
        labels_mm = np.load(partial / f"{split}_labels.partial.npy", mmap_mode="r")
        atomic_save_npy(partial / f"{split}_labels.npy", np.array(labels_mm[:n], dtype=np.int64))
        del labels_mm
        (partial / f"{split}_labels.partial.npy").unlink()
        counts[split] = n
    return counts


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


def images_per_class(partial: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The train and val image counts of each class, from the finished label arrays."""
    train_labels = np.load(partial / "train_labels.npy")
    val_labels = np.load(partial / "val_labels.npy")
    n_train = np.bincount(train_labels, minlength=num_classes) if len(train_labels) else np.zeros(num_classes, int)
    n_val = np.bincount(val_labels, minlength=num_classes) if len(val_labels) else np.zeros(num_classes, int)
    return n_train, n_val


# --------------------------------------------------------------------------- the metadata


def write_classes(
    partial: Path,
    plan: Plan,
    template: str,
    prompts: list[str],
    n_train: np.ndarray,
    class_embeddings: np.ndarray,
    template_embeddings: np.ndarray,
) -> None:
    """``class_embeddings.npy``, ``template_embeddings.npy`` and ``classes.json``."""
    atomic_save_npy(partial / "class_embeddings.npy", class_embeddings)
    atomic_save_npy(partial / "template_embeddings.npy", template_embeddings)
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
                "training_prompts": plan.training_texts[i],
            }
            for i, c in enumerate(plan.chosen)
        ],
    }
    atomic_write_text(partial / "classes.json", json.dumps(classes_doc, indent=1, ensure_ascii=False) + "\n")


def build_manifest(
    plan: Plan,
    source: Source,
    src: str | os.PathLike,
    *,
    size: int,
    state: dict[str, Any],
    counts: dict[str, int],
    n_train: np.ndarray,
    n_val: np.ndarray,
    prompts_per_class: int,
    text_variants: str,
    descriptions: str | os.PathLike | None,
    described: dict[str, list[str]],
    elapsed: float,
) -> dict[str, Any]:
    """``manifest.json``: where the data came from, what was kept and skipped, with which versions and options."""
    chosen, scan = plan.chosen, plan.scan
    decoded = len(plan.train_items) + len(plan.val_items)
    skipped = plan.scan_skipped + state["skipped"]
    return {
        "tool": "preprocess.py",
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {**source.identity(), "given_as": str(src)},
        "layout": plan.layout.kind,
        "layout_base": plan.layout.base,
        "names_from": plan.layout.names_from,
        "image_size": size,
        "size": size,
        "image_format": "uint8 RGB, (N, H, W, 3), center crop + box/bicubic resize",
        "num_classes": len(chosen),
        "counts": {
            "train": counts["train"],
            "val": counts["val"],
            "candidates": decoded,
            "skipped": len(skipped),
            "ignored_non_image_files": len(plan.ignored),
            "duplicates": len(scan.duplicates),
            "repeated_folders": len(scan.repeated_folders),
            "broken_links": len(scan.broken_links),
        },
        "per_class": {c.wnid: {"train": int(n_train[i]), "val": int(n_val[i])} for i, c in enumerate(chosen)},
        "skipped": skipped,
        "num_skipped": len(skipped),
        "ignored_files": plan.ignored[:MAX_LISTED],
        # Symlinks are followed, but each real file and folder is read once; these were not.
        "duplicates": scan.duplicates[:MAX_LISTED],
        "num_duplicates": len(scan.duplicates),
        "repeated_folders": scan.repeated_folders[:MAX_LISTED],
        "broken_links": scan.broken_links[:MAX_LISTED],
        "num_broken_links": len(scan.broken_links),
        "empty_classes": plan.empty,
        "text_model": plan.text_model,
        "text_variants": text_variants,
        "training_prompts_per_class": prompts_per_class,
        "descriptions": ({"path": str(descriptions), "classes_described": sum(1 for c in chosen if c.wnid in described)}
                         if descriptions is not None else None),
        "versions": _versions(),
        "seconds": round(elapsed, 3),
        "images_per_second": round(decoded / elapsed, 1) if elapsed > 0 else None,
        "resumed": bool(state.get("resumed")),
        "options": plan.options,
        "config_hash": plan.config_hash,
    }


def write_manifest(partial: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` and drop the checkpoint: ``partial`` is now complete."""
    atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (partial / "state.json").unlink(missing_ok=True)


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "preprocess_format": str(FORMAT_VERSION),
    }
