"""Models and their data: ``ModelManager`` loads store models once and keeps the
last few (LRU); ``pick_data_image`` takes an image from a model's training data."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from webui.validation import InputError, _whole

# Imported when web.py starts, before its --help: torch, the store and the dataset load lazily, in
# the functions that need them.
log = logging.getLogger("web")
ROOT = Path(__file__).resolve().parents[1]


class ModelManager:
    """Loads models by store name or folder once and keeps the last few (LRU)."""

    def __init__(self, store: str | None, device: str, first: str, max_models: int = 3,
                 data_override: str | None = None):
        # imported here, not at the top: `import web` (and so `web.py --help`) imports this module
        # and must not load torch (tests/test_web.py::test_help_is_fast_and_light)
        from engine import store as ms

        self.ms = ms
        self.store, self.device, self.max_models = store, device, max_models
        self.data_override = data_override
        self._lock = threading.Lock()
        self._models: "OrderedDict[str, Any]" = OrderedDict()
        self._datasets: dict[str, Any] = {}
        self.extra: dict[str, str] = {}  # choice value -> folder, for --model given as a path
        self._listing: tuple[tuple, list[str]] = ((), [])  # (the store's fingerprint, its model names)
        self._listing_lock = threading.Lock()  # not _lock: that one is held while a model loads
        self.first = self.resolve_choice(first, allow_path=True)

    def _store_fingerprint(self) -> tuple:
        """What changes when a model is added, removed or replaced: the modification times of the store
        folder and of each folder in it (a stat each, not a read of every config). Empty (do not
        cache) while the store is missing or was changed in the last two seconds: a folder being
        written may change again within one tick of the file system's clock."""
        root = self.ms.store_dir(self.store)
        try:
            with os.scandir(root) as entries:
                times = [root.stat().st_mtime_ns, *sorted((e.stat().st_mtime_ns, e.name) for e in entries)]
        except OSError:  # no store (yet): list_models says so
            return ()
        newest = max(t if isinstance(t, int) else t[0] for t in times)
        return () if time.time_ns() - newest < 2_000_000_000 else tuple(times)

    def store_models(self) -> list[str]:
        """The store's base models (``engine.store.list_models``), read again only when the store
        changed: every request resolves its model choice, and reading each model's config each time
        cost a Live redraw about 6 ms."""
        key = self._store_fingerprint()
        with self._listing_lock:
            if key and key == self._listing[0]:
                return list(self._listing[1])
        names = self.ms.list_models(self.store)
        with self._listing_lock:
            self._listing = (key, names)
        return list(names)

    def resolve_choice(self, choice: str, allow_path: bool = False) -> str:
        s = str(choice or "").strip()
        if s in self.extra or s in self.store_models():
            return s
        if allow_path and (os.sep in s or s.startswith(".")):
            folder = str(Path(s).resolve())
            self.ms.resolve_model_path(folder)  # raises CheckpointError if absent
            self.extra[folder] = folder
            return folder
        raise InputError(f"Unknown model {s[:80]!r}; available: {', '.join(self.choices_values()) or 'none'}.")

    def public_message(self, e: BaseException) -> str:
        """An error for the page: the server's store path left out (the model's name says which folder)."""
        text = str(e)
        root = str(self.ms.store_dir(self.store).resolve())
        return text.replace(root + os.sep, "").replace(root, "the model store")

    def choices_values(self) -> list[str]:
        return [*self.store_models(), *self.extra]

    def choices(self) -> list[tuple[str, str]]:
        out = [(n, n) for n in self.store_models()]
        out += [(f"{Path(v).name} ({v})", v) for v in self.extra]
        return out

    def get(self, choice: str):
        key = self.resolve_choice(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            t0 = time.monotonic()
            lm = self.ms.load_model(self.extra.get(key, key), store=self.store, device=self.device)
            log.info("loaded model %s (%d px, %d classes) in %.1f s", lm.name, lm.image_size, len(lm.classes),
                     time.monotonic() - t0)
            self._models[key] = lm
            while len(self._models) > self.max_models:
                old, _ = self._models.popitem(last=False)
                log.info("unloaded model %s (keeping %d)", old, self.max_models)
            return lm

    def loaded(self) -> list[str]:
        """The names of the models this app holds in memory (any session's): none of them is replaced."""
        with self._lock:
            return [lm.name for lm in self._models.values()]

    def dataset(self, choice: str):
        """The model's preprocessed data (val split if present), or None."""
        lm = self.get(choice or self.first)  # empty = the first model, as in WebApp._model
        key = str(lm.path)
        with self._lock:
            if key in self._datasets:
                return self._datasets[key]
        from dataprep.dataset import PreprocessedDataset  # loads torch: see __init__

        candidates = []
        if self.data_override:
            candidates.append(Path(self.data_override))
        d = (lm.config.get("data") or {}).get("dir")
        if d:
            candidates += [Path(d), ROOT / d] if not Path(d).is_absolute() else [Path(d)]
        ds = None
        for c in candidates:
            for split in ("val", "train"):
                if (c / f"{split}_images.npy").is_file():
                    try:
                        ds = PreprocessedDataset(c, split=split)
                        break
                    except (OSError, ValueError) as e:
                        log.warning("cannot use data folder %s (%s)", c, e)
            if ds is not None:
                break
        with self._lock:
            self._datasets[key] = ds
        return ds


def pick_data_image(ds, class_name: str | None, index: Any):
    """The ``index``-th image (of ``class_name``, if given) of a dataset, as uint8 (H, W, 3)."""
    import numpy as np

    i = _whole(index if index not in (None, "") else 0, "Image number")
    labels = np.asarray(ds.labels)
    if class_name:
        names = [c["name"] for c in ds.classes]
        if class_name not in names:
            raise InputError(f"Unknown class {str(class_name)[:60]!r} in this model's data.")
        pool = np.flatnonzero(labels == names.index(class_name))
    else:
        pool = np.arange(len(labels))
    if len(pool) == 0:
        raise InputError(f"No images of {class_name!r} in this model's data.")
    if not 0 <= i < len(pool):
        raise InputError(f"Image number must be between 0 and {len(pool) - 1}, got {i}.")
    return np.array(ds.images[int(pool[i])], dtype=np.uint8)


