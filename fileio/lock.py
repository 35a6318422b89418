"""The project's one file lock: an OS file lock (``flock``) held for a block of work, so a folder
never has two writers. The kernel releases it when the process dies, so a crash never leaves a
stale lock; the lock file keeps the holder's pid for the message the second writer gets."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

try:  # POSIX; elsewhere there is no locking (and a warning in the docs, not a crash)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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
