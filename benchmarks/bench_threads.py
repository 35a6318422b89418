#!/usr/bin/env python3
"""Why a Live redraw takes longer in the app than in the core: the same sampling, timed on the main
thread and on other threads of one process.

The app samples in worker threads (gradio's handler threads, the job runner's sampling thread),
while the process's main thread has already run torch (loading the models). PyTorch's CPU
kernels run on OpenMP (GNU libgomp in the PyPI wheels), which keeps one team of threads per
thread that starts parallel work; once the process holds more OpenMP threads than there are
cores, libgomp stops spin-waiting between parallel regions ("throttled" spinning), and a
network made of many short kernels (4 images at 32 px: about 60 conv/norm kernels per forward)
pays a wake-up at each one.

    python -m benchmarks.bench_threads [--model tiny200-live] [--threads 2] [--log FILE]

Prints the median seconds for 4 images at the model's default sampler and steps: on the main
thread, then on a new thread, a thread-pool thread, a new thread that calls
``torch.set_num_threads`` itself, and the main thread again once the other threads have ended.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.benchlog import tee_stdout  # noqa: E402
from engine import store  # noqa: E402
from engine.request import GenerationRequest, generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200-live")
    p.add_argument("--store", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    torch.set_num_threads(args.threads)
    lm = store.load_model(args.model, store=args.store)
    d = lm.sampler_defaults
    req = GenerationRequest(prompts=["a photo of a goldfish"], num_images=args.images, seed=1,
                            sampler=str(d.get("sampler", "ddim")), steps=int(d.get("steps", 4)),
                            guidance=float(d.get("guidance_scale", 3.0)), guidance_interval="none", precision="fp32")
    results: dict[str, float] = {}

    def timed(label: str, set_threads: bool = False) -> None:
        if set_threads:
            torch.set_num_threads(args.threads)
        for _ in range(3):  # warm-up: allocations, kernels, the thread's own OpenMP team
            generate(lm, req)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            generate(lm, req)
            times.append(time.perf_counter() - t0)
        results[label] = statistics.median(times)
        print(f"{label}: {results[label]:.3f} s (min {min(times):.3f}, max {max(times):.3f})", flush=True)

    def on_thread(label: str, **kw) -> None:
        t = threading.Thread(target=timed, args=(label,), kwargs=kw)
        t.start()
        t.join()

    print(f"{lm.name}, {args.images} images, {req.sampler} {req.steps} steps, fp32; {args.threads} torch threads; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}", flush=True)
    timed("main thread")
    on_thread("a new thread")
    with ThreadPoolExecutor(2) as pool:
        pool.submit(timed, "a thread-pool thread").result()
    on_thread("a new thread that sets torch's threads itself", set_threads=True)
    timed("main thread again, the other threads ended")
    base = results["main thread"]
    print("\n| where | seconds | vs the main thread |\n| --- | ---: | ---: |")
    for label, s in results.items():
        print(f"| {label} | {s:.3f} | {s / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
