"""The project's one atomic writer and one file lock (the store, training and preprocessing use them).

* ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_save_npy``: write beside the target
  (a temporary name of this process and thread), fsync, rename over it: a reader sees the old file
  or the new one, never half of one, even after a crash or a full disk.
* ``exclusive_lock``: an OS file lock (``flock``) held for a block of work, so a folder never has
  two writers. The kernel releases it when the process dies, so a crash never leaves a stale lock;
  the lock file keeps the holder's pid for the message the second writer gets.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

try:  # POSIX; elsewhere there is no locking (and a warning in the docs, not a crash)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: Callable[[str], Exception], *,
                   remove: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; when another process holds it, raise
    ``busy(holder_pid)`` at once (never wait: the caller tells the user what to do).

    ``remove``: delete the lock file on release (for a lock beside a user's folder, which should
    leave nothing behind; a process that opened the file just before it went would then lock a
    file nobody else sees, a window of microseconds that two runs started by hand never hit)."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise busy(f.read().strip() or "unknown") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
    finally:
        f.close()  # closing releases the lock
