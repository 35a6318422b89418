"""A training run into the model store: its newest usable checkpoint's EMA weights, the config a
model needs and a model card. ``python diffusion.py export`` and the app's Train tab both call
``export_run``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from engine import store
from engine.model_card import COMPANION_FILES, model_card

# What a store model keeps of its checkpoint's config (not the optimizer, not the RNG states).
EXPORTED_KEYS = ("format_version", "unet", "diffusion", "image_size", "text_model", "prompt_template", "classes",
                 "data", "step", "images_seen", "train_seconds", "hardware", "parameters", "train", "model_type", "sr",
                 "distill", "sampler_defaults")


class ExportError(ValueError):
    """Nothing to export, or a bad option: the message says which."""


def export_run(
    run_dir: str | os.PathLike, name: str, *, store_root: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None, sampler_defaults: dict[str, Any] | None = None,
    evaluation: str | None = None, notes: str | None = None, fp32: bool = False, overwrite: bool = False,
) -> tuple[Path, Path]:
    """Export ``run_dir``'s newest usable checkpoint (or ``checkpoint``) as store model ``name``;
    returns (the model's folder, the checkpoint it came from). A damaged newest checkpoint (a crash,
    a full disk) is skipped for the one before it."""
    run_dir = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint else store.latest_checkpoint_usable(run_dir / "checkpoints")
    if ckpt is None or not ckpt.is_dir():
        raise ExportError(f"no checkpoint found for run {run_dir.name!r} (looked in {run_dir / 'checkpoints'})")
    config = json.loads((ckpt / store.CONFIG_FILE).read_text())
    tensors = store.load_tensors(ckpt / store.WEIGHTS_FILE)
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    out_cfg = {k: config[k] for k in EXPORTED_KEYS if k in config}
    out_cfg["source_checkpoint"] = str(ckpt)
    if sampler_defaults is not None or "sampler_defaults" in out_cfg:  # given, or a student's own
        out_cfg["sampler_defaults"] = sampler_defaults if sampler_defaults is not None else out_cfg["sampler_defaults"]
        try:
            store.check_sampler_defaults(out_cfg, "the sampler defaults")
        except store.CheckpointError as e:
            raise ExportError(str(e)) from None
    folder = store.save_to_store(name, ema, out_cfg, model_card(name, out_cfg, evaluation, notes),
                                 store=store_root, dtype=torch.float32 if fp32 else torch.float16,
                                 overwrite=overwrite, keep_files=COMPANION_FILES)
    return folder, ckpt
