#!/usr/bin/env python3
"""Ten classes from ten seeds: does each class change the picture, or do some classes draw one picture
per seed? The grid an outside reviewer looked at (issue 34), drawn at the model's defaults and measured.

    python -m benchmarks.bench_ten_classes --model tiny200 --classifier model_store/tiny200 \\
        --out benchmarks/results/tiny200_round2/ten_classes/tiny200

Rows are classes, columns seeds (the j-th image of every class from seed j). For every pair of classes:
* the conditioning check's rule (``evaluation.conditioning``), pair by pair: are the two classes' images
  from one seed farther apart, in the yardstick's features, than two seeds of one class? (feature ratio > 1)
* the same in pixels: the median over seeds of the RMS distance between the two classes' images,
  over the mean RMS distance between two seeds of either class. Below ``SAME_PICTURE`` the two
  classes draw one picture per seed: the seed decides the image, not the class.
Printed: the pairs' share apart, every pair that is not apart or draws one picture, and the grid's path.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.benchlog import tee_stdout  # noqa: E402
from drawing import sample_grid  # noqa: E402
from engine import store  # noqa: E402
from evaluation.classifier import classify, load_classifier  # noqa: E402
from evaluation.generation import generate_per_class  # noqa: E402

TEN = ("goldfish", "black stork", "walking stick", "academic gown", "bucket", "dumbbell", "miniskirt",
       "refrigerator", "teapot", "ice lolly")
# Two classes from one seed closer in pixels than a third of two seeds of one class: one picture,
# recoloured or retouched at most (real photos of two classes sit near 1.0 by construction).
SAME_PICTURE = 1 / 3


def pixel_ratios(images: np.ndarray, classes: int, seeds: int) -> np.ndarray:
    """(classes, classes): median over seeds of the RMS distance between two classes' images from one seed,
    over the mean RMS distance between two seeds of either class."""
    x = images.reshape(classes, seeds, -1).astype(np.float64) / 255
    rms = lambda a, b: np.sqrt(((a - b) ** 2).mean(-1))  # noqa: E731
    within = np.array([np.mean([rms(x[c, i], x[c, j]) for i in range(seeds) for j in range(i + 1, seeds)])
                       for c in range(classes)])
    out = np.ones((classes, classes))
    for a in range(classes):
        for b in range(a + 1, classes):
            out[a, b] = out[b, a] = np.median(rms(x[a], x[b])) / ((within[a] + within[b]) / 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200")
    p.add_argument("--store", default=None)
    p.add_argument("--classifier", type=Path, required=True, help="the yardstick whose features judge 'apart'")
    p.add_argument("--classes", default=",".join(TEN), help="comma-separated class names")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: the model's; give it for a checkpoint folder, which has none)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.png (the grid), OUT.txt and OUT.json")
    args = p.parse_args(argv)
    def out_file(suffix: str) -> Path:  # OUT.png, OUT.txt, OUT.json: a step's decimal in OUT stays (no with_suffix)
        return Path(f"{args.out}{suffix}")

    tee_stdout(out_file(".txt"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lm = store.load_model(args.model, store=args.store)
    names = [n.strip() for n in args.classes.split(",")]
    missing = [n for n in names if n not in lm.class_names]
    if missing:
        raise SystemExit(f"{args.model} has no class {', '.join(missing)}")
    d = lm.sampler_defaults
    sampler, steps = d.get("sampler", "dpm++"), d.get("steps", 20)
    guidance = args.guidance if args.guidance is not None else d.get("guidance_scale", 3.0)
    prompts = [lm.classes[lm.class_names.index(n)]["prompt"] for n in names]
    images, _, secs = generate_per_class(lm, sampler, steps, args.seeds, guidance, 0, 100, torch.device("cpu"),
                                         prompts=prompts, guidance_interval=lm.guidance_interval)
    clf, meta = load_classifier(args.classifier)
    pred, feat = classify(clf, images)
    own = np.array([meta["classes"].index(n) for n in names])
    ratios = pixel_ratios(images, len(names), args.seeds)
    sample_grid(images, nrow=args.seeds, path=out_file(".png"))
    print(f"{args.model} ({lm.config.get('step')} steps), {sampler} {steps}, guidance {guidance}: {len(names)} classes "
          f"x {args.seeds} seeds in {secs:.0f} s; {platform.processor() or platform.machine()}")
    feats = feat.astype(np.float64).reshape(len(names), args.seeds, -1)
    within = [np.mean([np.linalg.norm(feats[c, i] - feats[c, j]) for i in range(args.seeds)
                       for j in range(i + 1, args.seeds)]) for c in range(len(names))]
    rows, apart_count = [], 0
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            between = np.mean(np.linalg.norm(feats[a] - feats[b], axis=-1))
            feature_ratio = between / ((within[a] + within[b]) / 2)
            apart_count += feature_ratio > 1
            rows.append({"pair": f"{names[a]} / {names[b]}", "feature_ratio": float(feature_ratio),
                         "pixel_ratio": float(ratios[a, b])})
    pairs = len(rows)
    same = [r for r in rows if r["pixel_ratio"] < SAME_PICTURE]
    print(f"class pairs apart (yardstick features): {apart_count} of {pairs} ({apart_count / pairs:.0%}); "
          f"over all 200 classes the evaluation's check gives the share of 19,900 pairs")
    print(f"pairs drawing one picture per seed (pixel ratio < {SAME_PICTURE:.2f}): {len(same)}"
          + (": " + ", ".join(r["pair"] for r in same) if same else ""))
    print(f"classes recognised (top-1 over the yardstick's {len(meta['classes'])}): " + ", ".join(
        f"{n} {np.mean(pred[i * args.seeds:(i + 1) * args.seeds] == own[i]):.0%}" for i, n in enumerate(names)))
    print("\n| closest pairs | feature ratio (apart > 1) | pixel ratio (one picture < 0.33) |\n| --- | ---: | ---: |")
    for r in sorted(rows, key=lambda r: r["pixel_ratio"])[:8]:
        print(f"| {r['pair']} | {r['feature_ratio']:.2f} | {r['pixel_ratio']:.2f} |")
    print(f"\ngrid (rows: {', '.join(names)}; columns: seeds 0-{args.seeds - 1}): {out_file('.png')}")
    out_file(".json").write_text(json.dumps({"pairs": rows, "apart": int(apart_count),
                                             "same_picture": [r["pair"] for r in same]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
