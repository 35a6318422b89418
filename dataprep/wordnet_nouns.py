#!/usr/bin/env python3
"""Build ``assets/coverage_distractors.tsv`` (and its embeddings): the things a model may not have,
for the app's prompt-coverage warning (``core.prompting.CoverageIndex``).

A prompt is judged covered when it is nearer to one of the model's classes than to every
distractor. The distractors are ImageNet-1k's 1000 classes (``assets/LOC_synset_mapping.txt``)
and WordNet 3.0's common concrete nouns: animals, artifacts, foods, natural objects and plants
(lexicographer files noun.animal, noun.artifact, noun.food, noun.object, noun.plant), each
lemma's most frequent sense, only the senses tagged in SemCor (about 2,000: "giraffe",
"scissors", "motorcycle"; the rare ones add noise faster than they add cover,
``benchmarks/bench_coverage.py --wordnet-all``). Each row keeps its WordNet ancestors, so a
model's own classes and everything above or below one ("cat" above "tabby") are left out of
its distractors when the app builds its index.

    python -m dataprep.wordnet_nouns --wordnet /usr/share/wordnet     # Debian: apt install wordnet-base

WordNet 3.0 is (c) Princeton University, under a licence that allows redistribution; the
ImageNet wnids are WordNet 3.0 noun offsets ("n" + 8 digits).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDNET_NOTICE = ("Names and ancestors from WordNet 3.0, Copyright 2006 by Princeton University, "
                  "used under its licence (https://wordnet.princeton.edu/license-and-commercial-use).")
CONCRETE_LEXFILES = {"05": "noun.animal", "06": "noun.artifact", "13": "noun.food", "17": "noun.object",
                     "20": "noun.plant"}


@dataclass
class WordNet:
    """WordNet's noun synsets: wnid -> (lexicographer file, lemmas, hypernym wnids); and each lemma's
    most frequent sense, tagged in SemCor or not."""
    synsets: dict[str, tuple[str, list[str], list[str]]]
    first_senses: dict[str, bool]  # wnid -> tagged in SemCor

    @classmethod
    def read(cls, folder: Path) -> "WordNet":
        synsets = {}
        for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            f = line.split("|")[0].split()
            n_words = int(f[3], 16)
            at = 4 + 2 * n_words
            pointers = [f[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(int(f[at]))]
            synsets["n" + f[0]] = (f[1], [f[4 + 2 * i] for i in range(n_words)],
                                   ["n" + o for sym, o, pos, _ in pointers if sym in ("@", "@i") and pos == "n"])
        first: dict[str, bool] = {}
        for line in (folder / "index.noun").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            f = line.split()
            n_ptrs = int(f[3])
            wnid = "n" + f[6 + n_ptrs]  # senses are listed most frequent first
            first[wnid] = first.get(wnid, False) or int(f[5 + n_ptrs]) > 0
        return cls(synsets, first)

    def ancestors(self, wnid: str) -> list[str]:
        seen, todo = [], [wnid]
        while todo:
            for h in self.synsets.get(todo.pop(), ("", [], []))[2]:
                if h not in seen:
                    seen.append(h)
                    todo.append(h)
        return seen

    def common_concrete_nouns(self, tagged_only: bool = True) -> list[str]:
        return sorted(w for w, tagged in self.first_senses.items()
                      if (tagged or not tagged_only) and self.synsets[w][0] in CONCRETE_LEXFILES)


def distractor_rows(wordnet: WordNet, imagenet: dict[str, list[str]], tagged_only: bool = True) -> list[tuple[str, str, list[str]]]:
    """(wnid, name, ancestors) for ImageNet-1k's classes (their first name there), then the common
    concrete nouns that are not among them (their first lemma); one row per distinct name."""
    rows, names = [], set()
    for wnid, ns in imagenet.items():
        rows.append((wnid, ns[0], wordnet.ancestors(wnid)))
        names.add(ns[0].lower())
    for wnid in wordnet.common_concrete_nouns(tagged_only):
        name = wordnet.synsets[wnid][1][0].replace("_", " ")
        if wnid not in imagenet and name.lower() not in names:
            rows.append((wnid, name, wordnet.ancestors(wnid)))
            names.add(name.lower())
    return rows


def main(argv: list[str] | None = None) -> int:
    from core.prompting import COVERAGE_DISTRACTORS, DISTRACTOR_TEMPLATE, read_synsets
    from models.text_encoder import TEXT_MODEL_NAME, encode_prompts

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wordnet", type=Path, required=True, help="WordNet 3.0's database folder (data.noun, index.noun)")
    p.add_argument("--out", type=Path, default=COVERAGE_DISTRACTORS, help="the table (.tsv); embeddings beside it (.npy)")
    p.add_argument("--all", action="store_true", help="every concrete noun, not only SemCor-tagged ones")
    args = p.parse_args(argv)
    for name in ("data.noun", "index.noun"):
        if not (args.wordnet / name).exists():
            print(f"error: no {name} in {args.wordnet}: give WordNet 3.0's database folder", file=sys.stderr)
            return 2
    rows = distractor_rows(WordNet.read(args.wordnet), read_synsets(), tagged_only=not args.all)
    header = (f"# Distractors for the prompt-coverage warning (dataprep/wordnet_nouns.py): ImageNet-1k's classes, then\n"
              f"# WordNet 3.0's common concrete nouns. wnid<TAB>name<TAB>WordNet ancestors. Embeddings of\n"
              f"# '{DISTRACTOR_TEMPLATE}' per row by {TEXT_MODEL_NAME}, float16, in the .npy beside this file.\n"
              f"# {WORDNET_NOTICE}\n")
    args.out.write_text(header + "".join(f"{w}\t{n}\t{' '.join(a)}\n" for w, n, a in rows), encoding="utf-8")
    embs = encode_prompts([DISTRACTOR_TEMPLATE.format(n) for _, n, _ in rows])
    np.save(args.out.with_suffix(".npy"), embs.astype(np.float16))
    print(f"{len(rows)} distractors ({sum(1 for w, _, _ in rows if w in read_synsets())} ImageNet-1k classes) "
          f"-> {args.out} and {args.out.with_suffix('.npy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
