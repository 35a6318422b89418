"""Models that an overwrite moved aside: listed, and put back under their name.

``engine.store.store_model`` never deletes the model it replaces: it moves the whole folder (weights,
config, card, evaluation, companions) to ``<store>/.replaced/<name>-<UTC time>/``, out of the model
picker's and ``list_models``' sight. ``python diffusion.py list --replaced`` lists those folders and
``python diffusion.py restore NAME`` puts one back.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine import store

_ENTRY_RE = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?$")


@dataclass(frozen=True)
class Replaced:
    entry: str  # its folder's name in the store's REPLACED_DIR: tiny200-20261204T155700Z
    name: str  # the model it was
    replaced_at: str  # when, in UTC: 2026-12-04 15:57:00 UTC
    folder: Path


def list_replaced(store_root: str | os.PathLike | None = None, name: str | None = None) -> list[Replaced]:
    """The models moved aside in the store (of ``name`` only, if given), oldest first."""
    base = store.store_dir(store_root) / store.REPLACED_DIR
    if not base.is_dir():
        return []
    found = []
    for p in base.iterdir():
        m = _ENTRY_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (name is None or m["name"] == name):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.strptime(m["stamp"], "%Y%m%dT%H%M%SZ"))
            found.append(Replaced(p.name, m["name"], when, p))
    return sorted(found, key=lambda r: (r.replaced_at, r.entry))


def restore_hint(replaced: Path) -> str:
    """Where a replaced model went and the command that puts it back (for the CLI and the app alike)."""
    return (f"The model it replaced is kept in `{store.REPLACED_DIR}/{replaced.name}` in the store: "
            f"`python diffusion.py restore {replaced.name}` puts it back.")


def restore(entry_or_name: str, store_root: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Put a replaced model back under its name: ``entry_or_name`` is an entry of ``list_replaced``
    (``tiny200-20261204T155700Z``) or a model name (its newest replaced copy). The model now under that
    name, if any, is moved aside in its turn, so a restore is undone the same way. Returns (the
    restored model's folder, where the model it displaced went, or None)."""
    entries = list_replaced(store_root)
    chosen = [r for r in entries if r.entry == entry_or_name] or [r for r in entries if r.name == entry_or_name]
    if not chosen:
        known = ", ".join(r.entry for r in entries) or "none"
        raise FileNotFoundError(f"no replaced model {entry_or_name!r} in the store (replaced models: {known})")
    entry = chosen[-1]
    store.validate_model_name(entry.name)
    root = store.store_dir(store_root)
    final = root / entry.name
    displaced = None
    if final.exists() or final.is_symlink():
        displaced = store.replaced_folder(root, entry.name)
        os.replace(final, displaced)
    os.rename(entry.folder, final)
    return final, displaced
