"""The layer rule (README "Architecture"), read from the source with ``ast`` (nothing is imported):

* no module in a package, and no benchmark, imports a root entry point (``diffusion.py``,
  ``web.py``, ``preprocess.py``, ``evaluate.py``, ``plot_func.py``, ``dev.py``: every ``*.py`` at the
  root). Running one as a subprocess (the app's jobs, the benchmarks) is not an import and is fine;
* package imports run one way, along ``ALLOWED`` below: a package imports only itself and the
  packages its row names. Every package at the root must have a row, so a new package takes its
  place in the table before it can lean on anything.

Imports inside functions count (a lazy import is still a dependency), and so does
``importlib.import_module`` with a literal name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the project packages it may import (besides itself). Lower layers first.
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "fileio": set(),
    "core": {"models"},
    "drawing": {"core", "models"},
    "dataprep": {"core", "models", "fileio"},
    "engine": {"core", "models", "fileio", "drawing", "dataprep"},
    "training": {"engine", "core", "models", "dataprep", "drawing", "fileio"},
    "evaluation": {"engine", "core", "models", "dataprep", "fileio"},
    "webui": {"training", "evaluation", "engine", "dataprep", "drawing", "core", "models", "fileio"},
}
# Folders of scripts, not layers: they may import any package, but no entry point.
NOT_LAYERED = {"benchmarks"}
# (file, entry point) pairs allowed to break the entry-point rule, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def entry_points() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")}


def root_packages() -> set[str]:
    return {p.parent.name for p in ROOT.glob("*/__init__.py")}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` (relative ones stay in the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args):
            arg = node.args[0]
            head = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
            if isinstance(head, ast.Constant) and isinstance(head.value, str) and not head.value.startswith("."):
                found.add(head.value.split(".")[0])
    return found


def source_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []


def entry_point_imports() -> dict[tuple[str, str], None]:
    """(file, entry point) for each import of an entry point by a package or a benchmark."""
    entries = entry_points()
    hits = {}
    for folder in sorted(set(ALLOWED) | NOT_LAYERED):
        for path in source_files(folder):
            for name in sorted(imported_modules(path) & entries):
                hits[(path.relative_to(ROOT).as_posix(), name)] = None
    return hits


def test_the_table_runs_one_way():
    """The allowed arrows form no cycle (each package is allowed only what a lower row may use)."""
    done: set[str] = set()
    for package, allowed in ALLOWED.items():
        assert allowed <= done, f"{package} may import {sorted(allowed - done)}, which is not below it in the table"
        done.add(package)


def test_every_package_has_a_row():
    unknown = root_packages() - set(ALLOWED) - NOT_LAYERED
    assert not unknown, f"packages without a row in ALLOWED (tests/test_layers.py): {sorted(unknown)}"


def test_no_package_or_benchmark_imports_an_entry_point():
    hits = entry_point_imports()
    broken = [f"{file} imports {name}" for file, name in hits if (file, name) not in EXCEPTIONS]
    assert not broken, "entry points imported below them:\n" + "\n".join(broken)
    stale = [f"{file}: {name}" for file, name in EXCEPTIONS if (file, name) not in hits]
    assert not stale, "exceptions no longer needed (remove them from EXCEPTIONS):\n" + "\n".join(stale)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_table(package):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ does not exist yet")
    project = set(ALLOWED) | root_packages()
    broken = []
    for path in source_files(package):
        for name in sorted(imported_modules(path) & project - {package} - ALLOWED[package]):
            broken.append(f"{path.relative_to(ROOT).as_posix()} imports {name}")
    assert not broken, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(broken)
