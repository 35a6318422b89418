"""The preprocessing pipeline: decode in worker processes, write memory-mapped arrays to ``<out>.partial``
with checkpoints (an interrupted run resumes), the text embeddings and the manifest, then publish ``<out>``."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

log = logging.getLogger("preprocess")

import threading

import PIL
from tqdm.auto import tqdm

from core.prompting import TEXT_VARIANTS, class_training_prompts, prompt_table, read_descriptions
from dataprep.defaults import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUT,
    DEFAULT_SIZE,
    DEFAULT_VAL_FRACTION,
    FORMAT_VERSION,
    EmbedFn,
    PreprocessError,
)
from dataprep.images import decode_image, strict_pil
from dataprep.layout import detect_layout, parse_class_selection, select_classes, split_files
from dataprep.sources import MAX_LISTED, NotRegularFileError, Source, open_source
from fileio import atomic_save_npy, atomic_write_text, exclusive_lock
from models.text_encoder import (
    DEFAULT_PROMPT_TEMPLATE,
    PROMPT_TEMPLATES,
    TEXT_EMBED_DIM,
    TEXT_MODEL_NAME,
    class_prompt,
    encode_prompts,
)


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






def _versions() -> dict[str, str]:
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

    return encode_prompts(prompts)


def compute_embeddings(
    names: Sequence[str], template: str, embed_fn: EmbedFn, training_prompts: Sequence[Sequence[str]] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class-prompt embeddings ``(C, D)``, training-prompt embeddings ``(C, K, D)`` and the class prompts.

    ``training_prompts``: K prompts per class (``prompting.prompt_table``); by
    default each class name in the six ``PROMPT_TEMPLATES``.
    """

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

        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(exclusive_lock(out.with_name(out.name + ".lock"), busy=lambda pid: PreprocessError(
            f"another preprocess.py run (pid {pid}) is writing {out}; wait for it to finish"), remove=True))
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
            atomic_save_npy(partial / f"{split}_labels.npy", np.array(labels_mm[:n], dtype=np.int64))
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
        atomic_save_npy(partial / "class_embeddings.npy", cls_emb)
        atomic_save_npy(partial / "template_embeddings.npy", tmpl_emb)
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
        atomic_write_text(partial / "classes.json", json.dumps(classes_doc, indent=1, ensure_ascii=False) + "\n")

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
        atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
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
    atomic_write_text(state_path, json.dumps(state))
    return state


def _save_checkpoint(partial: Path, state: dict[str, Any], maps: dict[str, tuple[np.memmap, np.memmap]]) -> None:
    """Flush the arrays, then record how far they are valid (the order matters for crash safety)."""
    for images_mm, labels_mm in maps.values():
        if images_mm.size:
            images_mm.flush()
        if labels_mm.size:
            labels_mm.flush()
    atomic_write_text(partial / "state.json", json.dumps(state))


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
