#!/usr/bin/env python3
"""The app's responsiveness with a real model: time to the first preview and to the
finished images, as a client on loopback sees them.

    python -m benchmarks.bench_app [--model default_model] [--images 4] [--steps 20] [--repeats 7]
                                   [--log benchmarks/results/app.txt]
                                   [--browser 3 --screenshot output_ImageNet/default_model/web_app.png]

Starts ``web.py --model MODEL`` from the model store (a fresh process, as a user
would), waits until it answers, then sends ``--repeats`` generate requests one
after another (DPM-Solver++, guidance 3, a new seed each) through the public
``/generate`` endpoint. For each it records when the first streamed output (a
live preview of the denoising) arrived and when the final result did. The first
request is reported apart: it pays for the text encoder and the model's first
use. Each request is sent twice, alternately: through ``gradio_client``, and speaking the
queue's protocol directly (POST queue/join, then its server-sent events), as the app's page
does. gradio_client polls its messages every 50 ms from a worker thread, a delay the page
does not pay; the second row is what a person in the browser waits for, less the drawing.
Printed: every request, then min / median / max of the rest. "first status" is the
first streamed output (the status line); "first preview" the first whose gallery holds
an image (the x_0 estimate after the first sampler step).

With ``--live``, the requests go to ``/live`` instead (what the Live switch calls: the model's
few-step student, one short job, no previews), with the model's own guidance: the time from the
request to the finished images in the queue's protocol is the Live redraw's latency. Each request
has a new seed (as when the seed or guidance moves); ``--new-prompts`` gives each a new prompt too
(as while typing: the text encoder runs for each). The queue-protocol requests share one session
hash, as one open page does.

With ``--browser N``, the same server is then driven N times from Debian's Chromium
(Playwright, no browser download): click Generate with the page's defaults and time
the click to the first image in the gallery and to "Done" in the status line, as a
person sees it (seed -1: a new random seed per click); ``--screenshot`` keeps a full-page screenshot of the last run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.benchlog import tee_stdout  # noqa: E402
from benchmarks import app_server as wh  # noqa: E402


def one_request(client, args: argparse.Namespace, seed: int) -> tuple[float, float, float, int]:
    """(seconds to the first streamed output (a status line), to the first preview image in the
    gallery, to the result; outputs streamed)."""
    start = time.perf_counter()
    job = client.submit(*generate_data(args, seed), api_name="/live" if args.live else "/generate")
    first = preview = None
    while not job.done():
        outs = job.outputs()
        if first is None and outs:
            first = time.perf_counter() - start
        if preview is None and any(isinstance(o, (list, tuple)) and o and isinstance(o[0], list) and o[0]
                                   for o in outs):
            preview = time.perf_counter() - start  # an output whose gallery is a list of images (a skipped
            # gallery comes as an update dict): a live preview
        time.sleep(0.002)
    job.result()  # raises if the request failed
    total = time.perf_counter() - start
    return (first if first is not None else total), (preview if preview is not None else total), total, \
        len(job.outputs())


def endpoint_index(url: str, api_name: str, n_inputs: int) -> int:
    """The queue's fn_index of the event that ``api_name`` names (from the page's /config)."""
    import httpx

    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            if len(dep["inputs"]) != n_inputs:
                raise SystemExit(f"/{api_name} takes {len(dep['inputs'])} inputs, the benchmark sends {n_inputs}")
            return dep["id"]
    raise SystemExit(f"the app has no /{api_name} endpoint")


PAGE_SESSION = uuid.uuid4().hex  # one page's session: the page keeps its hash from load to close


def queue_stream(http, fn_index: int, data: list, on_joined: Callable[[], None] | None = None,
                 final: list | None = None, session: str = PAGE_SESSION) -> Iterator[list]:
    """Speak the queue's protocol as the browser's page does: POST /gradio_api/queue/join, then read
    the server-sent events of /gradio_api/queue/data. Yields the outputs (diffs applied) of every
    streamed update, then of the result; raises if the request failed. ``on_joined``: called once the
    join is answered; ``final``: filled with the result's outputs. ``session``: the page's session
    hash, the same for every request of one page (gradio builds a session's state at its first
    request: about 15 ms for this app's blocks, paid once per page, not per request)."""
    import json

    from gradio_client.utils import apply_diff

    join = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                     "event_data": None, "trigger_id": None})
    join.raise_for_status()
    if on_joined is not None:
        on_joined()
    outputs = None
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
        for line in events.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_generating":
                out = msg["output"]["data"]
                outputs = out if outputs is None else [apply_diff(o, d) for o, d in zip(outputs, out)]
                yield outputs
            elif msg.get("msg") == "process_completed":
                if not msg.get("success", True):
                    raise RuntimeError(f"the request failed: {msg.get('output')}")
                if final is not None:
                    final.extend(msg["output"]["data"])
                return


