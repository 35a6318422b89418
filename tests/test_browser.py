"""A real browser: Debian's headless Chromium, driven by Playwright, uses the app.

It opens the page, types a prompt, clicks Generate, waits for the live preview
and then for the finished gallery, and saves screenshots (in the test's tmp
folder and, for people, in output_ImageNet/screenshots/). Playwright never
downloads a browser here: it drives /usr/bin/chromium, and the test is skipped
when that is absent (``python3 dev.py test`` installs it with apt).
"""
from __future__ import annotations

import os
import re
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
pytestmark = [pytest.mark.browser, pytest.mark.slow]  # Chromium flows: dev.py test --full

pytest_plugins = ["web_helpers"]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "output_ImageNet" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]

LOADED_IMAGES_JS = """(sel) => [...document.querySelectorAll(sel + ' img')]
    .filter(i => i.complete && i.naturalWidth > 0).length"""


# The first gallery images to finish loading (decoded, not only in the DOM), and the status line at
# that moment: a live preview is seen while the run is still going.
WATCH_FIRST_IMAGES_JS = """() => {
    window.__firstGallerySrcs = null;
    window.__statusAtFirst = null;
    const seen = () => {
        const imgs = [...document.querySelectorAll('#gallery img')].filter(i => i.complete && i.naturalWidth > 0);
        if (window.__firstGallerySrcs === null && imgs.length) {
            window.__firstGallerySrcs = imgs.map(i => i.src);
            window.__statusAtFirst = document.querySelector('#status')?.innerText || '';
        }
    };
    document.addEventListener('load', seen, true);  // image loads do not bubble: listen while capturing
    new MutationObserver(seen).observe(document.body, {childList: true, subtree: true, attributes: true});
}"""
GALLERY_SRCS_JS = "() => [...document.querySelectorAll('#gallery img')].map(i => i.src)"


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
    fill_text(page, "#prompt textarea", "a photo of a ladybug")
    # Watch the page from before the click: the first images to land in the gallery. A live preview
    # lands strictly before the results: its images are other files than the finished PNGs.
    page.evaluate(WATCH_FIRST_IMAGES_JS)
    t0 = time.monotonic()
    page.locator("#generate").click()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') > 0")
    first_preview = time.monotonic() - t0
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Done')",
                           timeout=120_000)
    done = time.monotonic() - t0
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 4")
    first, final = page.evaluate("() => window.__firstGallerySrcs"), page.evaluate(GALLERY_SRCS_JS)
    status_then = page.evaluate("() => window.__statusAtFirst")
    assert first and len(final) == 4 and not set(first) & set(final), (first, final)
    # seen before the results, a live preview: the status then says "Step k/N", not Done (on an idle
    # machine the tiny model's 20 steps take half a second, so the first preview the page shows may be
    # the last step's: what is checked is that previews arrive before the results, not how many)
    m = re.search(r"Step (\d+)/(\d+)", status_then or "")
    assert m and int(m.group(1)) <= int(m.group(2)) and "Done" not in status_then, status_then
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


def live_jobs(tiny_app) -> int:
    """How many Live jobs the server has run so far (it logs each one)."""
    return len(re.findall(r"live job \d+", tiny_app.server.log_path.read_text(errors="replace")))


def first_image_prompt(page) -> str:
    """The prompt in the recipe of the gallery's first PNG, as served to the page."""
    src = page.evaluate("() => document.querySelector('#gallery img')?.src")
    from io import BytesIO
    body = page.request.get(src).body()
    with Image.open(BytesIO(body)) as im:
        return im.text.get("parameters", "").split("\n")[0]


