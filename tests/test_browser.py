"""A real browser: Debian's headless Chromium, driven by Playwright, uses the app.

It opens the page, types a prompt, clicks Generate, waits for the live preview
and then for the finished gallery, and saves screenshots (in the test's tmp
folder and, for people, in output_ImageNet/screenshots/). Playwright never
downloads a browser here: it drives /usr/bin/chromium, and the test is skipped
when that is absent (``python3 dev.py test`` installs it with apt).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.register_assert_rewrite("web_helpers")  # it is also loaded as a plugin below
from conftest import require_environment  # noqa: E402
from web_helpers import ROOT  # noqa: E402

# One shared server per test session (fixtures registered once, not per module).
pytest_plugins = ["web_helpers"]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "output_ImageNet" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]

LOADED_IMAGES_JS = """(sel) => [...document.querySelectorAll(sel + ' img')]
    .filter(i => i.complete && i.naturalWidth > 0).length"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        require_environment(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for this test")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()


def keep(shot: Path, name: str) -> Path:
    """Copy a screenshot where people can find it (output_ImageNet is git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dst = SCREENSHOTS / name
    shutil.copyfile(shot, dst)
    return dst


def test_generate_in_chromium(tiny_app, page, tmp_path, record_property):
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    page.locator("#prompt textarea").fill("a photo of a ladybug")
    t0 = time.monotonic()
    page.locator("#generate").click()
    # The live preview: images in the gallery while the status still counts steps.
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') > 0")
    first_preview = time.monotonic() - t0
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Done')",
                           timeout=120_000)
    done = time.monotonic() - t0
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 4")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gif') >= 1")
    status = page.locator("#status").inner_text()
    assert "4 image(s)" in status and "seed 0..3" in status
    captions = page.locator("#gallery").inner_text()
    assert "seed 0" in captions and "seed 3" in captions

    shot = tmp_path / "web_generate.png"
    page.screenshot(path=str(shot), full_page=True)
    kept = keep(shot, "web_generate.png")
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 600 and img.shape[1] >= 1400 and img.std() > 20  # a real page, not a blank one
    record_property("click_to_first_preview_s", round(first_preview, 3))
    print(f"\n[timing] Chromium, tiny model, default settings (DPM-Solver++ 20 steps x 4): first preview "
          f"{first_preview:.2f} s after the click, done after {done:.2f} s; screenshot {kept}")


def test_forward_tab_in_chromium(tiny_app, page, tmp_path):
    page.goto(tiny_app.url)
    page.get_by_role("tab", name="Forward diffusion").click()
    page.get_by_role("button", name="Use an image from the data").click()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#forward-strip') >= 1")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#forward-image') >= 1")
    width = page.evaluate("() => document.querySelector('#forward-strip img').naturalWidth")
    assert width > 500  # seven labelled frames
    shot = tmp_path / "web_forward.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_forward.png")


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_stop_in_chromium(tiny_app, page):
    """Stop ends a long job at its next step: the next job does not wait for it."""
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    page.locator("#prompt textarea").fill("a photo of a goldfish")
    page.locator("#sampler").get_by_label("DDPM").check()
    page.wait_for_function("() => document.querySelector('#steps input[type=number]')?.value === '250'")
    set_number(page, "steps", 1000)
    set_number(page, "num-images", 8)  # 8 x 1000 DDPM steps: a minute or more on this model and CPU
    page.locator("#generate").click()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') > 0")
    page.locator("#stop").click()
    page.wait_for_function("() => /Stop/.test(document.querySelector('#status')?.innerText || '')")
    t0 = time.monotonic()
    page.locator("#sampler").get_by_label("DPM-Solver++").check()
    page.wait_for_function("() => document.querySelector('#steps input[type=number]')?.value === '20'")
    page.locator("#generate").click()
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Done')")
    status = page.locator("#status").inner_text()
    assert "DPM-Solver++, 20 steps" in status and "8 image(s)" in status
    assert time.monotonic() - t0 < 20, "the stopped job kept the device busy"
