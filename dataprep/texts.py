"""The texts each class is trained under and their embeddings: the ``--descriptions`` file, the training
prompts per class (``prompting.class_training_prompts``) and the text encoder's vectors for them."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from core.prompting import class_training_prompts, prompt_table, read_descriptions
from dataprep.defaults import EmbedFn, PreprocessError
from dataprep.layout import ClassInfo
from models.text_encoder import PROMPT_TEMPLATES, TEXT_EMBED_DIM, TEXT_MODEL_NAME, class_prompt, encode_prompts

log = logging.getLogger("preprocess")


def load_descriptions(descriptions: str | os.PathLike | None) -> dict[str, list[str]]:
    """``--descriptions``: extra training prompts per wnid (none when no file is given)."""
    try:
        return read_descriptions(descriptions) if descriptions is not None else {}
    except (OSError, ValueError) as e:
        raise PreprocessError(f"--descriptions: {e}") from e


def class_texts(chosen: Sequence[ClassInfo], described: dict[str, list[str]], text_variants: str) -> list[list[str]]:
    """The training prompts of each class: its names (the main one first) and its descriptions."""
    try:
        return [class_training_prompts([c.name] + [n for n in c.names if n != c.name],
                                       described.get(c.wnid, ()), text_variants) for c in chosen]
    except ValueError as e:
        raise PreprocessError(str(e)) from e


def text_model_name(embed_fn: EmbedFn | None) -> str:
    """The name the manifest gives the text encoder (a stand-in is marked ``custom:``)."""
    return TEXT_MODEL_NAME if embed_fn is None else f"custom:{getattr(embed_fn, '__name__', 'embed_fn')}"


def default_embed_fn(prompts: list[str]) -> np.ndarray:
    """The project's text encoder (all-MiniLM-L6-v2, 384-d, unit norm)."""

    return encode_prompts(prompts)


def compute_embeddings(
    names: Sequence[str], template: str, embed_fn: EmbedFn, training_prompts: Sequence[Sequence[str]] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class-prompt embeddings ``(C, D)``, training-prompt embeddings ``(C, K, D)`` and the class prompts.

    ``training_prompts``: K prompts per class (``prompting.prompt_table``); by
    default each class name in the six ``PROMPT_TEMPLATES``.
    """

    prompts = [class_prompt(n, template) for n in names]
    if training_prompts is None:
        training_prompts = [[class_prompt(n, t) for t in PROMPT_TEMPLATES] for n in names]
    if len(training_prompts) != len(names) or len({len(r) for r in training_prompts}) > 1:
        raise PreprocessError("training prompts must be one equally long list per class")
    width = len(training_prompts[0]) if names else len(PROMPT_TEMPLATES)
    if not names:
        return np.zeros((0, TEXT_EMBED_DIM), np.float32), np.zeros((0, width, TEXT_EMBED_DIM), np.float32), prompts
    # Each distinct text is encoded once (a padded table repeats some).
    unique = list(dict.fromkeys(prompts + [p for row in training_prompts for p in row]))
    # Modest calls: the text encoder shows a progress bar of its own for big ones.
    vecs = np.concatenate(
        [np.asarray(embed_fn(unique[i: i + 256]), dtype=np.float32) for i in range(0, len(unique), 256)]
    )
    if vecs.ndim != 2 or vecs.shape[0] != len(unique):
        raise PreprocessError(f"embedding function returned shape {vecs.shape}")
    row_of = {p: i for i, p in enumerate(unique)}
    cls = np.ascontiguousarray(vecs[[row_of[p] for p in prompts]])
    tmpl = np.ascontiguousarray(vecs[[[row_of[p] for p in row] for row in training_prompts]])
    return cls, tmpl, prompts


def encode_class_texts(
    chosen: Sequence[ClassInfo],
    template: str,
    training_texts: Sequence[Sequence[str]],
    embed_fn: EmbedFn | None,
    text_variants: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Encode each class prompt and its training prompts (padded to one width, ``prompt_table``).

    Returns the class-prompt embeddings ``(C, D)``, the training-prompt embeddings
    ``(C, K, D)``, the class prompts and K.
    """
    embed = embed_fn or default_embed_fn
    table = prompt_table(training_texts)
    log.info("encoding %d class prompts and %d training prompts per class (%s text)", len(chosen),
             len(table[0]), text_variants)
    with _tqdm_disabled(not progress):  # the encoder's own loading bars
        cls_emb, tmpl_emb, prompts = compute_embeddings([c.name for c in chosen], template, embed, table)
    return cls_emb, tmpl_emb, prompts, len(table[0])


@contextlib.contextmanager
def _tqdm_disabled(disable: bool) -> Iterator[None]:
    """Silence third-party progress bars while ``disable`` is true.

    tqdm reads ``TQDM_DISABLE``; transformers' bars follow
    ``HF_HUB_DISABLE_PROGRESS_BARS`` (read when it is first imported).
    """
    names = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    if not disable:
        yield
        return
    old = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