def test_live_redraws_as_you_type_in_chromium(tiny_app, page, tmp_path):
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    # the prompt, the Live switch and Generate are on the first screen
    for sel in ("#prompt textarea", "#live input", "#generate"):
        box = page.locator(sel).first.bounding_box()
        assert box and box["y"] + box["height"] <= 900, (sel, box)
    page.locator("#live input").check()
    page.wait_for_function("() => (document.querySelector('#live-info')?.innerText || '').includes('tiny-live')")
    before = live_jobs(tiny_app)
    # typing, no click: images appear, drawn by the student
    page.locator("#prompt textarea").press_sequentially("a photo of a goldfish", delay=30)
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').startsWith('Live: 4 image(s)')",
                           timeout=60_000)
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 4")
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('tiny-live')")
    page.wait_for_timeout(1_500)  # the last keystroke's job has finished
    assert first_image_prompt(page) == "a photo of a goldfish"
    assert re.search(r"in \d+ ms", page.locator("#status").inner_text())  # each redraw's latency is shown
    assert live_jobs(tiny_app) > before

    # a burst of 20 changes: it ends with the last one's images, and changes that arrive while a redraw
    # runs are merged into one (how many redraws run depends on the machine's speed: far fewer than 20)
    page.locator("#prompt textarea").fill("")
    page.wait_for_timeout(1_000)
    start = live_jobs(tiny_app)
    burst = "a photo of a ladybug"  # 20 keystrokes
    page.locator("#prompt textarea").press_sequentially(burst, delay=0)
    page.wait_for_timeout(3_000)
    page.wait_for_function("(want) => (document.querySelector('#status')?.innerText || '').startsWith('Live: 4')",
                           arg=burst)
    assert first_image_prompt(page) == burst
    ran = live_jobs(tiny_app) - start
    assert 1 <= ran <= 10, ran
    shot = tmp_path / "web_live.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_live.png")
    print(f"\n[live] a burst of {len(burst)} keystrokes ran {ran} job(s); status: {page.locator('#status').inner_text()}")


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
    selector = f"#{elem_id} input[type=number]"
    fill_text(page, selector, str(value))
    page.locator(selector).press("Enter")


def test_stop_in_chromium(tiny_app, page):
    """Stop ends a long job at its next step: the next job does not wait for it."""
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    fill_text(page, "#prompt textarea", "a photo of a goldfish")
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
    assert time.monotonic() - t0 < 60, "the stopped job kept the device busy"  # loose; the job alone takes minutes


# =============================================================== the studio flows
def open_accordion(page, label: str) -> None:
    page.get_by_role("button", name=label).first.click()


# An error reaches the page as a toast, and the status line keeps its old text: wait for either, so a
# failure says what the page showed instead of timing out in silence.
TOASTS_JS = "() => [...document.querySelectorAll('.toast-body.error')].map(t => t.innerText.trim()).filter(Boolean)"


def status_has(page, elem_id: str, text: str, timeout: int = 120_000) -> None:
    """Wait until the status box ``#elem_id`` contains ``text``; fail at once on an error toast."""
    found = f"(document.querySelector('#{elem_id}')?.innerText || '').includes({text!r})"
    try:
        page.wait_for_function(f"() => {found} || ({TOASTS_JS})().length > 0", timeout=timeout)
    except Exception as e:  # playwright's TimeoutError: say what the page showed at that moment
        raise AssertionError(f"#{elem_id} never showed {text!r}: {page_state(page, elem_id)}") from e
    if not page.evaluate(f"() => {found}"):
        raise AssertionError(f"an error instead of {text!r}: {page_state(page, elem_id)}")


def page_state(page, elem_id: str) -> str:
    """The status box's text (with Gradio's queue/progress overlay) and every error toast, for a failure message."""
    status = page.evaluate(f"() => document.querySelector('#{elem_id}')?.innerText ?? '(no such element)'")
    return f"status {status!r}, toasts {page.evaluate(TOASTS_JS)!r}"


def fill_text(page, selector: str, text: str, attempts: int = 5) -> None:
    """Type into a Gradio box and make sure the page keeps it: a tab or accordion that renders on its
    first visit can replace a box filled in the same instant, so fill again until the value stays."""
    box = page.locator(selector).first
    for _ in range(attempts):
        box.fill(text)
        try:  # kept for a moment, not only written
            page.wait_for_timeout(200)
            page.wait_for_function("([sel, want]) => document.querySelector(sel)?.value === want",
                                   arg=[selector, text], timeout=2_000)
            return
        except Exception:
            continue
    raise AssertionError(f"{selector} did not keep {text!r} (it holds {box.input_value()!r})")


