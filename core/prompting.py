"""From text to the conditioning vector: training prompts per class, and what
the app and the CLI do with a user's prompt before it reaches the network.

* ``class_training_prompts``: the texts a class is trained under: its name in
  varied sentence templates, its WordNet synonyms, and hand-written
  descriptions (``assets/class_descriptions.tsv``), so that free text
  ("a small orange fish in a glass bowl") lands near the class it describes.
* ``nearest_classes``: the model's training classes closest to a prompt, by
  cosine similarity of the text embeddings.
* ``CoverageIndex``: does the model cover a prompt? The prompt's best similarity
  to any text a class is known by (its prompt, its WordNet names, its
  descriptions), against its best similarity to things the model does not have
  (ImageNet-1k's other classes and WordNet's common concrete nouns, less
  everything above or below one of its classes): the app warns when the prompt
  is nearer something the model never saw (calibrated by
  ``benchmarks/bench_coverage.py``).
* ``snap_to_classes``: optionally pull a prompt's embedding toward the model's
  training texts (or class prompts) it is nearest to: a model trained on its
  classes' texts has only seen that corner of the embedding space
  (``engine.class_texts`` keeps the texts with a store model).
* ``parse_weighted_prompt`` / ``encode_weighted``: blended prompts,
  ``goldfish:0.7 | coral reef:0.3``, mix the parts' embeddings with those weights.

Embeddings are the text encoder's unit-norm 384-d vectors; every function
here takes them as arrays, so none needs the encoder itself.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from models.text_encoder import PROMPT_TEMPLATES, class_prompt

# Varied sentence templates for training (CLIP's ImageNet prompts in spirit). The first
# six are the original PROMPT_TEMPLATES, so "basic" training text is a prefix of "rich".
RICH_TEMPLATES = PROMPT_TEMPLATES + (
    "a blurry photo of a {}",
    "a bright photo of a {}",
    "a cropped photo of a {}",
    "a low resolution photo of a {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a good photo of a {}",
    "a snapshot of a {}",
)
SYNONYM_TEMPLATES = ("a photo of a {}", "a picture of a {}", "a {}")
TEXT_VARIANTS = ("basic", "rich")


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """``wnid<TAB>description`` lines (``#`` comments and blank lines skipped) -> {wnid: [descriptions]}."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        wnid, sep, text = line.partition("\t")
        if not sep or not wnid.strip() or not text.strip() or "\t" in text:
            raise ValueError(f"{path}:{n}: expected 'wnid<TAB>description', got {line!r}")
        out.setdefault(wnid.strip(), []).append(text.strip())
    return out


def class_training_prompts(names: Sequence[str], descriptions: Sequence[str] = (), variants: str = "rich") -> list[str]:
    """The distinct prompts a class is trained under, the class-name prompts first.

    ``names``: the class's WordNet names, common name first (``["goldfish",
    "Carassius auratus"]``). ``basic``: the common name in the six original
    templates. ``rich``: the common name in every ``RICH_TEMPLATES`` entry, each
    synonym in three templates, then the descriptions.
    """
    if variants not in TEXT_VARIANTS:
        raise ValueError(f"text variants must be one of {TEXT_VARIANTS}, got {variants!r}")
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise ValueError("a class needs at least one name")
    if variants == "basic":
        return list(dict.fromkeys(class_prompt(names[0], t) for t in PROMPT_TEMPLATES))
    prompts = [class_prompt(names[0], t) for t in RICH_TEMPLATES]
    prompts += [class_prompt(syn, t) for syn in names[1:] for t in SYNONYM_TEMPLATES]
    prompts += [d.strip() for d in descriptions if d.strip()]
    return list(dict.fromkeys(prompts))


def prompt_table(per_class: Sequence[Sequence[str]]) -> list[list[str]]:
    """Pad every class's prompt list to the same length by cycling it (the training
    loop draws a column uniformly, so a class's early prompts, its name in
    templates, weigh a little more where its list is short)."""
    width = max(len(p) for p in per_class)
    return [[p[i % len(p)] for i in range(width)] for p in per_class]


def nearest_classes(prompt_emb: np.ndarray, class_embs: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` classes whose embedding is closest to the prompt's: ``[(index, cosine similarity)]``, best first."""
    sims = np.asarray(class_embs, np.float64) @ np.asarray(prompt_emb, np.float64)
    order = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in order]


def snap_to_classes(prompt_embs: np.ndarray, class_embs: np.ndarray, strength: float,
                    temperature: float = 0.05, values: np.ndarray | None = None) -> np.ndarray:
    """Move each prompt embedding toward the classes it is nearest to.

    The target is the softmax(similarity / ``temperature``)-weighted mean of the
    class embeddings (mostly the nearest class, a blend when two are equally
    near); the result is ``(1 - strength) * prompt + strength * target``,
    renormalised. ``strength`` 0 leaves the prompt as it is; 1 replaces it with
    the target. ``values``: what each row of ``class_embs`` moves the prompt
    toward, when not itself (the class prompt of each of a class's training
    texts: the texts read the prompt, the class prompt is drawn).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"snap strength must be in [0, 1], got {strength}")
    p = np.atleast_2d(np.asarray(prompt_embs, np.float64))
    c = np.asarray(class_embs, np.float64)
    if strength == 0.0:
        return p.astype(np.float32)
    logits = p @ c.T / temperature
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    target = w @ (c if values is None else np.asarray(values, np.float64))
    out = (1 - strength) * p + strength * target
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def coverage_similarity(prompt_embs: np.ndarray, class_text_embs: np.ndarray, per_class: bool = False) -> np.ndarray:
    """How near each prompt is to the classes: the best cosine similarity between the prompt and
    any of a class's texts. ``class_text_embs``: (classes, texts, dim) unit embeddings of the texts
    each class was trained under (or (classes, dim): one text per class). Returns (prompts,) best
    over the classes, or (prompts, classes) with ``per_class``."""
    texts = np.asarray(class_text_embs, np.float32)
    if texts.ndim == 2:
        texts = texts[:, None, :]
    sims = np.einsum("nd,ctd->nct", np.atleast_2d(np.asarray(prompt_embs, np.float32)), texts).max(axis=2)
    return sims if per_class else sims.max(axis=1)


ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Warn when a prompt's best class similarity is below its best similarity to a thing the model
# never saw, minus this margin: with tiny200, 6.5% of assets/paraphrases_unlike.tsv warn and 62.6% of
# assets/prompts_outside_classes.txt do; with default_model 7.5% and 92.9% (BENCHMARKS, "The
# prompt-coverage warning").
COVERAGE_MARGIN = -0.07
# What a model may not have (dataprep/wordnet_nouns.py): wnid, name and WordNet ancestors per row, with
# the rows' embeddings of DISTRACTOR_TEMPLATE beside it (.npy), so no app start encodes them again.
COVERAGE_DISTRACTORS = ASSETS / "coverage_distractors.tsv"
DISTRACTOR_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class Distractor:
    wnid: str
    name: str
    ancestors: frozenset[str]


def read_distractors(path: str | Path = COVERAGE_DISTRACTORS) -> list[Distractor]:
    """``wnid<TAB>name<TAB>ancestor wnids`` lines (``#`` comments skipped)."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].strip():
            raise ValueError(f"{path}:{n}: expected wnid<TAB>name<TAB>ancestors, got {line!r}")
        rows.append(Distractor(parts[0], parts[1], frozenset(parts[2].split())))
    return rows


def distractors_for(classes: Sequence[Mapping[str, object]], rows: Sequence[Distractor]) -> list[int]:
    """The rows that are things a model with ``classes`` does not have: none of its classes (by
    wnid or name), nor above one ("cat" over "tabby": a prompt about a cat is the tabby class's),
    nor below one."""
    wnids = {str(c.get("wnid", "")) for c in classes} - {""}
    names = {str(c["name"]).lower() for c in classes}
    above = set().union(*(r.ancestors for r in rows if r.wnid in wnids))
    return [i for i, r in enumerate(rows)
            if r.wnid not in wnids and r.wnid not in above and not (r.ancestors & wnids)
            and r.name.lower() not in names]


def read_synsets(path: str | Path = ASSETS / "LOC_synset_mapping.txt") -> dict[str, list[str]]:
    """``n01440764 tench, Tinca tinca`` lines -> {wnid: [names]} (ImageNet-1k's 1000 classes)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.strip().partition(" ")
        if wnid:
            out[wnid] = [n.strip() for n in names.split(",") if n.strip()]
    return out


def coverage_texts(classes: Sequence[Mapping[str, object]], template: str, synsets: Mapping[str, Sequence[str]],
                   descriptions: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The texts each class is known by: its prompt, its other WordNet names ("a photo of a tabby cat"),
    and its descriptions (by wnid from the shipped assets; a class without a wnid has its prompt)."""
    out = []
    for c in classes:
        wnid = str(c.get("wnid", ""))
        names = [str(n) for n in (c.get("names") or synsets.get(wnid) or [c["name"]])]
        texts = [str(c.get("prompt") or class_prompt(str(c["name"]), template))]
        texts += [class_prompt(n, template) for n in names if n.lower() != str(c["name"]).lower()]
        texts += list(descriptions.get(wnid, ()))
        out.append(list(dict.fromkeys(texts)))
    return out


def distractor_prompts(classes: Sequence[Mapping[str, object]], template: str,
                       synsets: Mapping[str, Sequence[str]]) -> list[str]:
    """A prompt for each ImageNet-1k class the model does not have (``distractors_for``, without
    WordNet's ancestors: by wnid or name): what a prompt about something outside the model's classes
    is likely to be nearer to."""
    rows = [Distractor(w, n[0], frozenset()) for w, n in synsets.items() if n]
    return [class_prompt(rows[i].name, template) for i in distractors_for(classes, rows)]


@dataclass
class CoverageIndex:
    """Embeddings to judge a prompt by: each class's texts (classes, texts, dim; short lists padded by
    cycling) and the distractors (n, dim), with the classes' names. ``build`` takes the distractors from
    ``assets/coverage_distractors.tsv`` (ImageNet-1k's classes and WordNet's common concrete nouns,
    less the model's classes and their kin), or ImageNet-1k's classes alone where it is missing."""
    class_names: list[str]
    class_texts: np.ndarray
    distractors: np.ndarray
    distractor_names: list[str]

    @classmethod
    def build(cls, classes: Sequence[Mapping[str, object]], template: str,
              encode_fn: Callable[[list[str]], np.ndarray], assets: Path = ASSETS) -> "CoverageIndex":
        synsets = read_synsets(assets / "LOC_synset_mapping.txt")
        descriptions = read_descriptions(assets / "class_descriptions.tsv")
        texts = prompt_table(coverage_texts(classes, template, synsets, descriptions))
        flat = np.asarray(encode_fn([t for row in texts for t in row]), np.float32)
        class_texts = flat.reshape(len(texts), len(texts[0]), -1)
        table = assets / COVERAGE_DISTRACTORS.name
        if not table.exists():  # ImageNet-1k's classes alone
            others = distractor_prompts(classes, template, synsets)
            embs = np.asarray(encode_fn(others), np.float32) if others else np.zeros((0, flat.shape[1]), np.float32)
            return cls([str(c["name"]) for c in classes], class_texts, embs, others)
        rows = read_distractors(table)
        keep = distractors_for(classes, rows)
        others = [class_prompt(rows[i].name, template) for i in keep]
        stored = table.with_suffix(".npy")
        if template == DISTRACTOR_TEMPLATE and stored.exists():  # encoded once, by dataprep/wordnet_nouns.py
            all_embs = np.load(stored, allow_pickle=False)
            if all_embs.shape != (len(rows), flat.shape[1]):
                raise ValueError(f"{stored} holds {all_embs.shape} embeddings for {len(rows)} rows of {table}: "
                                 "rebuild both with python -m dataprep.wordnet_nouns")
            embs = all_embs[keep].astype(np.float32)
            embs /= np.linalg.norm(embs, axis=1, keepdims=True)
        else:
            embs = np.asarray(encode_fn(others), np.float32) if others else np.zeros((0, flat.shape[1]), np.float32)
        return cls([str(c["name"]) for c in classes], class_texts, embs, others)

    def judge(self, prompt_emb: np.ndarray, k: int = 3) -> tuple[list[tuple[str, float]], float, str | None]:
        """(the k nearest classes with their similarity, the margin of the best class over the best
        distractor, the nearest distractor's prompt or None)."""
        sims = coverage_similarity(prompt_emb, self.class_texts, per_class=True)[0]
        order = np.argsort(-sims)[:k]
        matches = [(self.class_names[i], float(sims[i])) for i in order]
        if not len(self.distractors):
            return matches, float("inf"), None
        dsims = self.distractors @ np.asarray(prompt_emb, np.float32).ravel()
        j = int(dsims.argmax())
        return matches, float(sims[order[0]] - dsims[j]), self.distractor_names[j]


def coverage_message(matches: Sequence[tuple[str, float]], margin: float = float("inf"),
                     nearer: str | None = None, warn_below: float = COVERAGE_MARGIN) -> str:
    """A plain sentence about how well the model's classes cover a prompt (``CoverageIndex.judge``)."""
    if not matches:
        return "This model has no classes to compare with."
    near = ", ".join(f"{n} ({s:.2f})" for n, s in matches)
    if margin < warn_below:
        thing = f" (nearest: \"{nearer}\")" if nearer else ""
        return (f"The model has not seen anything like this prompt: it is nearer to things outside its classes"
                f"{thing} than to any of them. Expect an image of its training classes, not of the prompt. "
                f"Nearest classes: {near}")
    return f"Nearest training classes: {near}"


def descriptions_for(classes: Sequence[Mapping[str, object]], descriptions: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The descriptions of each class (by wnid; none for a class without an entry)."""
    return [list(descriptions.get(str(c.get("wnid", "")), ())) for c in classes]


# --------------------------------------------------------------------------- blended prompts
PROMPT_BLEND_HELP = (
    "Blend prompts with | and give each part a weight after a colon: "
    "'goldfish:0.7 | coral reef:0.3'. Weights are numbers >= 0 (a part without one weighs 1) and are "
    "normalised to sum to 1; the parts' text embeddings are mixed with those weights."
)
_WEIGHT = re.compile(r"^(?P<text>.*):(?P<weight>[^\s:]+)\s*$", re.S)


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """``"goldfish:0.7 | coral reef:0.3"`` -> ``[("goldfish", 0.7), ("coral reef", 0.3)]`` (weights sum to 1).

    A part's weight is a single token after its last colon; a colon followed
    by words ("note: a fish") is just text. An empty part, a weight that is not
    a finite number >= 0, or weights that are all 0 raise ``ValueError``.
    """
    parts = prompt.split("|")
    out = []
    for part in parts:
        m = _WEIGHT.match(part.strip())
        text, weight = part.strip(), 1.0
        if m:
            text, token = m.group("text").strip(), m.group("weight")
            try:
                weight = float(token)
            except ValueError:
                raise ValueError(f"bad weight {token!r} in {part.strip()!r}: write text:weight, "
                                 "the weight a number >= 0") from None
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"bad weight {token!r} in {part.strip()!r}: weights are finite numbers >= 0")
        if not text:
            raise ValueError(f"empty part in the blended prompt {prompt!r}: every part between | needs text")
        out.append((text, weight))
    total = sum(w for _, w in out)
    if total <= 0:
        raise ValueError(f"the weights in {prompt!r} are all 0")
    return [(t, w / total) for t, w in out]


def encode_weighted(prompts: Sequence[str], encode_fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Embeddings ``(N, D)`` of prompts that may be blends: each part encoded once,
    mixed with its weight, the mix renormalised to unit length (where the
    encoder's own embeddings live). A plain prompt is exactly its embedding."""
    parsed = [parse_weighted_prompt(p) for p in prompts]
    if all(len(parts) == 1 for parts in parsed):  # the common case: one call, nothing to mix
        return np.asarray(encode_fn([parts[0][0] for parts in parsed]), dtype=np.float32)
    unique = list(dict.fromkeys(t for parts in parsed for t, _ in parts))
    table = dict(zip(unique, np.asarray(encode_fn(unique), dtype=np.float64)))
    out = []
    for parts in parsed:
        if len(parts) == 1:
            out.append(table[parts[0][0]])
            continue
        mix = sum(w * table[t] for t, w in parts)
        norm = np.linalg.norm(mix)
        out.append(mix / norm if norm > 1e-8 else mix)
    return np.stack(out).astype(np.float32)


def snapping_encoder(encode_fn: Callable[[list[str]], np.ndarray], keys: np.ndarray, strength: float,
                     temperature: float = 0.05, values: np.ndarray | None = None) -> Callable[[list[str]], np.ndarray]:
    """``encode_fn`` with every result pulled by ``snap_to_classes`` toward the ``values`` of the ``keys``
    it is nearest to (unit embeddings: a model's training texts and their class prompts, or its class
    prompts alone: ``engine.class_texts.snap_targets``): the inference option that lets free text the
    model never saw land on the class it means."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"snap strength must be in [0, 1], got {strength}")

    def encode(prompts: list[str]) -> np.ndarray:
        embs = np.asarray(encode_fn(list(prompts)))
        return embs if strength == 0 else snap_to_classes(embs, keys, strength, temperature, values)

    return encode
