"""Files written safely: the project's one atomic writer (``atomic``) and one file lock (``lock``),
used by the store, training, preprocessing and the app's cache.

The bottom layer beside ``models``: it imports nothing from the project, so any package may use it.

* ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_save_npy``: write beside the target,
  fsync, rename over it: a reader sees the old file or the new one, never half of one.
* ``exclusive_lock``: an OS file lock held for a block of work; a second writer gets the holder's
  pid at once instead of waiting, and a crash never leaves a stale lock.
"""
from fileio.atomic import atomic_save_npy, atomic_write_bytes, atomic_write_text
from fileio.lock import exclusive_lock

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_save_npy", "exclusive_lock"]
