"""The Train tab's Export in Chromium, on a run that already has a checkpoint (nothing to train): the
page's own model is refused, a new name exports, the same name again is refused until "Replace a model
of that name" is ticked, and then the old model is kept aside and the status says how to put it back.
The rule itself: engine/export.py, tests/test_store_rule.py."""
from __future__ import annotations

import pytest

from engine import replaced
from test_browser import (TOASTS_JS, browser, fill_text, page, page_state, set_number,  # noqa: F401 (fixtures)
                          status_has)
from test_store_rule import files_of, make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # Chromium flows: dev.py test --full

pytest_plugins = ["web_helpers"]

MODEL_NAME_BOX = "#train-model-name textarea, #train-model-name input"


def refused_with(page, text: str) -> None:
    """Wait for an error toast that says ``text``, then close every toast (status_has fails on one)."""
    try:
        page.wait_for_function(f"() => ({TOASTS_JS})().some(t => t.includes({text!r}))", timeout=60_000)
    except Exception as e:  # playwright's TimeoutError: say what the page showed
        raise AssertionError(f"no error toast saying {text!r}: {page_state(page, 'train-export-status')}") from e
    for close in page.locator(".toast-close").all():
        close.click()
    page.wait_for_function(f"() => ({TOASTS_JS})().length === 0")


def test_export_refuses_then_replaces_only_when_ticked_in_chromium(train_app, page):
    make_run(train_app.store.parent / "runs", "browser_export_run")
    page.goto(train_app.url)
    page.get_by_role("tab", name="Train").click()
    fill_text(page, "#train-run input", "browser_export_run")
    page.locator("#train-run input").press("Enter")

    fill_text(page, MODEL_NAME_BOX, "tiny")  # the model the page has open
    page.locator("#train-export").click()
    refused_with(page, "'tiny' is the model in use")

    fill_text(page, MODEL_NAME_BOX, "browser_export")
    page.locator("#train-export").click()
    status_has(page, "train-export-status", "as browser_export")
    first = files_of(train_app.store / "browser_export")

    page.locator("#train-export").click()  # the same name again, the box unticked
    refused_with(page, "'browser_export' already exists in the store: tick")
    assert files_of(train_app.store / "browser_export") == first

    page.locator("#train-overwrite input[type=checkbox]").check()
    page.locator("#train-export").click()
    status_has(page, "train-export-status", "python diffusion.py restore browser_export-")
    (entry,) = replaced.list_replaced(train_app.store, "browser_export")
    assert entry.entry in page.locator("#train-export-status").inner_text() and files_of(entry.folder) == first


def test_start_and_stop_refusals_say_why_in_chromium(train_app, page):
    """Start's refusals reach the page as a toast with their reason (a non-queued event's gr.Error
    shows as a bare "Error" in Gradio 6): here a step count over the cap."""
    page.goto(train_app.url)
    page.get_by_role("tab", name="Train").click()
    fill_text(page, "#train-run input", "browser_cap_run")
    page.locator("#train-run input").press("Enter")
    set_number(page, "train-steps", 2_000_000)
    page.locator("#train-start").click()
    refused_with(page, "steps must be at most 1,000,000")
    assert not (train_app.store.parent / "runs" / "browser_cap_run").exists()
