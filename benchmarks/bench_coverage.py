#!/usr/bin/env python3
"""Calibrate the app's prompt-coverage warning ("the model has not seen anything like this prompt").

Two prompt sets: paraphrases of the model's classes worded unlike its training texts
(``assets/paraphrases_unlike.tsv``; the warning should stay quiet) and prompts about
things outside the classes (``assets/prompts_outside_classes.txt``; it should fire).
For each way of measuring how near a prompt is to the classes, the script prints how
often each set warns at a range of cosine thresholds, and the threshold that best
separates them:
* ``class prompt``: the similarity to each class's prompt ("a photo of a tabby"), the
  warning as it stood;
* ``training texts``: the best similarity to any of the texts each class was trained
  under (its names in the templates, its synonyms, its descriptions), from the
  preprocessed data's ``classes.json`` and ``template_embeddings.npy``;
* ``training texts - distractors``: that similarity minus the best similarity to the
  ImageNet-1k classes the model does not have ("a photo of a {name}", from
  ``assets/LOC_synset_mapping.txt``): an open-set test, warning when the prompt is
  nearer something the model never saw (thresholds are then margins);
* ``the app until 2026-12-03 (ImageNet-1k only)``: the same margin with
  each class judged by its prompt, its other names and its descriptions (the
  distinct texts; no template variants), against ImageNet-1k's other classes;
* ``the app``: ``prompting.CoverageIndex``, what the app runs: the same with
  WordNet's common concrete nouns added to the distractors
  (``assets/coverage_distractors.tsv``, from ``dataprep/wordnet_nouns.py``), less
  the model's classes and everything above or below one;
* ``every WordNet concrete noun`` (with ``--wordnet DIR``, WordNet 3.0's database
  folder, e.g. Debian's ``wordnet-base`` in ``/usr/share/wordnet``): the same with
  all of them, rare ones too (about 20,000: slow to encode), to see whether a
  bigger vocabulary would do better.

    python -m benchmarks.bench_coverage --data data/tiny200_32 --log benchmarks/results/coverage.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import evaluation as E  # noqa: E402
from benchmarks.benchlog import tee_stdout  # noqa: E402
from core.prompting import (  # noqa: E402
    COVERAGE_MARGIN,
    CoverageIndex,
    Distractor,
    distractors_for,
    coverage_similarity,
    distractor_prompts,
    read_synsets,
)
from dataprep.dataset import PreprocessedDataset  # noqa: E402
from dataprep.wordnet_nouns import WordNet, distractor_rows  # noqa: E402
from models.text_encoder import encode_prompts  # noqa: E402


def warn_rates(near: np.ndarray, far: np.ndarray, thresholds: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, share of near prompts that warn, share of far prompts that warn) for each threshold."""
    return [(float(t), float((near < t).mean()), float((far < t).mean())) for t in thresholds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data/tiny200_32", help="preprocessed data of the model's classes")
    p.add_argument("--paraphrases", type=Path, default=ROOT / "assets/paraphrases_unlike.tsv")
    p.add_argument("--outside", type=Path, default=ROOT / "assets/prompts_outside_classes.txt")
    p.add_argument("--wordnet", type=Path, default=None,
                   help="WordNet 3.0's database folder: add the test with every concrete noun as a distractor")
    p.add_argument("--log", type=Path, default=None, help="also write the output here")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    data = PreprocessedDataset(args.data, split="val")
    names = [c["name"] for c in data.classes]
    pairs = E.read_free_text(args.paraphrases, names, skip_unknown=True)
    outside = [line.strip() for line in args.outside.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    near_emb = encode_prompts([q for q, _ in pairs])
    far_emb = encode_prompts(outside)
    class_emb = np.asarray(data.class_embeddings, np.float32)  # "a photo of a {name}"
    texts_emb = np.asarray(data.template_embeddings, np.float32)  # (classes, texts, 384), padded by cycling
    print(f"{len(pairs)} paraphrases of {len({c for _, c in pairs})} classes, {len(outside)} prompts outside "
          f"the {len(names)} classes of {args.data}")
    distractors = distractor_prompts(data.classes, "a photo of a {}", read_synsets())  # as the app's CoverageIndex
    dis_emb = encode_prompts(distractors)[:, None, :]
    print(f"{len(distractors)} distractors: the ImageNet-1k classes the model does not have")
    thresholds = np.round(np.arange(0.30, 0.71, 0.05), 2)
    index = CoverageIndex.build(data.classes, "a photo of a {}", encode_prompts)
    print(f"the app's index: {len(index.distractor_names)} distractors (ImageNet-1k's and WordNet's, less the "
          "model's classes and their kin)")
    before = CoverageIndex(index.class_names, index.class_texts, dis_emb[:, 0, :], distractors)
    indexes = {"the app until 2026-12-03 (ImageNet-1k only)": before, "the app": index}
    if args.wordnet:
        rows = distractor_rows(WordNet.read(args.wordnet), read_synsets(), tagged_only=False)
        wide = [Distractor(w, n, frozenset(a)) for w, n, a in rows]
        keep = distractors_for(data.classes, wide)
        texts = [f"a photo of a {wide[i].name}" for i in keep]
        print(f"every WordNet concrete noun: {len(texts)} distractors")
        indexes["every WordNet concrete noun"] = CoverageIndex(index.class_names, index.class_texts,
                                                               encode_prompts(texts), texts)
    methods = [("class prompt", class_emb[:, None, :]), ("training texts", texts_emb),
               ("training texts - distractors", texts_emb), *((name, None) for name in indexes)]
    for method, embs in methods:
        if method in indexes:
            near = np.array([indexes[method].judge(e)[1] for e in near_emb])
            far = np.array([indexes[method].judge(e)[1] for e in far_emb])
        else:
            near = coverage_similarity(near_emb, embs)
            far = coverage_similarity(far_emb, embs)
        if method.endswith("distractors"):
            near = near - coverage_similarity(near_emb, dis_emb)
            far = far - coverage_similarity(far_emb, dis_emb)
        if method == "the app":
            app_near, app_far = near, far
        if method.endswith("distractors") or method in indexes:
            thresholds = np.round(np.arange(-0.14, 0.05, 0.02), 2)
        print(f"\n{method}: best similarity to the classes, median {np.median(near):.2f} for paraphrases, "
              f"{np.median(far):.2f} for prompts outside")
        print("| threshold | paraphrases that warn | outside prompts that warn |\n| ---: | ---: | ---: |")
        for t, n, f in warn_rates(near, far, thresholds):
            print(f"| {t:+.2f} | {n:.1%} | {f:.1%} |")
        grid = np.round(np.arange(thresholds[0] - 0.1, thresholds[-1] + 0.1, 0.01), 2)
        best = max(warn_rates(near, far, grid), key=lambda r: (r[2] - r[1], -abs(r[0])))
        quiet = max((r for r in warn_rates(near, far, grid) if r[1] < 0.10), key=lambda r: r[2], default=None)
        print(f"best separation at {best[0]:.2f}: paraphrases warn {best[1]:.1%}, outside prompts {best[2]:.1%}")
        if quiet:
            print(f"most outside prompts caught with under 10% of paraphrases warning: {quiet[2]:.1%} at "
                  f"{quiet[0]:.2f} ({quiet[1]:.1%} of paraphrases)")
    print(f"\nthe app warns below a margin of {COVERAGE_MARGIN:+.2f}: paraphrases "
          f"{np.mean(app_near < COVERAGE_MARGIN):.1%}, outside prompts {np.mean(app_far < COVERAGE_MARGIN):.1%}")
    tabby = encode_prompts(["a tabby cat sleeping on a sofa"])
    for method, embs in (("class prompt", class_emb[:, None, :]), ("training texts", texts_emb)):
        sims = coverage_similarity(tabby, embs, per_class=True)[0]
        top = np.argsort(-sims)[:3]
        print(f"'a tabby cat sleeping on a sofa' by {method}: "
              + ", ".join(f"{names[i]} {sims[i]:.2f}" for i in top))
    matches, margin, nearer = index.judge(tabby[0])
    print(f"... by the app: {', '.join(f'{n} {v:.2f}' for n, v in matches)}; margin {margin:+.2f} over "
          f"{nearer!r}: {'warns' if margin < COVERAGE_MARGIN else 'no warning'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
