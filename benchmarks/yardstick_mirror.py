#!/usr/bin/env python3
"""Score a trained yardstick on held-out photos with one view and with mirror averaging (each image
and its mirror image, features pooled), and with ``--write`` switch its classifier.json to mirror
averaging, keeping the one-view figures beside the new ones. No training: seconds.

    python -m benchmarks.yardstick_mirror output_ImageNet/yardstick2 --data data/tiny200_32 --write
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataprep.dataset import PreprocessedDataset  # noqa: E402
from evaluation.classifier import CLASSIFIER_CONFIG, load_classifier, predict, top_k_accuracy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("classifier", type=Path, help="a yardstick folder (classifier.json + classifier.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="its preprocessed data (the held-out split is scored)")
    p.add_argument("--write", action="store_true", help="turn mirror averaging on in its classifier.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = PreprocessedDataset(args.data, split="val")
    x, y = np.asarray(val.images), np.asarray(val.labels)
    clf, cfg = load_classifier(args.classifier)
    scores = {}
    for mirror in (False, True):
        clf.mirror_average = mirror
        logits, _ = predict(clf, x)
        scores[mirror] = (float((logits.argmax(1) == y).mean()), top_k_accuracy(logits, y, 5))
        print(f"{args.classifier} mirror_average={mirror}: top-1 {scores[mirror][0]:.2%}, "
              f"top-5 {scores[mirror][1]:.2%} on {len(y)} held-out photos")
    if args.write:
        cfg.update({"mirror_average": True, "val_accuracy_one_view": scores[False][0],
                    "val_top5_one_view": scores[False][1], "val_accuracy": scores[True][0], "val_top5": scores[True][1]})
        (args.classifier / CLASSIFIER_CONFIG).write_text(json.dumps(cfg, indent=2))
        print(f"wrote {args.classifier / CLASSIFIER_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
