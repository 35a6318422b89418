"""Decoding and resizing every image into the memory-mapped arrays of ``<out>.partial``: in worker
processes (or in this one), chunk by chunk, with a progress bar and periodic checkpoints, so that an
interrupted run resumes where it stopped."""
from __future__ import annotations

import io
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dataprep.defaults import PreprocessError
from dataprep.images import decode_image, strict_pil
from dataprep.plan import Items
from dataprep.sources import NotRegularFileError, Source
from dataprep.writer import load_or_init_partial, save_checkpoint

log = logging.getLogger("preprocess")

Task = tuple[str, int, list[str]]  # (split, index of its first item, paths)
ChunkResult = tuple[np.ndarray, list[bool], list[str]]  # what ``process_chunk`` returns


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode_images(
    source: Source,
    partial: Path,
    work_key: dict[str, Any],
    splits: dict[str, Items],
    *,
    size: int,
    workers: int,
    chunk_size: int | None,
    max_pixels: int,
    progress: bool,
    checkpoint_seconds: float,
) -> dict[str, Any]:
    """Decode every item of ``splits`` into ``partial``, resuming its checkpoint; returns the final state
    (``written`` rows per split, the ``skipped`` files, whether it ``resumed``)."""
    state = load_or_init_partial(partial, work_key, splits, size)
    if state["chunks_done"]:
        log.info("resuming from %s: %d images already done", partial, state["items_done"])
    n_items = sum(len(items) for items in splits.values())
    chunk = state.get("chunk_size") or _chunk_size_for(n_items, workers, chunk_size)
    state["chunk_size"] = chunk
    tasks: list[Task] = []
    for split, items in splits.items():
        for s in range(0, len(items), chunk):
            tasks.append((split, s, [p for p, _ in items[s: s + chunk]]))
    _run_decode(source, partial, state, splits, tasks, size, workers, max_pixels, progress, checkpoint_seconds)
    return state


def _chunk_size_for(n: int, workers: int, requested: int | None) -> int:
    if requested:
        return max(1, requested)
    return int(min(256, max(4, math.ceil(n / max(1, workers * 8)))))


# --------------------------------------------------------------------------- worker side


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


def process_chunk(paths: Sequence[str]) -> ChunkResult:
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


# --------------------------------------------------------------------------- parent side


def _mp_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _run_decode(
    source: Source,
    partial: Path,
    state: dict[str, Any],
    splits: dict[str, Items],
    tasks: list[Task],
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

    def consume(task: Task, result: ChunkResult) -> None:
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
            save_checkpoint(partial, state, maps)
            last_ckpt = time.time()

    try:
        if workers <= 1 or len(todo) <= 1:
            _decode_in_process(source, size, max_pixels, todo, consume, maybe_checkpoint)
        else:
            _decode_in_pool(source, size, max_pixels, workers, todo, partial, consume, maybe_checkpoint)
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


def _decode_in_process(
    source: Source,
    size: int,
    max_pixels: int,
    todo: list[Task],
    consume: Callable[[Task, ChunkResult], None],
    maybe_checkpoint: Callable[[], None],
) -> None:
    """Decode ``todo`` in this process, with the same PIL limits a worker sets."""
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


def _decode_in_pool(
    source: Source,
    size: int,
    max_pixels: int,
    workers: int,
    todo: list[Task],
    partial: Path,
    consume: Callable[[Task, ChunkResult], None],
    maybe_checkpoint: Callable[[], None],
) -> None:
    """Decode ``todo`` in worker processes, a bounded window of chunks in flight, consumed in order."""
    ctx = _mp_context()
    n_proc = min(workers, len(todo))
    with ProcessPoolExecutor(
        max_workers=n_proc, mp_context=ctx, initializer=_init_worker, initargs=(source, size, max_pixels, os.getpid())
    ) as ex:
        window = n_proc * 4
        pending: list[tuple[Task, Future]] = []
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