def test_restore_from_png_in_chromium(tiny_app, page, tmp_path):
    """Drop a PNG with a recipe: every setting comes back into the form; a PNG without one says so."""
    from engine.recipe import save_png

    png = save_png(tmp_path / "made.png", np.zeros((16, 16, 3), np.uint8), "a photo of a jellyfish",
                   {"sampler": "ddim", "steps": 12, "guidance_scale": 4.5, "seed": 4242, "model": "tiny",
                    "variation_seed": 9, "variation_strength": 0.2})
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    page.locator("#restore-file input[type=file]").set_input_files(str(png))
    status_has(page, "restore-status", "Restored")
    assert page.locator("#prompt textarea").input_value() == "a photo of a jellyfish"
    assert page.locator("#seed input[type=number]").input_value() == "4242"
    assert page.locator("#steps input[type=number]").input_value() == "12"
    assert page.locator("#sampler").get_by_label("DDIM").is_checked()
    open_accordion(page, "Variations")  # a closed accordion's fields are not in the page
    page.wait_for_function("() => document.querySelector('#variation-seed input[type=number]')?.value === '9'")
    bare = tmp_path / "bare.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bare)
    page.goto(tiny_app.url)  # a fresh page: the file box shows the first file, not a drop zone, after an upload
    page.wait_for_selector("#generate")
    page.locator("#restore-file input[type=file]").set_input_files(str(bare))
    page.wait_for_function("() => /no generation recipe/.test(document.body.innerText)")
    shot = tmp_path / "web_restore.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_restore.png")


def test_variation_and_reuse_seed_in_chromium(tiny_app, page, tmp_path):
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    fill_text(page, "#prompt textarea", "a photo of a goldfish")
    set_number(page, "seed", 77)
    set_number(page, "num-images", 2)
    open_accordion(page, "Variations")
    set_number(page, "variation-seed", 50)
    set_number(page, "variation-strength", 0.3)
    page.locator("#generate").click()
    status_has(page, "status", "variation seed 50 at 0.3")
    status_has(page, "status", "Done: 2 image(s)")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 2")
    # select the second image, reuse its seed (78)
    set_number(page, "seed", 1)
    page.locator("#gallery .thumbnail-item").nth(1).click()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#selected') >= 1")
    page.locator("#reuse-seed").click()
    page.wait_for_function("() => document.querySelector('#seed input[type=number]')?.value === '78'")


def test_img2img_in_chromium(tiny_app, page, tmp_path):
    src = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src)
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    fill_text(page, "#prompt textarea", "a photo of a ladybug")
    open_accordion(page, "Start from an image (img2img)")
    page.locator("#init-image input[type=file]").set_input_files(str(src))
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#init-image') >= 1")
    page.locator("#show-start").click()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#start-image') >= 1")
    page.wait_for_function("() => /sampling starts here/.test(document.body.innerText)")
    page.locator("#generate").click()
    status_has(page, "status", "from an image at strength 0.6")
    status_has(page, "status", "Done: 4 image(s)")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 4")
    shot = tmp_path / "web_img2img.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_img2img.png")


def test_interpolation_in_chromium(tiny_app, page, tmp_path):
    page.goto(tiny_app.url)
    page.get_by_role("tab", name="Interpolate").click()
    fill_text(page, "#interp-prompt-a textarea", "a photo of a goldfish")
    fill_text(page, "#interp-prompt-b textarea", "a photo of a ladybug")
    page.locator("#interpolate").click()
    status_has(page, "interp-status", "Done: 8 frames")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#interp-gif') >= 1")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#interp-strip') >= 1")
    width = page.evaluate("() => document.querySelector('#interp-strip img').naturalWidth")
    assert width >= 8 * 128  # eight frames, each scaled up crisply to 128 px
    shot = tmp_path / "web_interpolate.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_interpolate.png")


def test_then_upscale_in_chromium(tiny_app, page, tmp_path):
    """Generate with 'Then upscale 2x': the gallery shows the second stage's 32 px images (the tiny
    model makes 16 px ones), and the status names the upscaler and the guidance interval."""
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    fill_text(page, "#prompt textarea", "a photo of a goldfish")
    set_number(page, "num-images", 2)
    open_accordion(page, "Speed, precision and upscaling")
    fill_text(page, "#guidance-interval textarea, #guidance-interval input", "0.28,5.42")
    page.locator("#then-upscale input").click()
    page.get_by_role("option", name="tiny_sr").click()
    page.locator("#generate").click()
    status_has(page, "status", "upscaled to 32 px by tiny_sr")
    assert "guidance only for sigma in (0.28, 5.42]" in page.locator("#status").inner_text()
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 2")
    widths = page.evaluate("() => [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)")
    assert widths and all(w == 32 for w in widths), widths
    shot = tmp_path / "web_then_upscale.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_then_upscale.png")


