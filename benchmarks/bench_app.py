#!/usr/bin/env python3
"""The app's responsiveness with a real model: time to the first preview and to the
finished images, as a ``gradio_client`` on loopback sees them.

    python benchmarks/bench_app.py [--model default_model] [--images 4] [--steps 20] [--repeats 7]
                                   [--log benchmarks/results/app.txt]

Starts ``web.py --model MODEL`` from the model store (a fresh process, as a user
would), waits until it answers, then sends ``--repeats`` generate requests one
after another (DPM-Solver++, guidance 3, a new seed each) through the public
``/generate`` endpoint. For each it records when the first streamed output (a
live preview of the denoising) arrived and when the final result did. The first
request is reported apart: it pays for the text encoder and the model's first
use. Printed: every request, then min / median / max of the rest. "first status" is the
first streamed output (the status line); "first preview" the first whose gallery holds
an image (the x_0 estimate after the first sampler step).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlog import tee_stdout  # noqa: E402


def one_request(client, args: argparse.Namespace, seed: int) -> tuple[float, float, float, int]:
    """(seconds to the first streamed output (a status line), to the first preview image in the
    gallery, to the result; outputs streamed)."""
    start = time.perf_counter()
    job = client.submit(args.prompt, args.model, "DPM-Solver++", args.steps, 3.0, seed, args.images, False,
                        api_name="/generate")
    first = preview = None
    while not job.done():
        outs = job.outputs()
        if first is None and outs:
            first = time.perf_counter() - start
        if preview is None and any(isinstance(o, (list, tuple)) and o and o[0] for o in outs):
            preview = time.perf_counter() - start  # an output whose gallery holds images: a live preview
        time.sleep(0.002)
    job.result()  # raises if the request failed
    total = time.perf_counter() - start
    return (first if first is not None else total), (preview if preview is not None else total), total, \
        len(job.outputs())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default_model")
    p.add_argument("--prompt", default="a photo of a goldfish")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)

    import web_helpers as wh
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        server = wh.WebServer(["--model", args.model, "--out", str(Path(tmp) / "out")], Path(tmp)).start()
        try:
            server.wait_ready()
            print(f"web.py --model {args.model} ready after {server.ready_after_s:.1f} s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
            rows = []
            for r in range(args.repeats):
                first, preview, total, outputs = one_request(client, args, seed=r)
                rows.append((first, preview, total))
                print(f"request {r + 1}: first status {first:.3f} s, first preview {preview:.3f} s, "
                      f"done {total:.3f} s, {outputs} outputs streamed"
                      + (" (first request: loads the text encoder)" if r == 0 else ""), flush=True)
        finally:
            server.stop()
    rest = rows[1:] or rows
    firsts, previews, totals = ([row[i] for row in rest] for i in range(3))
    print(f"\n{args.images} images, DPM-Solver++ {args.steps} steps, guidance 3, {args.model}; "
          f"{len(rest)} requests after the first, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}:")
    print(f"first status:  median {statistics.median(firsts):.3f} s (min {min(firsts):.3f}, max {max(firsts):.3f})")
    print(f"first preview: median {statistics.median(previews):.3f} s (min {min(previews):.3f}, "
          f"max {max(previews):.3f})")
    print(f"done:          median {statistics.median(totals):.3f} s (min {min(totals):.3f}, max {max(totals):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
