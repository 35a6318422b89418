"""The texts a model was trained under, kept in the store so that "snap to classes" reads a prompt by
them rather than by one prompt per class.

A model learns each class from many texts (the name in templates, synonyms, written descriptions:
``core.prompting.class_training_prompts``). Which class a free-text prompt means is read far better
from those texts than from the class prompts: on tiny200's 108 paraphrases worded unlike the training
texts, the nearest training texts name the right class for 68%, the nearest class prompt for 45%.
Snapping weighs the training texts by their likeness to the prompt and pulls it toward their classes'
prompts, which the network draws most recognisably: at full strength free text lands on its class 79%
as often as the class names do, against 56% when pulled toward the nearest texts themselves and 43%
toward the nearest class prompts (BENCHMARKS.md "Snap to classes, read by the training texts").

A store model keeps its texts in ``config.json`` (each class's ``texts``) and their MiniLM embeddings,
one row per text in that order, in ``class_texts.safetensors`` (fp16, 3 MB for tiny200's 4,155 texts).
``export`` copies both from the run's data folder (``classes.json`` and ``template_embeddings.npy``
from ``preprocess.py``), so nothing long is encoded at export or at load; ``diffusion.py texts`` adds
them to a model exported before. A model without them is read by its class prompts, as before.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from engine.store import CONFIG_FILE, CheckpointError, LoadedModel, load_tensors, weight_shapes
from models.text_encoder import TEXT_EMBED_DIM, class_prompt

CLASS_TEXTS_FILE = "class_texts.safetensors"
EMBEDDINGS_KEY = "embeddings"
MAX_TEXTS = 1_000_000  # far above any real model (tiny200: 4,155); refused before anything is read
# The softmax temperatures of ``snap_to_classes`` for each kind of key. The training texts sit ~20 to
# a class, so a tighter softmax keeps the weight on the nearest texts instead of spreading it over
# classes (tiny200's paraphrases: 68% of the weight on the right class at 0.02, 37% at 0.05).
TEXTS_TEMPERATURE = 0.02
CLASS_PROMPTS_TEMPERATURE = 0.05

EncodeFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class SnapTargets:
    """What snapping compares a prompt with (``keys``, unit embeddings (N, D)), what each key pulls it
    toward (``values``, (N, D)), the softmax temperature over the keys, and what the keys are."""

    keys: np.ndarray
    values: np.ndarray
    temperature: float
    source: str  # "training texts" or "class prompts"


def texts_from_data(data_dir: str | os.PathLike, classes: Sequence[dict[str, Any]]) -> tuple[list[list[str]], np.ndarray]:
    """Each class's training texts and their embeddings (rows in class order) from a ``preprocess.py``
    folder whose classes are ``classes`` (same names, same order). Raises ``ValueError`` saying what
    does not fit."""
    folder = Path(data_dir)
    try:
        data_classes = json.loads((folder / "classes.json").read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: no readable classes.json ({e})") from None
    names = [c.get("name") for c in classes]
    if [c.get("name") for c in data_classes] != names:
        raise ValueError(f"{folder}: its classes are not the model's ({len(data_classes)} against {len(names)}, "
                         "or in another order)")
    texts = [c.get("training_prompts") for c in data_classes]
    if not all(isinstance(t, list) and t and all(isinstance(s, str) for s in t) for t in texts):
        raise ValueError(f"{folder}: classes.json lists no training prompts (made by an older preprocess.py)")
    path = folder / "template_embeddings.npy"
    try:
        table = np.load(path, mmap_mode="r")  # the header only, until rows are taken
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable ({e})") from None
    width = max(len(t) for t in texts)
    if table.ndim != 3 or table.shape[0] != len(texts) or table.shape[1] < width or table.shape[2] != TEXT_EMBED_DIM:
        raise ValueError(f"{path}: shape {table.shape} does not fit {len(texts)} classes of up to {width} texts")
    # preprocess pads each class's row by cycling its texts (prompting.prompt_table): the first ones are its own
    rows = np.concatenate([np.asarray(table[k, :len(t)], np.float32) for k, t in enumerate(texts)])
    return texts, rows


def class_text_tensors(embeddings: np.ndarray) -> dict[str, torch.Tensor]:
    """The contents of ``class_texts.safetensors`` for these embeddings."""
    return {EMBEDDINGS_KEY: torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(torch.float16)}


def load_class_texts(folder: str | os.PathLike, config: dict[str, Any]) -> np.ndarray | None:
    """The unit embeddings of a store model's training texts (one row per text of its classes' ``texts``,
    in order), or None when it has none. The file's header is checked against the config before any
    tensor is read; a file that does not fit is a ``CheckpointError``."""
    path = Path(folder) / CLASS_TEXTS_FILE
    classes = config.get("classes") or []
    listed = [c.get("texts") for c in classes] if isinstance(classes, list) else []
    if not path.is_file() or not listed or any(t is None for t in listed):
        return None
    if not all(isinstance(t, list) and all(isinstance(s, str) for s in t) for t in listed):
        raise CheckpointError(f"{folder}: a class's texts in {CONFIG_FILE} are not a list of strings")
    count = sum(len(t) for t in listed)
    shapes = weight_shapes(path)
    if count > MAX_TEXTS or shapes != {EMBEDDINGS_KEY: (count, TEXT_EMBED_DIM)}:
        raise CheckpointError(f"{path}: expected one tensor {EMBEDDINGS_KEY!r} of shape ({count}, {TEXT_EMBED_DIM}) "
                              f"for the {count} texts in {CONFIG_FILE}; found {shapes}")
    emb = load_tensors(path)[EMBEDDINGS_KEY].float().numpy()
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if not np.all(np.isfinite(emb)) or np.any(norms < 1e-3):
        raise CheckpointError(f"{path}: the embeddings hold non-finite or zero rows")
    return (emb / norms).astype(np.float32)


def snap_targets(lm: LoadedModel, encode_fn: EncodeFn) -> SnapTargets | None:
    """How "snap to classes" reads a prompt for this model: by its training texts when the store keeps
    them, each pulling toward its class's prompt; else by the class prompts themselves (encoded with
    ``encode_fn``). None for a model without classes."""
    prompts = [c.get("prompt") or class_prompt(c["name"], lm.prompt_template) for c in lm.classes]
    if not prompts:
        return None
    class_embs = np.asarray(encode_fn(prompts), np.float32)
    texts = load_class_texts(lm.path, lm.config)
    if texts is not None:
        owner = np.repeat(np.arange(len(lm.classes)), [len(c["texts"]) for c in lm.classes])
        return SnapTargets(texts, class_embs[owner], TEXTS_TEMPERATURE, "training texts")
    return SnapTargets(class_embs, class_embs, CLASS_PROMPTS_TEMPERATURE, "class prompts")


def attach_class_texts(folder: str | os.PathLike, data_dir: str | os.PathLike) -> int:
    """Give a store model the training texts of ``data_dir`` (a model exported before they were kept,
    or whose data has moved): the embeddings file first, then the config that lists the texts, each
    replaced whole, so an interrupted call leaves the model as it was or complete. Returns how many."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    texts, embeddings = texts_from_data(data_dir, config.get("classes") or [])
    config["classes"] = [dict(c, texts=t) for c, t in zip(config["classes"], texts)]
    for path, write in ((folder / CLASS_TEXTS_FILE, lambda p: save_file(class_text_tensors(embeddings), str(p))),
                        (config_path, lambda p: p.write_text(json.dumps(config, indent=2)))):
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp)
        shutil.copymode(config_path, tmp)  # safetensors writes owner-only files; a store model is readable
        os.replace(tmp, path)
    return len(embeddings)
