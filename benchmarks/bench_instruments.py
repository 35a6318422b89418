#!/usr/bin/env python3
"""What do the yardsticks measure? Each judge's top-1 on real held-out photos, real training photos,
held-out photos made worse in known ways, and generated samples, as a share of its held-out figure;
and how close generated samples come to the training photos (near copies).

    python -m benchmarks.bench_instruments --data data/tiny200_32 \\
        --yardstick model_store/tiny200 --yardstick output_ImageNet/yardstick2 \\
        --colour output_ImageNet/colour_baseline_tiny200_32 \\
        --samples "tiny200 (CFG 6)=output_ImageNet/eval/tiny200_defaults/samples_dpm++_20.npz" \\
        --out benchmarks/results/tiny200_round2/instruments

Why: the project's yardsticks put tiny200's samples at 0.55-0.59 of real photos, an outside classifier
at 0.38. Two ways a yardstick trained on the generator's own training photos can be lenient:
- it is *robust*: mild blur, noise or washed-out colour (what generated images have) cost it little,
  where a less robust classifier loses most of its accuracy;
- it *remembers its training photos*: it recognises them far better than held-out ones, so samples
  that come close to a training photo score as if they were one.
The first shows in the degraded rows, the second in the training-photo row against the near-copy
share of the samples. Classification and distances only; no training, a few minutes on one core.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataprep.dataset import PreprocessedDataset  # noqa: E402
from evaluation.classifier import load_classifier, predict  # noqa: E402
from evaluation.colour import ColourBaseline  # noqa: E402
from evaluation.yardstick import class_balanced_subset, degrade  # noqa: E402

MILD_AND_HARSH = ("down24", "noise05", "desat", "down16", "noise")


def nearest_training_distance(images: np.ndarray, train: np.ndarray, chunk: int = 250) -> np.ndarray:
    """RMS pixel distance (0-1 scale) from each image to its nearest training photo, by brute force."""
    t = torch.from_numpy(train.reshape(len(train), -1)).float() / 255
    t_sq = (t * t).sum(1)
    out = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i:i + chunk].reshape(-1, t.shape[1])).float() / 255
        d2 = (x * x).sum(1, keepdim=True) + t_sq[None] - 2 * x @ t.T
        out.append((d2.min(1).values.clamp_min(0) / t.shape[1]).sqrt())
    return torch.cat(out).numpy()


def read_sample_sets(specs: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, images, labels) for each --samples NAME=NPZ (an npz of uint8 images and their labels)."""
    sets = []
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise ValueError(f"--samples wants NAME=NPZ, got {spec!r}")
        z = np.load(path)
        sets.append((name, np.asarray(z["images"]), np.asarray(z["labels"])))
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="preprocessed data (train and held-out splits)")
    p.add_argument("--yardstick", type=Path, action="append", default=[], help="a classifier folder (repeatable)")
    p.add_argument("--colour", type=Path, default=None, help="a colour-only baseline folder")
    p.add_argument("--samples", action="append", default=[], metavar="NAME=NPZ",
                   help="generated images and labels (an npz of images, labels), repeatable")
    p.add_argument("--train-per-class", type=int, default=10, help="training photos per class to score")
    p.add_argument("--no-neighbours", action="store_true", help="skip the nearest-training-photo distances")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write instruments.md and instruments.json here")
    args = p.parse_args(argv)
    if not args.yardstick and not args.colour:
        p.error("give at least one --yardstick or --colour")
    torch.set_num_threads(args.threads)
    train, val = PreprocessedDataset(args.data, "train"), PreprocessedDataset(args.data, "val")
    val_x, val_y = np.asarray(val.images), np.asarray(val.labels)
    train_x_all, train_y_all = np.asarray(train.images), np.asarray(train.labels)
    pick = class_balanced_subset(train_y_all, args.train_per_class)
    sets: list[tuple[str, np.ndarray, np.ndarray]] = [("real held-out photos", val_x, val_y),
                                                      ("real training photos", train_x_all[pick], train_y_all[pick])]
    sets += [(f"held-out, {d}", degrade(val_x, d), val_y) for d in MILD_AND_HARSH]
    try:
        sets += read_sample_sets(args.samples)
    except ValueError as e:
        p.error(str(e))

    judges: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []
    for folder in args.yardstick:
        clf, meta = load_classifier(folder)
        label = f"{meta.get('arch', 'resnet')} w{meta['width']}" + (" mirror" if meta.get("mirror_average") else "")
        judges.append((f"{label} ({folder})", lambda x, clf=clf: predict(clf, x)[0].argmax(1)))
    if args.colour:
        colour = ColourBaseline.load(args.colour)
        judges.append((f"colour only ({args.colour})", lambda x: colour.logits(x).argmax(1)))

    rows: list[dict[str, Any]] = []
    for set_name, x, y in sets:
        row: dict[str, Any] = {"images": set_name, "count": int(len(y))}
        for judge, fn in judges:
            row[judge] = float((fn(x) == y).mean())
        rows.append(row)
        print(set_name, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}, flush=True)
    base = rows[0]
    lines = ["| images | count | " + " | ".join(f"{j}: top-1 | / held-out" for j, _ in judges) + " |",
             "| --- | ---: |" + " ---: | ---: |" * len(judges)]
    for r in rows:
        lines.append(f"| {r['images']} | {r['count']} | " + " | ".join(
            f"{r[j]:.1%} | {r[j] / base[j]:.2f}" if base[j] else f"{r[j]:.1%} | -" for j, _ in judges) + " |")

    neighbours: list[dict[str, Any]] = []
    if not args.no_neighbours:
        # Held-out photos set the scale: how close an unseen real photo comes to some training photo.
        held = nearest_training_distance(val_x, train_x_all)
        near = float(np.quantile(held, 0.01))
        lines += ["", f"Nearest training photo (RMS pixel distance, 0-1 scale; a near copy is closer than "
                      f"{near:.4f}, the 1st percentile of held-out photos):", "",
                  "| images | median distance | near copies | top-1 of near copies (first judge) | top-1 of the rest |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for set_name, x, y in [sets[0]] + sets[len(MILD_AND_HARSH) + 2:]:
            d = held if set_name == sets[0][0] else nearest_training_distance(x, train_x_all)
            close = d < near
            hit = judges[0][1](x) == y if judges else np.zeros(len(y), bool)
            neighbours.append({"images": set_name, "median": float(np.median(d)), "near_copies": float(close.mean()),
                               "top1_near": float(hit[close].mean()) if close.any() else None,
                               "top1_rest": float(hit[~close].mean())})
            n = neighbours[-1]
            lines.append(f"| {set_name} | {n['median']:.4f} | {n['near_copies']:.1%} | "
                         + ("-" if n["top1_near"] is None else f"{n['top1_near']:.1%}") + f" | {n['top1_rest']:.1%} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "instruments.md").write_text(table + "\n")
        (args.out / "instruments.json").write_text(json.dumps({"rows": rows, "neighbours": neighbours}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
