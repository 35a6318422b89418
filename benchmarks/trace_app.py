#!/usr/bin/env python3
"""Where the app's first preview spends its time: one request's timeline, server side and client side.

    python -m benchmarks.trace_app [--model tiny200] [--images 4] [--steps 20] [--requests 6] [--threads 1]
                                   [--log benchmarks/results/app_trace.txt]

Runs ``web.py``'s own ``main`` in this process (so the server and the client read
one clock), with marks on the handler, ``core.generate_images``, the
network's forward (``GuidedDenoiser.model_output``) and the first sampler step,
then sends ``--requests`` generate requests over the queue's protocol, as the
page does (``bench_app.one_request_sse``'s path: POST queue/join, then the event
stream). Prints, for each milestone, its time after the POST (median, min-max over
the requests after the first, which loads the text encoder): the join's answer,
the handler's start, the first forward's start and end, the first preview
leaving the handler, and the client receiving it. The client shares the
server's process here (and its GIL), so its absolute times run a little over
``bench_app.py``'s; the breakdown is what this is for.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.benchlog import tee_stdout  # noqa: E402
from benchmarks import app_server as wh  # noqa: E402
import core as D  # noqa: E402
import webui.tab_generate as tab  # noqa: E402
from engine import request as engine_request  # noqa: E402
from webui import jobs, live, server  # noqa: E402

MILESTONES = ["join answered", "handler start", "generate_images start", "first forward start",
              "first forward end", "first preview yielded", "client: first status", "client: first preview",
              "client: done"]
LIVE_MILESTONES = ["join answered", "handler start", "device thread start", "generate_images start",
                   "first forward start", "first forward end", "generate_images end", "device thread end",
                   "handler end", "client: done"]


class Marks:
    """First time each milestone is reached in the current request (perf_counter seconds)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        with self.lock:
            self.t.setdefault(what, now)


def instrument(marks: Marks) -> None:
    """Wrap the handler, the generator and the network call with marks (this process only)."""
    generate_images, model_output, handler = D.generate_images, D.GuidedDenoiser.model_output, tab.GenerateTab._generate

    def traced_generate_images(*a, **k):
        marks("generate_images start")
        out = generate_images(*a, **k)
        marks("generate_images end")
        return out

    def traced_model_output(self, x, t):
        marks("first forward start")
        out = model_output(self, x, t)
        marks("first forward end")
        return out

    def traced_handler(self, *a):
        marks("handler start")
        for out in handler(self, *a):
            gallery = out[0]
            if isinstance(gallery, list) and gallery:
                marks("first preview yielded")
            yield out

    D.generate_images, D.GuidedDenoiser.model_output, tab.GenerateTab._generate = \
        traced_generate_images, traced_model_output, traced_handler

    redraw, device_run = live.LiveMode.redraw, jobs.DeviceThreads.run

    def traced_redraw(self, *a, **k):
        marks("handler start")
        out = redraw(self, *a, **k)
        marks("handler end")
        return out

    def traced_device_run(self, fn, *a, **k):
        def on_device(*a, **k):
            marks("device thread start")
            try:
                return fn(*a, **k)
            finally:
                marks("device thread end")
        return device_run(self, on_device, *a, **k)

    live.LiveMode.redraw, jobs.DeviceThreads.run = traced_redraw, traced_device_run
    engine_request.generate_images = traced_generate_images  # imported by name there


def start_server(args: argparse.Namespace, out: Path) -> str:
    """``web.py``'s main in this process, returning once it serves (launch without blocking)."""
    import gradio as gr

    launch = gr.Blocks.launch

    def launch_in_background(self, *a, **k):
        return launch(self, *a, **{**k, "prevent_thread_lock": True})

    gr.Blocks.launch = launch_in_background
    port = wh.free_port()
    argv = ["--model", args.model, "--port", str(port), "--out", str(out)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    server.main(argv)
    return f"http://127.0.0.1:{port}"


def one_request(http, fn_index: int, args: argparse.Namespace, seed: int, marks: Marks) -> float:
    from benchmarks.bench_app import generate_data, has_preview, queue_stream

    start = time.perf_counter()
    for outputs in queue_stream(http, fn_index, generate_data(args, seed), on_joined=lambda: marks("join answered")):
        marks("client: first status")
        if has_preview(outputs):
            marks("client: first preview")
    marks("client: done")
    return start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200")
    p.add_argument("--prompt", default="a photo of a goldfish")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--live", action="store_true", help="trace /live (the Live switch's redraw) instead of /generate")
    p.add_argument("--guidance", type=float, default=6.0, help="with --live: the guidance scale")
    p.add_argument("--new-prompts", action="store_true", help="with --live: a new prompt each request (typing)")
    p.add_argument("--threads", type=int, default=None, help="web.py --threads (default: web.py's own)")
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    if args.requests < 2:
        p.error("--requests must be at least 2 (the first is reported apart)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import httpx
    from benchmarks.bench_app import endpoint_index

    marks = Marks()
    instrument(marks)
    with tempfile.TemporaryDirectory(prefix="trace_app_") as tmp:
        url = start_server(args, Path(tmp) / "out")
        tee_stdout(args.log)  # after the server: uvicorn configures its logging from the real stdout
        fn_index = endpoint_index(url, "live" if args.live else "generate", 8)
        milestones = LIVE_MILESTONES if args.live else MILESTONES
        table: dict[str, list[float]] = {m: [] for m in milestones}
        with httpx.Client(base_url=url, timeout=300) as http:
            for r in range(args.requests):
                marks.t.clear()
                start = one_request(http, fn_index, args, seed=r, marks=marks)
                line = ", ".join(f"{m} {1e3 * (marks.t[m] - start):.0f}" for m in milestones if m in marks.t)
                print(f"request {r + 1}{' (loads the text encoder)' if r == 0 else ''}: ms after the POST: {line}",
                      flush=True)
                if r:
                    for m in milestones:
                        if m in marks.t:
                            table[m].append(1e3 * (marks.t[m] - start))
    what = f"Live (its student), guidance {args.guidance:g}" if args.live else f"{args.steps} steps"
    print(f"\n{args.model}, {args.images} image(s), {what}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; ms after the POST, median (min-max) of {args.requests - 1} requests:")
    for m in milestones:
        xs = table[m]
        if xs:
            print(f"  {m:<24} {statistics.median(xs):7.1f} ({min(xs):.1f}-{max(xs):.1f})")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the in-process server's threads are not daemons: leave without joining them
