#!/usr/bin/env python3
"""Where a Frechet distance comes from. For each yardstick and each set of generated images: FD to the
real held-out photos split into its mean term |mu_s - mu_r|^2 and its covariance term, the spread of
the samples' features (the trace of their covariance) as a share of the real photos', and the spread
within a class (mean distance to the class's own centroid) as a share of the real photos'.

    python -m benchmarks.bench_fd_parts --data data/tiny200_32 \\
        --yardstick model_store/tiny200 --yardstick assets/yardstick2_tiny200 \\
        --samples "tiny200 (CFG 6)=output_ImageNet/eval/tiny200_defaults/samples_dpm++_20.npz" \\
        --samples "tiny200 (CFG 5)=output_ImageNet/eval/tiny200-g5-both/samples_dpm++_20.npz" \\
        --out benchmarks/results/tiny200_round2/fd_parts

Why: two models can have the same FD for different reasons. A guidance scale mostly moves the mean
term (how far the average sample sits from the average photo); a covariance term that stays put
across scales is the shape of the feature cloud, which only the network can change. The FD printed
here is the one evaluate.py reports (same features, same held-out photos). A minute on two cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_instruments import read_sample_sets  # noqa: E402
from dataprep.dataset import PreprocessedDataset  # noqa: E402
from evaluation.classifier import load_classifier, predict  # noqa: E402
from evaluation.frechet import frechet_parts  # noqa: E402


def within_class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of a feature vector to its own class's centroid, averaged over classes."""
    per_class = (features[labels == c] for c in np.unique(labels))
    return float(np.mean([np.linalg.norm(f - f.mean(0), axis=1).mean() for f in per_class]))


def fd_parts_rows(real: np.ndarray, real_labels: np.ndarray,
                  samples: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per set of sample features (name -> (features, labels)) against the real photos' features."""
    spread, within = np.trace(np.cov(real, rowvar=False)), within_class_spread(real, real_labels)
    rows = []
    for name, (f, y) in samples.items():
        mean_term, cov_term = frechet_parts(f, real)
        rows.append({"images": name, "fd": mean_term + cov_term, "mean_term": mean_term, "cov_term": cov_term,
                     "spread": float(np.trace(np.cov(f, rowvar=False)) / spread),
                     "within_class": within_class_spread(f, y) / within})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="preprocessed data (its held-out split is the reference)")
    p.add_argument("--yardstick", type=Path, action="append", required=True, help="a classifier folder (repeatable)")
    p.add_argument("--samples", action="append", required=True, metavar="NAME=NPZ",
                   help="generated images and labels (an npz of images, labels), repeatable")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write fd_parts.md and fd_parts.json here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = PreprocessedDataset(args.data, "val")
    val_x, val_y = np.asarray(val.images), np.asarray(val.labels)
    try:
        sets = read_sample_sets(args.samples)
    except ValueError as e:
        p.error(str(e))

    lines: list[str] = []
    result: dict[str, Any] = {}
    for folder in args.yardstick:
        clf, _ = load_classifier(folder)
        real = predict(clf, val_x)[1]
        rows = fd_parts_rows(real, val_y, {n: (predict(clf, x)[1], y) for n, x, y in sets})
        result[str(folder)] = rows
        lines += ["", f"{folder}: against {len(val_x)} real held-out photos", "",
                  "| images | FD | mean term | covariance term | spread / real's | within-class spread / real's |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['images']} | {r['fd']:.2f} | {r['mean_term']:.2f} | {r['cov_term']:.2f} | "
                  f"{r['spread']:.2f} | {r['within_class']:.2f} |" for r in rows]
    table = "\n".join(lines[1:])
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fd_parts.md").write_text(table + "\n")
        (args.out / "fd_parts.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
