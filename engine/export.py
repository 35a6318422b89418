"""A training run into the model store: its newest usable checkpoint's EMA weights, the config a
model needs and a model card. ``python diffusion.py export`` and the app's Train tab both call
``export_run``, so one rule holds for both: an existing model is replaced only on an explicit choice
(``--overwrite``, the tab's checkbox) and is then kept (``engine/replaced.py``); the names the caller
protects (the app: the shipped models and the models in use, ``app_protected``) are never replaced."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from engine import store
from engine.class_texts import CLASS_TEXTS_FILE, class_text_tensors, texts_from_data
from engine.model_card import COMPANION_FILES, model_card

# What a store model keeps of its checkpoint's config (not the optimizer, not the RNG states).
EXPORTED_KEYS = ("format_version", "unet", "diffusion", "image_size", "text_model", "prompt_template", "classes",
                 "data", "step", "images_seen", "train_seconds", "hardware", "parameters", "train", "model_type", "sr",
                 "distill", "sampler_defaults")


class ExportError(ValueError):
    """Nothing to export, or a bad option: the message says which."""


@dataclass(frozen=True)
class Exported:
    folder: Path  # the model in the store
    checkpoint: Path  # the checkpoint it came from
    replaced: Path | None  # where the model it replaced went (None: the name was new)
    class_texts: str = ""  # what snapping will pull toward: "4155 training texts from DIR", or why only the class prompts


def class_texts_for(config: dict[str, Any], data_dir: str | os.PathLike | None) -> tuple[dict, str]:
    """The training texts of a run's data folder (``data_dir``, else the one it trained on) for the
    store: ``({file: tensors}, what)``; ``({}, why not)`` when the folder is gone or does not fit, and
    the model then snaps toward its class prompts. The texts are added to ``config``'s classes."""
    folder = data_dir or (config.get("data") or {}).get("dir") or (config.get("train") or {}).get("data_dir")
    if not folder or not config.get("classes"):
        return {}, "no data folder recorded: snapping pulls toward the class prompts"
    try:
        texts, embeddings = texts_from_data(folder, config["classes"])
    except ValueError as e:
        return {}, f"no training texts ({e}): snapping pulls toward the class prompts"
    config["classes"] = [dict(c, texts=t) for c, t in zip(config["classes"], texts)]
    return {CLASS_TEXTS_FILE: class_text_tensors(embeddings)}, f"{len(embeddings)} training texts from {folder}"


def app_protected(in_use: Iterable[Any]) -> dict[str, str]:
    """The names the app never replaces, with why: the shipped models and ``in_use`` (the models the app
    and the page have open; a folder given as a path counts by its name)."""
    protected = {Path(str(m)).name: "the model in use" for m in in_use if m}
    protected.update({name: "a shipped model" for name in store.SHIPPED_MODELS})
    return protected


def export_run(
    run_dir: str | os.PathLike, name: str, *, overwrite: bool, protected: Mapping[str, str] | None = None,
    overwrite_hint: str = "add --overwrite", store_root: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None, sampler_defaults: dict[str, Any] | None = None,
    evaluation: str | None = None, notes: str | None = None, fp32: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> Exported:
    """Export ``run_dir``'s newest usable checkpoint (or ``checkpoint``) as store model ``name``. A
    damaged newest checkpoint (a crash, a full disk) is skipped for the one before it.

    A name in ``protected`` (name -> why) is refused; an existing model is refused unless
    ``overwrite`` (``overwrite_hint`` tells the user how to ask for it) and is then moved aside
    whole, not deleted (``Exported.replaced``; ``engine.replaced.restore`` undoes it). The training
    texts of ``data_dir`` (default: the run's own data folder) go with it, for snapping
    (``engine.class_texts``)."""
    try:
        store.validate_model_name(name)
    except ValueError as e:
        raise ExportError(str(e)) from None
    protected = protected or {}
    if name in protected:
        raise ExportError(f"{name!r} is {protected[name]}: it cannot be replaced from here. Export under "
                          "another name.")
    exists = ExportError(f"a model named {name!r} already exists in the store: {overwrite_hint} to replace it "
                         f"(the old one is kept in {store.REPLACED_DIR}/ and can be restored)")
    if (store.store_dir(store_root) / name).exists() and not overwrite:
        raise exists
    run_dir = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint else store.latest_checkpoint_usable(run_dir / "checkpoints")
    if ckpt is None or not ckpt.is_dir():
        raise ExportError(f"no checkpoint found for run {run_dir.name!r} (looked in {run_dir / 'checkpoints'})")
    config = json.loads((ckpt / store.CONFIG_FILE).read_text())
    tensors = store.load_tensors(ckpt / store.WEIGHTS_FILE)
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    out_cfg = {k: config[k] for k in EXPORTED_KEYS if k in config}
    out_cfg["source_checkpoint"] = str(ckpt)
    extra, texts_note = class_texts_for(out_cfg, data_dir) if store.model_type_of(out_cfg) == "base" else ({}, "")
    if sampler_defaults is not None or "sampler_defaults" in out_cfg:  # given, or a student's own
        out_cfg["sampler_defaults"] = sampler_defaults if sampler_defaults is not None else out_cfg["sampler_defaults"]
        try:
            store.check_sampler_defaults(out_cfg, "the sampler defaults")
        except store.CheckpointError as e:
            raise ExportError(str(e)) from None
    try:
        saved = store.store_model(name, ema, out_cfg, model_card(name, out_cfg, evaluation, notes),
                                  store=store_root, dtype=torch.float32 if fp32 else torch.float16,
                                  overwrite=overwrite, keep_files=COMPANION_FILES, extra_tensors=extra)
    except FileExistsError:  # another export took the name meanwhile
        raise exists from None
    return Exported(saved.folder, ckpt, saved.replaced, texts_note)
