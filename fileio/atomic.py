"""The project's one atomic writer: write beside the target (a temporary name of this process and
thread), fsync, rename over it; a reader sees the old file or the new one, never half of one, even
after a crash or a full disk."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np


def _temp_beside(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}{suffix}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable=False`` skips the fsync (a cache that may be
    lost in a crash, but must never be seen half-written)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    path = Path(path)
    tmp = _temp_beside(path, ".npy")  # np.save appends .npy to a name without it
    try:
        np.save(tmp, arr)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