def has_preview(outputs: list) -> bool:
    """The gallery (the first output) holds images: a live preview."""
    return isinstance(outputs[0], list) and bool(outputs[0])


def generate_data(args: argparse.Namespace, seed: int) -> list:
    """``/generate``'s eight inputs (guidance 3: the cost does not depend on the scale); with ``--live``,
    ``/live``'s (Live on, the prompt, the model, guidance, seed, images, no variation)."""
    if args.live:
        prompt = f"{args.prompt} number {seed}" if args.new_prompts else args.prompt  # typing: a text not yet encoded
        return [True, prompt, args.model, args.guidance, seed, args.images, -1, 0.0]
    return [args.prompt, args.model, "DPM-Solver++", args.steps, 3.0, seed, args.images, False]


HANDLER_TIMES = re.compile(r"\*\*(\d+) ms\*\* \((\d+) ms sampling\)")


def handler_times(status: object) -> tuple[float, float] | None:
    """(the handler's own seconds, of which sampling) from a Live status line, or None."""
    m = HANDLER_TIMES.search(str(status))
    return (int(m.group(1)) / 1000, int(m.group(2)) / 1000) if m else None


def one_request_sse(http, fn_index: int, args: argparse.Namespace, seed: int,
                    final: list | None = None) -> tuple[float, float, float, int]:
    """As ``one_request``, but over ``queue_stream``, as the browser's page does. gradio_client polls
    its message queue every 50 ms from a worker thread, so it adds a client-side delay the browser
    does not have; this path has none."""
    start = time.perf_counter()
    first = preview = None
    streamed = 0
    for outputs in queue_stream(http, fn_index, generate_data(args, seed), final=final):
        streamed += 1
        now = time.perf_counter() - start
        first = now if first is None else first
        if preview is None and has_preview(outputs):
            preview = now
    total = time.perf_counter() - start
    return (first if first is not None else total), (preview if preview is not None else total), total, streamed


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
GALLERY_SRCS_JS = "() => [...document.querySelectorAll('#gallery img')].map(i => i.src)"
NEW_IMAGES_JS = ("(before) => [...document.querySelectorAll('#gallery img')]"
                 ".filter(i => i.complete && i.naturalWidth > 0 && !before.includes(i.src)).length")


