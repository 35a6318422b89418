#!/usr/bin/env python3
"""The SR stage against bicubic upsampling, on real held-out images shrunk to half size.

    python -m benchmarks.bench_sr --sr sr64 --data data/tiny200_64 --classifier output_ImageNet/tiny200_64_yardstick

For N held-out images of the data's ``val`` split (64 px), the low-resolution input is
the image halved exactly as preprocess.py makes 32 px data (box filter, uint8:
``diffusion.downsample_box``). Both upscalers get it and are scored against the true
64 px images:
* PSNR (dB, mean over images, 8-bit, with its standard error): higher is closer to the truth;
* FD: Frechet distance to the true images in the penultimate features of evaluate.py's
  yardstick classifier trained at 64 px (``evaluate.py --classifier-only --data
  data/tiny200_64 --classifier FOLDER``), with its bootstrap sd; lower is better;
  the classifier's accuracy on each set too (the true labels);
* seconds per image of the SR stage alone (the bicubic baseline costs ~nothing), on this
  machine, at the batch size given.

``--aug-levels`` sweeps the sampling-time conditioning-augmentation level (one row each).

With ``--base MODEL`` the same comparison runs on that 32 px model's own samples
(``--per-class`` images of each of its classes): FD against the true 64 px held-out images
of its classes and the classifier's accuracy on the requested class (no PSNR: there is no
true 64 px version of a sample), plus a figure (32 px, bicubic, SR).

Writes a Markdown table, JSON and figures to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
import core as D  # noqa: E402
from dataprep.dataset import PreprocessedDataset  # noqa: E402
from engine.store import load_model, load_sr_model  # noqa: E402
from engine.upscaling import nearest_resize  # noqa: E402
from evaluation import fd_bootstrap_sd, frechet_distance, load_classifier, predict  # noqa: E402
import drawing  # noqa: E402

log = logging.getLogger("bench_sr")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 (N, H, W, C) images (inf where identical)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def low_res_of(truth: np.ndarray) -> np.ndarray:
    """uint8 high-resolution images -> the uint8 half-size images the SR stage is given."""
    return D.to_uint8(D.downsample_box(D.images_to_tensor(truth)))


def bicubic_of(low: np.ndarray, size: int) -> np.ndarray:
    return D.to_uint8(D.upsample_bicubic(D.images_to_tensor(low), size))


def upscale_all(sr: Any, low: np.ndarray, *, steps: int, aug_level: float, seed: int, batch: int,
                precision: str) -> tuple[np.ndarray, float]:
    """The SR stage over all images in batches; (images, seconds per image)."""
    from tqdm import tqdm

    out = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(low), batch), desc=f"SR aug {aug_level:g}", dynamic_ncols=True):
        res = D.upscale(sr.model, sr.diffusion, low[i:i + batch], steps=steps, aug_level=aug_level, seed=seed + i,
                        precision=precision)
        out.append(res.images)
    return np.concatenate(out), (time.perf_counter() - start) / len(low)


def score(name: str, images: np.ndarray, truth: np.ndarray | None, labels: np.ndarray, clf: Any,
          truth_feat: np.ndarray, seconds: float | None, *, clf_matches_data: bool, bootstrap: int) -> dict[str, Any]:
    """One table row: PSNR against ``truth`` (paired images; None: no PSNR), FD to ``truth_feat``, accuracy."""
    logits, feat = predict(clf, images)
    row: dict[str, Any] = {"setting": name, "images": int(len(images)), "psnr": None, "psnr_se": None}
    if truth is not None:
        p = psnr(images, truth)
        row.update(psnr=float(np.mean(p[np.isfinite(p)])),
                   psnr_se=float(np.std(p[np.isfinite(p)]) / np.sqrt(max(1, np.isfinite(p).sum()))))
    row.update({
           "fd": frechet_distance(feat, truth_feat),
           "fd_sd": fd_bootstrap_sd(feat, truth_feat, rounds=bootstrap) if bootstrap else 0.0,
           "seconds_per_image": seconds})
    if clf_matches_data:
        row["accuracy"] = float((logits.argmax(1) == labels).mean())
    return row


def format_table(result: dict[str, Any]) -> str:
    lines = [f"SR benchmark: {result['sr']} on {result['images']} held-out images of {result['data']} "
             f"({result['low_res_size']} px -> {result['size']} px), {result['steps']} DPM-Solver++ steps, "
             f"{result['threads']} torch threads, batch {result['batch']}", "",
             "| setting | PSNR (dB) | FD (yardstick) | accuracy | s/image (SR stage) |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        acc = f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "n/a"
        sec = f"{r['seconds_per_image']:.3f}" if r["seconds_per_image"] is not None else "-"
        psnr_ok = r["psnr"] is not None and np.isfinite(r["psnr"])  # the truth against itself: infinite, no row
        psnr_text = f"{r['psnr']:.2f} ± {r['psnr_se']:.2f}" if psnr_ok else "-"
        fd_text = "0 (itself)" if r["setting"].startswith("true") else f"{r['fd']:.3g} ± {r['fd_sd']:.2g}"
        lines.append(f"| {r['setting']} | {psnr_text} | {fd_text} | {acc} | {sec} |")
    lines += ["", f"Noise floor: FD between two disjoint halves of the true images: {result['fd_floor']:.3g}."]
    if result.get("base"):
        b = result["base"]
        lines += ["", f"Rows 'samples': {b['images']} samples of {b['model']} ({b['classes']} classes, "
                      f"{b['sampler']} {b['steps']} steps, guidance {b['guidance']}), FD against the "
                      f"{b['reference_images']} true {result['size']} px held-out images of those classes."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The table's rows (and the figure's example images) for ``main``'s arguments."""
    torch.set_num_threads(args.threads)
    sr = load_sr_model(args.sr, store=args.store)
    val = PreprocessedDataset(args.data, split="val")
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(val), size=min(args.n, len(val)), replace=False))
    truth = np.asarray(val.images[idx])
    labels = np.asarray(val.labels)[idx]
    size = truth.shape[1]
    clf, meta = load_classifier(Path(args.classifier))
    clf_matches_data = meta.get("num_classes") == val.num_classes
    if meta.get("image_size") not in (None, size):
        log.warning("the classifier was trained at %s px, the images are %d px", meta.get("image_size"), size)
    _, truth_feat = predict(clf, truth)
    half = len(truth) // 2
    fd_floor = frechet_distance(truth_feat[:half], truth_feat[half:]) if half >= 2 else float("nan")

    low = low_res_of(truth)
    rows = [score("bicubic", bicubic_of(low, size), truth, labels, clf, truth_feat, None,
                  clf_matches_data=clf_matches_data, bootstrap=args.bootstrap)]
    examples = {"low res": low[: args.figure], "bicubic": bicubic_of(low[: args.figure], size)}
    for level in args.aug_levels:
        images, sec = upscale_all(sr, low, steps=args.steps, aug_level=level, seed=args.seed, batch=args.batch,
                                  precision=args.precision)
        rows.append(score(f"{sr.name} aug {level:g}", images, truth, labels, clf, truth_feat, sec,
                          clf_matches_data=clf_matches_data, bootstrap=args.bootstrap))
        examples[f"{sr.name} aug {level:g}"] = images[: args.figure]
    examples["truth"] = truth[: args.figure]
    if clf_matches_data:
        rows.insert(0, score("true 64 px (reference)", truth, truth, labels, clf, truth_feat, None,
                             clf_matches_data=True, bootstrap=0))
    base = None
    if args.base:
        base, sample_rows, sample_examples = base_sample_rows(args, sr, val, clf, clf_matches_data)
        rows += sample_rows
        examples["samples"] = sample_examples
    result = {"sr": sr.name, "sr_step": sr.config.get("step"), "data": str(args.data), "images": int(len(truth)),
              "size": int(size), "low_res_size": int(size // 2), "steps": args.steps, "batch": args.batch,
              "threads": args.threads, "precision": args.precision, "seed": args.seed, "fd_floor": fd_floor,
              "classifier": str(args.classifier), "rows": rows, "base": base}
    return result, examples


def base_sample_rows(args: argparse.Namespace, sr: Any, val: Any, clf: Any,
                     clf_matches_data: bool) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The base model's samples upscaled by bicubic and by the SR model, scored against the true
    high-resolution held-out images of the base model's classes."""
    lm = load_model(args.base, store=args.store)
    by_wnid = {c.get("wnid"): i for i, c in enumerate(val.classes)}
    classes = [(c, by_wnid[c.get("wnid")]) for c in lm.classes if c.get("wnid") in by_wnid]
    if not classes:
        raise ValueError(f"none of {lm.name}'s classes are in {args.data}")
    keep = np.isin(np.asarray(val.labels), [i for _, i in classes])
    reference = np.asarray(val.images[np.flatnonzero(keep)])
    _, ref_feat = predict(clf, reference)
    prompts = [c["prompt"] for c, _ in classes for _ in range(args.per_class)]
    labels = np.repeat([i for _, i in classes], args.per_class)
    low = []
    for i in range(0, len(prompts), args.batch):
        res = D.generate_images(lm.model, lm.diffusion, prompts[i:i + args.batch], num_images=len(prompts[i:i + args.batch]),
                                num_steps=args.base_steps, guidance_scale=args.guidance, seed=args.seed + i,
                                precision=args.precision)
        low.append(res.images)
    low = np.concatenate(low)
    size = reference.shape[1]
    if low.shape[1] * 2 != size:
        raise ValueError(f"{lm.name} samples {low.shape[1]} px images; the SR data is {size} px (needs 2x)")
    rows = [score(f"samples: {lm.name} + bicubic", bicubic_of(low, size), None, labels, clf, ref_feat, None,
                  clf_matches_data=clf_matches_data, bootstrap=args.bootstrap)]
    figure = [low[: args.figure], bicubic_of(low[: args.figure], size)]
    for level in args.aug_levels:
        images, sec = upscale_all(sr, low, steps=args.steps, aug_level=level, seed=args.seed, batch=args.batch,
                                  precision=args.precision)
        rows.append(score(f"samples: {lm.name} + {sr.name} aug {level:g}", images, None, labels, clf, ref_feat, sec,
                          clf_matches_data=clf_matches_data, bootstrap=args.bootstrap))
        figure.append(images[: args.figure])
    info = {"model": lm.name, "classes": len(classes), "images": int(len(low)), "sampler": "dpm++",
            "steps": args.base_steps, "guidance": args.guidance, "reference_images": int(len(reference))}
    return info, rows, figure


def write_figure(rows: list[np.ndarray], path: Path) -> None:
    """One row per setting (low res shown by pixel repetition), one column per image."""
    size = max(v.shape[1] for v in rows)
    rows = [nearest_resize(v, size) if v.shape[1] != size else v for v in rows]
    drawing.sample_grid(np.concatenate(rows), nrow=len(rows[0]), path=path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sr", default="sr64", help="SR model: store name or folder (default sr64)")
    p.add_argument("--store", default=None, help="model store directory")
    p.add_argument("--data", default="data/tiny200_64", help="preprocessed folder at the high resolution (its val split)")
    p.add_argument("--classifier", required=True, help="yardstick classifier folder trained at the high resolution")
    p.add_argument("--n", type=int, default=1000, help="held-out images (default 1000)")
    p.add_argument("--steps", type=int, default=D.SR_DEFAULT_STEPS, help="DPM-Solver++ steps (default 10)")
    p.add_argument("--aug-levels", type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                   default=[D.SR_DEFAULT_AUG_LEVEL], help="comma-separated sampling aug levels (default 0.05)")
    p.add_argument("--batch", type=int, default=25, help="images per SR batch (default 25)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--precision", choices=D.PRECISIONS, default="fp32", help="SR sampling precision (default fp32)")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap rounds for the FD's sd (0: none)")
    p.add_argument("--figure", type=int, default=8, help="images in the side-by-side figure (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default=None, help="also score this 32 px model's samples, upscaled (e.g. default_model)")
    p.add_argument("--per-class", type=int, default=10, help="with --base: samples per class (default 10)")
    p.add_argument("--base-steps", type=int, default=20, help="with --base: its DPM-Solver++ steps (default 20)")
    p.add_argument("--guidance", type=float, default=3.0, help="with --base: its guidance scale (default 3)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/sr/<model>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result, examples = run(args)
    table = format_table(result)
    print(table)
    out = Path(args.out or ROOT / "benchmarks" / "results" / "sr" / result["sr"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sr.md").write_text(table + "\n")
    (out / "bench_sr.json").write_text(json.dumps(result, indent=2))
    if args.figure:
        samples = examples.pop("samples", None)
        write_figure(list(examples.values()), out / "bench_sr_examples.png")
        if samples:
            write_figure(samples, out / "bench_sr_samples.png")
    print(f"\nwrote {out}/bench_sr.md, bench_sr.json" + (", bench_sr_examples.png" if args.figure else "")
          + (", bench_sr_samples.png" if args.figure and args.base else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
