#!/usr/bin/env python3
"""Images/s of preprocess.py against a naive single-process PIL loop, measured in the same run.

Two workloads, from ``../shared/data``:
* ``tiny``: the Tiny ImageNet zip (100,000 64x64 JPEGs, read from the zip);
  ``--tiny-limit N`` uses the first N files of each (sorted) class instead.
* ``full``: the 66 full-size ILSVRC sample JPEGs repeated ``--copies`` times
  (byte copies in a temporary ILSVRC-layout folder, nothing copied into the repo;
  not symlinks: preprocess.py reads each real file once, so linked copies would
  be skipped as duplicates and ours would do a tenth of the naive loop's work).

"naive" is ``Image.open(f).convert("RGB").resize((64, 64))`` in one process,
without draft mode (the loop most scripts start with). "ours" is
``preprocess.preprocess(...)`` end to end (scan, decode in a process pool,
write the arrays), with a no-op text embedder so only the image work is timed.
"ours, 1 worker" separates the draft-mode gain from the multi-core gain.

Runs are interleaved (naive, ours, ours-1, naive, ...) and the median is
reported, since other work may share the CPUs; the ratio within one run is
what matters.

    python -m benchmarks.bench_preprocess                   # both workloads
    python -m benchmarks.bench_preprocess --only full --repeats 5
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

import models.text_encoder  # noqa: E402,F401  (imported up front so no timed run pays for it)
from benchmarks.benchlog import tee_stdout  # noqa: E402
from dataprep.pipeline import default_workers, preprocess  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SIZE = 64


def no_embed(prompts: list[str]) -> np.ndarray:
    return np.zeros((len(prompts), 384), np.float32)


# --------------------------------------------------------------------------- naive loops


def naive_folder(files: list[Path], size: int = SIZE) -> int:
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as img:
            out[i] = np.asarray(img.convert("RGB").resize((size, size)))
    return len(files)


def naive_zip(zpath: Path, names: list[str], size: int = SIZE) -> int:
    out = np.empty((len(names), size, size, 3), np.uint8)
    with zipfile.ZipFile(zpath) as zf:
        for i, name in enumerate(names):
            with Image.open(io.BytesIO(zf.read(name))) as img:
                out[i] = np.asarray(img.convert("RGB").resize((size, size)))
    return len(names)


# --------------------------------------------------------------------------- workloads


def tiny_names(zpath: Path, limit: int | None) -> list[str]:
    with zipfile.ZipFile(zpath) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".JPEG") and "/train/" in n)
    if limit:
        by_class: dict[str, list[str]] = {}
        for n in names:
            by_class.setdefault(n.split("/")[2], []).append(n)
        names = [n for c in sorted(by_class) for n in by_class[c][:limit]]
    return names


def build_full_tree(tmp: Path, copies: int) -> list[Path]:
    src = SHARED / "imagenet-sample" / "train"
    files = []
    for f in sorted(src.glob("*/*.JPEG")):
        d = tmp / "train" / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            copy = d / f"copy{k:02d}_{f.name}"
            shutil.copyfile(f, copy)  # a real file each: links would be read once (duplicates)
            files.append(copy)
    (tmp / "LOC_synset_mapping.txt").symlink_to(SHARED / "imagenet-sample" / "LOC_synset_mapping.txt")
    return files


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the pool workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn) -> tuple[float, float]:
    c, t = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t, cpu_seconds() - c


def bench(name: str, n_images: int, runs: dict, repeats: int) -> dict:
    """``{label: (images/s, CPU ms per image)}``, medians over interleaved repeats."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for label, fn in runs.items():
            dt, cpu = timed(fn)
            times[label].append(dt)
            cpus[label].append(cpu)
            print(f"  [{name}] run {r + 1}/{repeats} {label:<18} {dt:7.2f}s  {n_images / dt:8.0f} images/s  "
                  f"{1000 * cpu / n_images:6.2f} CPU ms/image  (load {os.getloadavg()[0]:.1f})", flush=True)
    out = {k: (n_images / statistics.median(times[k]), 1000 * statistics.median(cpus[k]) / n_images) for k in runs}
    # The spread: seconds of each label (min-max), and ours / naive within each repeat (back to back).
    out["_spread"] = {k: (min(v), max(v)) for k, v in times.items()}
    out["_ratios"] = {k: [times["naive"][i] / times[k][i] for i in range(repeats)] for k in runs if k != "naive"}
    return out


