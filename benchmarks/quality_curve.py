#!/usr/bin/env python3
"""tiny200's quality against the CPU-hours it has trained: one point per scored checkpoint.

    python -m benchmarks.quality_curve --point "shipped 12-02:5.06:benchmarks/results/tiny200_lineage/shipped_2026-12-02" \
        --point ... --out benchmarks/results/tiny200_lineage/curve.png

Each point is [SERIES=]LABEL:HOURS:FOLDER, FOLDER holding the ``evaluation.json`` that ``evaluate.py``
wrote (at the model's defaults, 1,000 images); points of one SERIES (one training lineage) are joined by a
line, so two lineages can be drawn side by side. Printed: a table of top-1 / real, top-5 / real, FD /
floor and the conditioning check per point, and the targets; drawn: the first three against hours, the
targets dashed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# issue 34's targets (the first yardstick's figures; issue 23's were 0.5, 0.7, 5x and 95%)
TARGETS = {"top-1 / real": 0.6, "top-5 / real": 0.85, "FD / floor": 3.0, "class pairs apart": 0.97}


def read_point(spec: str) -> dict:
    label, hours, folder = spec.split(":", 2)
    series, _, label = label.rpartition("=")
    ev = json.loads((Path(folder) / "evaluation.json").read_text())
    row = ev["rows"][0]
    return {"series": series, "label": label, "hours": float(hours), "images": row["images"],
            "top-1 / real": row["accuracy"] / ev["real_val_accuracy"], "top-1": row["accuracy"],
            "top-1 se": row["accuracy_se"], "top-5 / real": row["top5"] / ev["real_val_top5"],
            "FD / floor": row["fd"] / ev["real_vs_real_fd"],
            "class pairs apart": (row.get("conditioning") or {}).get("pairs_apart")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--point", action="append", required=True, help="LABEL:HOURS:FOLDER (repeat)")
    p.add_argument("--out", default=None, help="the plot (PNG)")
    args = p.parse_args(argv)
    points = sorted((read_point(s) for s in args.point), key=lambda r: r["hours"])
    print("| checkpoint | CPU-hours | top-1 | top-1 / real | top-5 / real | FD / floor | class pairs apart |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in points:
        apart = f"{r['class pairs apart']:.1%}" if r["class pairs apart"] is not None else "-"
        print(f"| {r['series'] + ': ' if r['series'] else ''}{r['label']} | {r['hours']:.2f} | {r['top-1']:.1%} ± {r['top-1 se']:.1%} | {r['top-1 / real']:.2f} | "
              f"{r['top-5 / real']:.2f} | {r['FD / floor']:.1f}x | {apart} |")
    print(f"| target | | | {TARGETS['top-1 / real']:.2f} | {TARGETS['top-5 / real']:.2f} | {TARGETS['FD / floor']:.1f}x | "
          f"{TARGETS['class pairs apart']:.0%} |")
    if args.out:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, key in zip(axes, ("top-1 / real", "top-5 / real", "FD / floor")):
            for series in dict.fromkeys(r["series"] for r in points):
                mine = [r for r in points if r["series"] == series]
                ax.plot([r["hours"] for r in mine], [r[key] for r in mine], "o-", label=series or None)
            for r in points:
                ax.annotate(r["label"], (r["hours"], r[key]), fontsize=7, textcoords="offset points", xytext=(3, 4))
            ax.axhline(TARGETS[key], ls="--", color="grey")
            ax.set_xlabel("hours of training (2-core EPYC)")
            ax.set_title(key + (" (lower is better)" if key.startswith("FD") else ""))
        if any(r["series"] for r in points):
            axes[0].legend(fontsize=7)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