def browser_runs(url: str, n: int, screenshot: str | None) -> list[tuple[float, float]]:
    """(click -> first gallery image, click -> "Done") for ``n`` Generate clicks in Chromium."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#generate")
            page.locator("#prompt textarea").fill("a photo of a goldfish")
            for r in range(n):
                # a random seed per click (the page writes the seed it used back into the box): the same seed
                # gives the same PNGs, which gradio serves from the same content-addressed URLs
                page.locator("#seed input").fill("-1")
                before = page.evaluate(GALLERY_SRCS_JS)  # new images are new files: previews, then the PNGs
                t0 = time.perf_counter()
                page.locator("#generate").click()
                page.wait_for_function(NEW_IMAGES_JS + " > 0", arg=before)
                first = time.perf_counter() - t0
                page.wait_for_function(NEW_IMAGES_JS + " >= 4 && (document.querySelector('#status')?.innerText || '')"
                                       ".includes('Done')", arg=before)
                done = time.perf_counter() - t0
                rows.append((first, done))
                print(f"Chromium click {r + 1}: first image in the gallery {first:.3f} s, done {done:.3f} s", flush=True)
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=screenshot, full_page=True)
                print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default_model")
    p.add_argument("--prompt", default="a photo of a goldfish")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--live", action="store_true", help="time /live (the Live switch: the few-step student)")
    p.add_argument("--guidance", type=float, default=6.0, help="with --live: the guidance scale")
    p.add_argument("--new-prompts", action="store_true",
                   help="with --live: a new prompt each request (as while typing: the text encoder runs each time; "
                        "default: one prompt, new seeds, as when moving the seed or guidance)")
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    p.add_argument("--browser", type=int, default=0, help="then N Generate clicks in Chromium (default 0: none)")
    p.add_argument("--screenshot", default=None, help="with --browser: save a full-page screenshot here")
    p.add_argument("--threads", type=int, default=None, help="web.py --threads (default: web.py's own default)")
    args = p.parse_args(argv)
    tee_stdout(args.log)

    import httpx
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        server_args = ["--model", args.model, "--out", str(Path(tmp) / "out")]
        if args.threads:
            server_args += ["--threads", str(args.threads)]
        server = wh.WebServer(server_args, Path(tmp)).start()
        try:
            server.wait_ready()
            print(f"web.py {' '.join(server_args[:2] + server_args[4:])} ready after {server.ready_after_s:.1f} s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
            fn_index = endpoint_index(server.url, "live" if args.live else "generate", 8)
            rows, sse_rows, handler_rows = [], [], []
            with httpx.Client(base_url=server.url.rstrip("/"), timeout=300) as http:
                # alternate the two clients, so load changes hit both alike
                for r in range(args.repeats):
                    for kind, table in (("gradio_client", rows), ("queue protocol", sse_rows)):
                        if kind == "gradio_client":
                            first, preview, total, outputs = one_request(client, args, seed=r)
                        else:
                            final: list = []
                            first, preview, total, outputs = one_request_sse(http, fn_index, args, seed=1000 + r,
                                                                             final=final)
                            if args.live and handler_times(final[1:2]):
                                handler_rows.append((*handler_times(final[1:2]), total))
                        table.append((first, preview, total))
                        print(f"request {r + 1} ({kind}): first status {first:.3f} s, first preview {preview:.3f} s, "
                              f"done {total:.3f} s, {outputs} outputs streamed"
                              + (f"; the handler says {handler_rows[-1][0]:.3f} s, {handler_rows[-1][1]:.3f} s of it "
                                 "sampling" if kind != "gradio_client" and args.live and handler_rows else "")
                              + (" (first request: loads the text encoder)" if r == 0 and table is rows else ""),
                              flush=True)
            clicks = browser_runs(server.url, args.browser, args.screenshot) if args.browser else []
        finally:
            server.stop()
    what = (f"Live (/live: {args.model}'s student), guidance {args.guidance:g}" if args.live
            else f"DPM-Solver++ {args.steps} steps, guidance 3")
    print(f"\n{args.images} images, {what}, {args.model}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}:")
    for kind, table in (("gradio_client", rows[1:] or rows), ("queue protocol (as the page)", sse_rows)):
        firsts, previews, totals = ([row[i] for row in table] for i in range(3))
        print(f"{kind}, {len(table)} requests" + (" after the first" if table is not sse_rows else "") + ":")
        for what, xs in (("first status: ", firsts), ("first preview:", previews), ("done:         ", totals)):
            print(f"  {what} median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})")
    if handler_rows:  # where a Live redraw's time goes: sampling, the rest of the handler, the queue
        samp, hand, done = (statistics.median(row[i] for row in handler_rows) for i in (1, 0, 2))
        print(f"Live, queue protocol, medians: sampling {samp:.3f} s; the rest of the handler (recipes, PNG files) "
              f"{hand - samp:.3f} s; the queue and transport {done - hand:.3f} s; done {done:.3f} s")
    if clicks:
        firsts, dones = [c[0] for c in clicks], [c[1] for c in clicks]
        print(f"Chromium, {len(clicks)} clicks (Generate with the page's defaults: {args.model}, 4 images):")
        print(f"first image in the gallery: median {statistics.median(firsts):.3f} s (min {min(firsts):.3f}, "
              f"max {max(firsts):.3f})")
        print(f"done:                       median {statistics.median(dones):.3f} s (min {min(dones):.3f}, "
              f"max {max(dones):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