# Over 100 lines on purpose: a benchmark script's flags and its table, in order.
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "full"], help="run one workload")
    ap.add_argument("--copies", type=int, default=20, help="copies of the 66 full-size JPEGs (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats for the full-size workload (default 3)")
    ap.add_argument("--tiny-repeats", type=int, default=1, help="repeats for the Tiny ImageNet workload (default 1)")
    ap.add_argument("--tiny-limit", type=int, help="use the first N images per class of the zip (default: all 500)")
    ap.add_argument("--workers", type=int, default=None, help="workers for 'ours' (default: all cores)")
    ap.add_argument("--markdown", type=Path, help="also write the result table to this file")
    ap.add_argument("--log", type=Path, help="also write everything printed (the raw runs) to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tee_stdout(args.log)
    if not SHARED.is_dir():
        print(f"no data: {SHARED} is missing", file=sys.stderr)
        return 2
    workers = args.workers or default_workers()
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load0 = os.getloadavg()
    header = (
        f"machine: {default_workers()} cores ({cpu}); python {platform.python_version()}, "
        f"pillow {Image.__version__}, numpy {np.__version__}; ours uses {workers} workers; "
        f"load average at start {load0[0]:.2f}"
    )
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmpdir:
        tmp = Path(tmpdir)
        counter = iter(range(10**6))

        def ours(src, w, expect, **kw):
            def go():
                out = tmp / f"out{next(counter)}"
                res = preprocess(src, out, size=SIZE, workers=w, embed_fn=no_embed, progress=False,
                                   val_fraction=0.0, **kw)
                counts = res.manifest["counts"]
                assert counts["skipped"] == 0 and counts["duplicates"] == 0, counts
                assert counts["train"] == expect, (counts, expect)  # the same images as the naive loop
                shutil.rmtree(out)
            return go

        if args.only in (None, "full"):
            files = build_full_tree(tmp / "full", args.copies)
            n = len(files)
            print(f"full-size: {n} JPEGs ({args.copies} x 66)", flush=True)
            naive_folder(files[:66])  # warm the page cache
            r = bench("full", n, {
                "naive": lambda: naive_folder(files),
                f"ours ({workers} workers)": ours(tmp / "full", workers, n),
                "ours (1 worker)": ours(tmp / "full", 1, n),
            }, args.repeats)
            rows.append((f"full-size ILSVRC JPEGs, 66 x {args.copies} = {n}", n, r))

        if args.only in (None, "tiny"):
            zpath = SHARED / "tiny-imagenet-200.zip"
            names = tiny_names(zpath, args.tiny_limit)
            n = len(names)
            print(f"tiny: {n} JPEGs from {zpath.name}", flush=True)
            kw = {"max_per_class": args.tiny_limit} if args.tiny_limit else {}
            # max_per_class picks a seeded sample, not the first N; the count is what matters.
            r = bench("tiny", n, {
                "naive": lambda: naive_zip(zpath, names),
                f"ours ({workers} workers)": ours(zpath, workers, n, **kw),
            }, args.tiny_repeats)
            rows.append((f"Tiny ImageNet zip, {n} JPEGs (64x64)", n, r))

    load1 = os.getloadavg()
    lines = [
        "| workload | naive images/s | ours images/s | ours / naive (median of repeats, min-max) "
        "| ours, 1 worker images/s | whole run, ours (min-max s) | CPU ms/image naive / ours |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, n, r in rows:
        naive, naive_cpu = r["naive"]
        key = next(k for k in r if k.startswith("ours (") and k != "ours (1 worker)")
        ours_k, ours_cpu = r[key]
        ratios = r["_ratios"][key]
        lo, hi = r["_spread"][key]
        one = r.get("ours (1 worker)")
        lines.append(
            f"| {title} | {naive:,.0f} | {ours_k:,.0f} | **{statistics.median(ratios):.1f}x** "
            f"({min(ratios):.1f}-{max(ratios):.1f}, {len(ratios)} repeats) | "
            f"{f'{one[0]:,.0f}' if one else '-'} | {lo:.1f}-{hi:.1f} | {naive_cpu:.2f} / {ours_cpu:.2f} |"
        )
    footer = (f"load average at end {load1[0]:.2f} (other work may share the CPUs); medians of interleaved runs. "
              "Not the same work: the naive loop squashes each image to 64x64 (aspect ratio lost); ours centre-crops "
              "then resizes, and also writes the arrays and the manifest.")
    table = "\n".join(lines)
    print()
    print(header)
    print(table)
    print(footer)
    if args.markdown:
        args.markdown.write_text(f"{header}\n\n{table}\n\n{footer}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