def test_train_tab_in_chromium(train_app, page, tmp_path):
    """The Train tab from a folder of pictures to generating with the new model: Prepare (2 classes
    x 8 pictures), Start (smoke), a loss point and a sample grid appear, Stop, Start again (resumes),
    Export, then Generate with it."""
    page.goto(train_app.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-folder input").click()
    page.get_by_role("option", name="shapes (pictures: prepare first)").click()
    status_has(page, "train-data", "holds pictures, not prepared yet")
    page.locator("#train-size").get_by_label("16").check()
    fill_text(page, "#train-val-fraction input[type=number]", "0.25")  # as the endpoint test: one prepared folder
    page.locator("#train-prepare").click()
    status_has(page, "train-data", "2 class(es), 12 training + 4 held-out images at 16 px")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#train-examples') >= 2")

    fill_text(page, "#train-run input", "browser_run")
    page.locator("#train-run input").press("Enter")
    set_number(page, "train-minutes", 0)
    set_number(page, "train-steps", 3000)
    set_number(page, "train-sample-every", 5)
    page.locator("#train-start").click()
    status_has(page, "train-status", "browser_run: running")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#train-grid') >= 1", timeout=120_000)
    page.wait_for_function("() => /loss \\d/.test(document.querySelector('#train-status')?.innerText || '')")
    shot = tmp_path / "web_train_running.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "web_train.png")
    page.locator("#train-stop").click()
    status_has(page, "train-status", "browser_run: stopped")
    stopped_at = int(re.search(r"step ([\d,]+)/", page.locator("#train-status").inner_text()).group(1).replace(",", ""))

    set_number(page, "train-steps", stopped_at + 5)  # Start again: resumes from the checkpoint
    page.locator("#train-start").click()
    status_has(page, "train-status", f"browser_run: finished · step {stopped_at + 5:,}/{stopped_at + 5:,}")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#train-timeline') >= 2")

    fill_text(page, "#train-model-name textarea, #train-model-name input", "browser_model")
    page.locator("#train-export").click()
    status_has(page, "train-export-status", "as browser_model")

    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Model").first.click()
    page.get_by_role("option", name="browser_model").click()
    status_has(page, "model-info", "browser_model")
    fill_text(page, "#prompt textarea", "a photo of a red disc")
    set_number(page, "num-images", 2)
    page.locator("#generate").click()
    status_has(page, "status", "Done: 2 image(s)")
    page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#gallery') >= 2")


# The Train tab's loss chart as drawn (Vega's SVG): each axis's labels, title and scale (Vega's own
# description of the axis: "... for a log scale ..." or "... for a discrete scale ..."), the legend's
# labels, and how many points each drawn line has.
CHART_JS = """() => {
    const svg = document.querySelector('#train-loss .vega-embed svg');
    if (!svg) return null;
    const texts = (root, sel) => [...root.querySelectorAll(sel + ' text')].map(t => t.textContent).filter(Boolean);
    const axis = name => {
        const g = [...svg.querySelectorAll('g.role-axis')]
            .find(a => (a.getAttribute('aria-label') || '').startsWith(name));
        return g ? {labels: texts(g, '.role-axis-label'), title: texts(g, '.role-axis-title').join(' '),
                    scale: g.getAttribute('aria-label')} : null;
    };
    const lines = [...svg.querySelectorAll('g.mark-line.role-mark path')].map(p => (p.getAttribute('d') || '')
        .split(/[ML]/).filter(s => s.trim()).length);
    return {x: axis('X-axis'), y: axis('Y-axis'), legend: texts(svg, '.role-legend-label'), lines};
}"""

# Each picture in a box: its own size, its size on the page, and its caption as laid out.
PICTURES_JS = """(sel) => [...document.querySelectorAll(sel + ' figure')].map(f => {
    const img = f.querySelector('img'), cap = f.querySelector('figcaption'), r = img.getBoundingClientRect();
    return {natural: [img.naturalWidth, img.naturalHeight], shown: [r.width, r.height], caption: cap?.innerText ?? '',
            clipped: cap ? cap.scrollWidth > cap.clientWidth + 1 || cap.getBoundingClientRect().width < 8 : true};
})"""

TINY_TRAIN_CLASSES = {"n01443537": "goldfish", "n04146614": "school bus"}


def tiny_imagenet_pictures(shared: Path, dst: Path, per_class: int = 20) -> Path:
    """A user's folder of class folders: the first ``per_class`` training pictures of two Tiny ImageNet classes."""
    import zipfile

    with zipfile.ZipFile(shared / "tiny-imagenet-200.zip") as z:
        for wnid, name in TINY_TRAIN_CLASSES.items():
            (dst / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                member = f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG"
                (dst / name / f"{wnid}_{i}.JPEG").write_bytes(z.read(member))
    return dst


def assert_whole_and_zoomed(pictures: list[dict], captions: list[str] | None = None) -> None:
    """Every picture shown uncropped at one whole-number zoom of its own pixels (both sides alike), its
    caption laid out in full."""
    assert pictures, "no pictures shown"
    for p in pictures:
        (w, h), (sw, sh) = p["natural"], p["shown"]
        zoom = sw / w
        assert w > 0 and zoom >= 1 and abs(zoom - round(zoom)) < 1e-6 and abs(sh - h * round(zoom)) < 0.5, p
        assert not p["clipped"], p
    if captions is not None:
        assert [p["caption"] for p in pictures] == captions


def test_train_chart_and_pictures_while_watched_in_chromium(train_app, page, shared_data, tmp_path):
    """Watched live from Start, without reloading: the loss chart draws one line per band of t and one
    for all t, with numbers on both axes (the loss on a log scale) and a legend naming the bands; the
    example strips, the newest grid and the timeline are whole, at a whole-number zoom, with their
    captions readable. Two Tiny ImageNet classes x 20 pictures at 32 px, the smoke preset, 400 steps."""
    tiny_imagenet_pictures(shared_data, train_app.data.parent / "train_data" / "tiny_pictures")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(train_app.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-folder input").click()
    page.get_by_role("option", name="tiny_pictures (pictures: prepare first)").click()
    status_has(page, "train-data", "holds pictures, not prepared yet")
    page.locator("#train-size").get_by_label("32").check()
    page.locator("#train-prepare").click()
    status_has(page, "train-data", "2 class(es), 38 training + 2 held-out images at 32 px")

    fill_text(page, "#train-run input", "watched_run")
    page.locator("#train-run input").press("Enter")
    set_number(page, "train-minutes", 0)
    set_number(page, "train-steps", 400)
    set_number(page, "train-sample-every", 20)
    page.locator("#train-start").click()
    try:
        status_has(page, "train-status", "watched_run: running")
        try:  # five lines of three points or more: 30 steps logged, watched from Start
            page.wait_for_function(f"() => {{ const c = ({CHART_JS})(); "
                                   "return c && c.lines.length >= 5 && c.lines.every(n => n >= 3); }",
                                   timeout=240_000)
        except Exception as e:
            raise AssertionError(f"the loss chart never drew its lines: {page.evaluate(CHART_JS)}; "
                                 f"{page_state(page, 'train-status')}") from e
        chart = page.evaluate(CHART_JS)
        # numbers on both axes (not one category per value), the loss on a log scale
        assert "for a linear scale" in chart["x"]["scale"] and "for a log scale" in chart["y"]["scale"], chart
        assert chart["x"]["title"] == "step" and 2 <= len(chart["x"]["labels"]) <= 12, chart
        assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", s) for s in chart["x"]["labels"]), chart
        assert "log" in chart["y"]["title"] and 2 <= len(chart["y"]["labels"]) <= 12, chart
        losses = [float(s) for s in chart["y"]["labels"]]
        assert len(set(losses)) == len(losses) and all(0 < v <= 10 for v in losses), chart
        assert len(chart["lines"]) == 5, chart  # all t and four bands, each named in the legend
        assert chart["legend"] == ["all t", "t 0-250", "t 250-500", "t 500-750", "t 750-1000"], chart

        assert_whole_and_zoomed(page.evaluate(PICTURES_JS, "#train-examples"), ["goldfish", "school bus"])
        page.wait_for_function(f"() => ({LOADED_IMAGES_JS})('#train-timeline') >= 2", timeout=240_000)
        assert_whole_and_zoomed(page.evaluate(PICTURES_JS, "#train-grid"))
        timeline = page.evaluate(PICTURES_JS, "#train-timeline")
        assert_whole_and_zoomed(timeline)
        assert all(re.fullmatch(r"step [\d,]+", p["caption"]) for p in timeline), timeline

        page.locator("#train-loss").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "train_tab_chart.png"))
        keep(tmp_path / "train_tab_chart.png", "train_tab_chart.png")
        page.screenshot(path=str(tmp_path / "train_tab.png"), full_page=True)
        keep(tmp_path / "train_tab.png", "train_tab.png")
    finally:
        page.locator("#train-stop").click()
        status_has(page, "train-status", "watched_run: stopped")
