"""The preprocessing pipeline: decode in worker processes, write memory-mapped arrays to ``<out>.partial``
with checkpoints (an interrupted run resumes), the text embeddings and the manifest, then publish ``<out>``.

Each step lives in its own module: ``plan`` (options, scan, classes, split, hashes), ``decode`` (images
into the arrays), ``texts`` (class texts and their embeddings), ``writer`` (the output folder)."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dataprep.decode import decode_images, default_workers
from dataprep.defaults import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUT,
    DEFAULT_SIZE,
    DEFAULT_VAL_FRACTION,
    EmbedFn,
)
from dataprep.plan import check_options, plan_run
from dataprep.sources import open_source
from dataprep.texts import encode_class_texts, load_descriptions
from dataprep.writer import (
    build_manifest,
    existing_output,
    finalize_arrays,
    images_per_class,
    lock_output,
    publish,
    write_classes,
    write_manifest,
)
from models.text_encoder import DEFAULT_PROMPT_TEMPLATE

log = logging.getLogger("preprocess")


@dataclass
class Result:
    out: Path
    manifest: dict[str, Any]
    skipped_run: bool = False  # True when the output was already complete and up to date


def preprocess(
    src: str | os.PathLike,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    size: int = DEFAULT_SIZE,
    classes: str | Sequence[str] | None = None,
    max_per_class: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    synsets: str | os.PathLike | None = None,
    workers: int | None = None,
    prompt_template: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    embed_fn: EmbedFn | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_size: int | None = None,
    progress: bool = True,
    checkpoint_seconds: float = 10.0,
    text_variants: str = "rich",
    descriptions: str | os.PathLike | None = None,
) -> Result:
    """Preprocess ``src`` into ``out``; see the module docstring. Returns the manifest.

    ``embed_fn(list_of_prompts) -> (N, 384) float32`` defaults to the project's
    text encoder; tests pass a cheap stand-in. ``text_variants`` and
    ``descriptions`` choose the texts each class is trained under
    (``prompting.class_training_prompts``).
    """

    t0 = time.time()
    template = prompt_template or DEFAULT_PROMPT_TEMPLATE
    check_options(template, size, val_fraction, max_per_class, text_variants, descriptions)
    described = load_descriptions(descriptions)
    workers = default_workers() if not workers or workers < 1 else workers
    out = Path(out).expanduser()
    partial = out.with_name(out.name + ".partial")

    source = open_source(src)
    stack = contextlib.ExitStack()
    try:
        plan = plan_run(
            source, src, size=size, classes=classes, max_per_class=max_per_class, val_fraction=val_fraction,
            synsets=synsets, workers=workers, template=template, seed=seed, max_pixels=max_pixels,
            embed_fn=embed_fn, text_variants=text_variants, descriptions=descriptions, described=described,
        )
        lock_output(stack, out)
        done = existing_output(out, plan.config_hash, overwrite)
        if done is not None:
            return Result(out, done, skipped_run=True)

        state = decode_images(
            source, partial, plan.work_key, plan.splits, size=size, workers=workers, chunk_size=chunk_size,
            max_pixels=max_pixels, progress=progress, checkpoint_seconds=checkpoint_seconds,
        )
        counts = finalize_arrays(partial, state, plan.splits)
        n_train, n_val = images_per_class(partial, len(plan.chosen))
        cls_emb, tmpl_emb, prompts, prompts_per_class = encode_class_texts(
            plan.chosen, template, plan.training_texts, embed_fn, text_variants, progress
        )
        write_classes(partial, plan, template, prompts, n_train, cls_emb, tmpl_emb)
        for c, nt in zip(plan.chosen, n_train):
            if nt == 0:
                log.warning("class %s (%s) has no training images after skipping bad files", c.wnid, c.name)

        elapsed = time.time() - t0
        manifest = build_manifest(
            plan, source, src, size=size, state=state, counts=counts, n_train=n_train, n_val=n_val,
            prompts_per_class=prompts_per_class, text_variants=text_variants, descriptions=descriptions,
            described=described, elapsed=elapsed,
        )
        write_manifest(partial, manifest)
        publish(partial, out)
        _log_summary(out, manifest, elapsed)
        return Result(out, manifest)
    finally:
        stack.close()
        source.close()


def _log_summary(out: Path, manifest: dict[str, Any], elapsed: float) -> None:
    counts = manifest["counts"]
    log.info(
        "wrote %s: %d train + %d val images of %dx%d, %d classes, %d skipped, in %.1fs (%.0f images/s)",
        out, counts["train"], counts["val"], manifest["size"], manifest["size"], manifest["num_classes"],
        manifest["num_skipped"], elapsed, counts["candidates"] / max(elapsed, 1e-9),
    )
