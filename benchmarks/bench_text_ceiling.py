#!/usr/bin/env python3
"""How much of a free-text prompt's class the text embedding gives away: a ceiling for free text.

    python -m benchmarks.bench_text_ceiling [--model tiny200] [--free-text assets/paraphrases_unlike.tsv]
                                            [--wordnet /usr/share/wordnet] [--log benchmarks/results/text_ceiling.txt]

The network sees a prompt only as its MiniLM embedding, and learns from the embeddings of its
training texts (``core.prompting.class_training_prompts``: the class names in templates, WordNet
synonyms, the written descriptions). A paraphrase worded unlike those texts can only be drawn as its
class if its embedding says which class it is. This asks readers that learn from the same training
texts, and from nothing else, which class each paraphrase of ``--free-text`` is:

* the nearest training text (cosine);
* the nearest class, by the mean of its training texts' embeddings;
* a linear classifier (L2-regularised logistic regression) on the training texts' embeddings, at
  several regularisation strengths; the best is printed, though it is chosen on the paraphrases
  themselves, so it flatters the ceiling rather than understates it.

Each reader's share of paraphrases put in their own class bounds what a model conditioned on these
embeddings can do: a paraphrase read as another class is drawn as that class. With ``--wordnet``
(Debian: ``apt install wordnet-base``) each class's WordNet gloss and hypernym join its training
texts, to see whether more text of that kind would raise the ceiling. Runs in seconds on a CPU.
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

from benchmarks.benchlog import tee_stdout
from core import prompting
from engine import store

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)


def training_texts(classes: list[dict], wordnet: Path | None) -> list[list[str]]:
    """Each class's training texts as preprocess.py builds them (rich variants), optionally with its
    WordNet gloss and hypernym."""
    descriptions = prompting.read_descriptions(ROOT / "assets/class_descriptions.tsv")
    synsets = dict(line.split("\t") for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines())
    glosses = read_glosses(wordnet) if wordnet else {}
    out = []
    for c in classes:
        names = synsets[c["wnid"]].split(", ") if c["wnid"] in synsets else [c["name"]]
        texts = prompting.class_training_prompts(names, descriptions.get(c["wnid"], ()))
        if c["wnid"] in glosses:
            gloss, hypernym = glosses[c["wnid"]]
            texts += [gloss, f"{c['name']}, {gloss}", f"a {c['name']}, a kind of {hypernym}"]
        out.append(texts)
    return out


def read_glosses(wordnet: Path) -> dict[str, tuple[str, str]]:
    """wnid -> (the first clause of its WordNet gloss, its first hypernym's first lemma)."""
    lemmas, raw = {}, {}
    with open(wordnet / "data.noun", encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition("|")
            fields = head.split()
            n_words = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            rest = fields[4 + 2 * n_words:]
            hypernyms = [rest[2 + 4 * i] for i in range(int(rest[0])) if rest[1 + 4 * i] in ("@", "@i")]
            wnid = "n" + fields[0]
            lemmas[wnid] = words[0]
            raw[wnid] = (gloss.split(";")[0].strip().strip('"'), hypernyms[:1])
    return {w: (g, lemmas.get("n" + h[0], "thing") if h else "thing") for w, (g, h) in raw.items()}


def linear_reader(x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float, scale: float = 20.0,
                  steps: int = 300, seed: int = 0):
    """A logistic-regression reader trained on (embedding, class) pairs; returns its predict function."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    w = (0.01 * torch.randn(x.shape[1], n_classes, generator=g)).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(scale * xt @ w + b, yt) + weight_decay * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, b = w.detach(), b.detach()
    return lambda e: (scale * torch.as_tensor(e, dtype=torch.float32) @ w + b).argmax(1).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200", help="a store model: its classes are the readers' choices")
    p.add_argument("--store", default=None)
    p.add_argument("--free-text", default=str(ROOT / "assets/paraphrases_unlike.tsv"),
                   help="prompt<TAB>class name lines (lines for classes the model lacks are skipped)")
    p.add_argument("--wordnet", type=Path, default=None, help="WordNet's dict folder: add glosses to the texts")
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evaluation import read_free_text
    from models.text_encoder import encode_prompts

    folder = store.resolve_model_path(args.model, store=args.store)
    classes = json.loads((folder / store.CONFIG_FILE).read_text())["classes"]
    pairs = read_free_text(args.free_text, [c["name"] for c in classes], skip_unknown=True)
    para = encode_prompts([t for t, _ in pairs])
    truth = np.array([c for _, c in pairs])
    print(f"{args.model}: {len(classes)} classes; {len(pairs)} paraphrases of {len(set(truth))} classes from "
          f"{args.free_text}; {platform.processor() or platform.machine()}")
    variants = [("training texts", None)] + ([("training texts + WordNet gloss and hypernym", args.wordnet)]
                                              if args.wordnet else [])
    for label, wordnet in variants:
        texts = training_texts(classes, wordnet)
        emb = encode_prompts([t for ts in texts for t in ts])
        owner = np.repeat(np.arange(len(classes)), [len(ts) for ts in texts])
        means = np.stack([emb[owner == k].mean(0) for k in range(len(classes))])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        rows = [("nearest training text", owner[(para @ emb.T).argmax(1)]),
                ("nearest class mean", (para @ means.T).argmax(1))]
        for wd in WEIGHT_DECAYS:
            rows.append((f"linear reader, weight decay {wd:g}", linear_reader(emb, owner, len(classes), wd)(para)))
        sims = para @ emb.T
        own = np.array([sims[i, owner == truth[i]].max() for i in range(len(truth))])
        other = np.array([sims[i, owner != truth[i]].max() for i in range(len(truth))])
        print(f"\n{label} ({len(emb)} texts, {len(emb) / len(classes):.1f} per class): a paraphrase's cosine to "
              f"its class's nearest text, median {np.median(own):.2f}; to another class's, {np.median(other):.2f}")
        for name, pred in rows:
            print(f"  {name:<36} {np.mean(pred == truth):6.1%} of the paraphrases in their own class")
        best = max(np.mean(pred == truth) for _, pred in rows)
        print(f"  ceiling (the best reader):           {best:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
