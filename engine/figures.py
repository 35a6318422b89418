"""A model's README figures: sample with the core, then draw with the drawing package.

``python diffusion.py figures --model default_model --out output_ImageNet/default_model``
writes a per-class grid (one row per class), a denoising GIF and strip of one
class and, with a real image of that class, the forward/prediction strip (the
image noised to several t, and the model's one-step guess of x_0 from each).
Sampler, steps, guidance and its interval default to the model's ``sampler_defaults``. With
``--studio``, also the README's pictures of the app's studio features
(``studio_figures``: variations, blends, img2img, interpolation, a grid).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import drawing
from core.traces import one_step_x0
from dataprep.dataset import PreprocessedDataset
from dataprep.images import load_init_image
from engine.request import GenerationRequest, generate, interpolation
from engine.store import load_model
from models.text_encoder import encode_prompts

FORWARD_TIMESTEPS = (0, 100, 250, 500, 750, 999)


def model_figures(
    lm: Any,  # model_store.LoadedModel
    out_dir: str | os.PathLike,
    *,
    per_class: int = 6,
    gif_class: str = "goldfish",
    real_image: np.ndarray | None = None,
    seed: int = 0,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    encode_fn: Any = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the figures into ``out_dir``; return their paths by kind (grid, gif, strip, forward).

    ``classes``: the grid's rows (class names; default every class of the model)."""
    matches = [c for c in lm.classes if c["name"].lower() == gif_class.lower()]
    if not matches:
        raise ValueError(f"{gif_class!r} is not one of the model's classes: {', '.join(lm.class_names)}")
    rows = pick_classes(lm.classes, classes)
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {per_class}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the model's defaults for what is not given; fp32, so the figures are the same on every machine
    base = GenerationRequest(sampler=sampler, steps=num_steps, guidance=guidance_scale, precision="fp32")
    paths: dict[str, Path] = {}

    images = []
    for c in rows:  # seeds differ per class (by its index), so rows are independent draws
        images.append(generate(lm, replace(base, prompts=[c["prompt"]], num_images=per_class,
                                                 seed=seed + 1000 * int(c["index"])), encode_fn=encode_fn).images)
    labels = [c["name"] if j == 0 else "" for c in rows for j in range(per_class)]
    paths["grid"] = out / "per_class_grid.png"
    drawing.sample_grid(np.concatenate(images), nrow=per_class, labels=labels, path=paths["grid"])

    c = matches[0]
    stem = c["name"].replace(" ", "_")
    res = generate(lm, replace(base, prompts=[c["prompt"]], num_images=4, seed=seed), encode_fn=encode_fn,
                   return_frames=True)
    paths["gif"] = drawing.denoising_gif(res.frames, res.frame_timesteps, out / f"{stem}_denoising.gif", nrow=4,
                                         fps=6)
    paths["strip"] = out / f"{stem}_denoising_strip.png"
    drawing.denoising_strip(res.frames, res.frame_timesteps, path=paths["strip"])

    if real_image is not None:
        if encode_fn is None:
            encode_fn = encode_prompts
        noisy, guesses = one_step_x0(lm.model, lm.diffusion, real_image, encode_fn([c["prompt"]]),
                                       FORWARD_TIMESTEPS, seed=seed)
        paths["forward"] = out / f"{stem}_forward_strip.png"
        drawing.forward_and_prediction_strip(noisy, guesses, FORWARD_TIMESTEPS, path=paths["forward"])
    return paths


def studio_figures(
    lm: Any,  # model_store.LoadedModel
    out_dir: str | os.PathLike,
    *,
    init_image: np.ndarray | None = None,
    encode_fn: Any = None,
) -> dict[str, Path]:
    """The README's pictures of the studio features (the same core calls the app makes), for a model
    with the default model's classes: variations, blended prompts, img2img (from ``init_image``, a
    school bus), an interpolation (GIF and strip) and a guidance x steps grid."""
    if encode_fn is None:
        encode_fn = encode_prompts
    prompt = {c["name"]: c["prompt"] for c in lm.classes}
    needed = {"monarch", "goldfish", "coral reef", "jellyfish", "ladybug", "sports car"}
    if not needed <= set(prompt):
        raise ValueError(f"--studio draws {', '.join(sorted(needed))}; {lm.name} lacks "
                         f"{', '.join(sorted(needed - set(prompt)))}")
    base = GenerationRequest(precision="fp32")  # the model's defaults; fp32: the same on every machine
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def one(text: str, seed: int, **settings: Any) -> np.ndarray:
        request = replace(base, prompts=[text], seed=seed, **settings)
        return generate(lm, request, encode_fn=encode_fn).images[0]

    strengths = (0, 0.1, 0.2, 0.35, 0.6, 1)
    row = [one(prompt["monarch"], 3, variation_seed=40, variation_strength=s) for s in strengths]
    paths["variation"] = out / "studio_variation.png"
    drawing.labelled_grid([row], col_labels=[f"{s:g}" for s in strengths], min_side=96, path=paths["variation"],
                          title="variation strength: seed 3 -> variation seed 40 (monarch)")

    weights = (1, 0.75, 0.5, 0.25, 0)
    row = [one(f"{prompt['goldfish']}:{w:g} | {prompt['coral reef']}:{1 - w:g}" if 0 < w < 1 else
               prompt["goldfish" if w == 1 else "coral reef"], 5) for w in weights]
    paths["blend"] = out / "studio_blend.png"
    drawing.labelled_grid([row], col_labels=[f"w={w:g}" for w in weights], min_side=96, path=paths["blend"],
                          title="goldfish:w | coral reef:1-w (seed 5)")

    if init_image is not None:
        strengths = (0.2, 0.4, 0.6, 0.8, 1)
        row = [np.asarray(init_image)] + [one(prompt["sports car"], 0, init_image=np.asarray(init_image),
                                              strength=s) for s in strengths]
        paths["img2img"] = out / "studio_img2img.png"
        drawing.labelled_grid([row], col_labels=["init"] + [f"s={s:g}" for s in strengths], min_side=96,
                              path=paths["img2img"],
                              title=f"img2img: a school bus, prompted {prompt['sports car']!r}")

    request, fractions = interpolation(lm, prompt["goldfish"], prompt["jellyfish"], 1, 2, 8, encode_fn)
    frames = generate(lm, replace(request, precision=base.precision), encode_fn=encode_fn).images
    labels = [f"{f:.2f}" for f in fractions]
    paths["interpolation_gif"] = drawing.frames_gif(frames, out / "studio_interpolation.gif", labels=labels,
                                                    min_side=256)
    paths["interpolation"] = out / "studio_interpolation.png"
    drawing.labelled_grid([list(frames)], col_labels=labels, min_side=96, path=paths["interpolation"],
                          title="goldfish (seed 1) -> jellyfish (seed 2)")

    guidances, steps = (1, 3, 7), (8, 20)
    rows = [[one(prompt["ladybug"], 9, guidance=g, steps=n, sampler="dpm++") for g in guidances]
            for n in steps]
    paths["grid"] = out / "studio_grid.png"
    drawing.labelled_grid(rows, col_labels=[f"w={g}" for g in guidances], row_labels=[f"{n} steps" for n in steps],
                          min_side=96, path=paths["grid"], title="guidance x steps (DPM-Solver++, seed 9, ladybug)")
    return paths


def pick_classes(classes: list[dict], wanted: Sequence[str] | int | None) -> list[dict]:
    """The grid's classes: all (None), N spread evenly over the list (an int), or these names."""
    if wanted is None:
        return list(classes)
    if isinstance(wanted, int):
        if wanted < 1:
            raise ValueError(f"--classes must be at least 1, got {wanted}")
        n = min(wanted, len(classes))
        return [classes[round(i * (len(classes) - 1) / max(1, n - 1))] for i in range(n)] if n > 1 else classes[:1]
    by_name = {c["name"].lower(): c for c in classes}
    missing = [w for w in wanted if w.lower() not in by_name]
    if missing:
        raise ValueError(f"not classes of the model: {', '.join(missing)}")
    return [by_name[w.lower()] for w in wanted]


def real_class_image(data_dir: str | os.PathLike, class_name: str) -> np.ndarray:
    """The first held-out (else training) image of a class from preprocessed data."""

    for split in ("val", "train"):
        try:
            ds = PreprocessedDataset(data_dir, split=split)
        except FileNotFoundError:
            continue
        idx = [c["index"] for c in ds.classes if c["name"].lower() == class_name.lower()]
        hits = np.flatnonzero(np.asarray(ds.labels) == idx[0]) if idx else []
        if len(hits):
            return np.asarray(ds.images[int(hits[0])])
    raise ValueError(f"no image of {class_name!r} in {data_dir}")


def cmd_figures(args: Any) -> int:
    """``python diffusion.py figures``: load the model, find a real image, write and print the figures."""

    lm = load_model(args.model, store=args.store)
    if args.image:
        image = load_init_image(args.image, lm.image_size, flag="--image")
    elif lm.config.get("data", {}).get("dir") and Path(lm.config["data"]["dir"]).exists():
        image = real_class_image(lm.config["data"]["dir"], args.gif_class)
    else:
        image = None  # no data here: the forward strip is left out
    classes = args.classes
    if classes is not None:
        classes = int(classes) if classes.strip().isdigit() else [c.strip() for c in classes.split(",") if c.strip()]
    out = args.out or Path("output_ImageNet") / lm.name
    paths = model_figures(lm, out, per_class=args.per_class, gif_class=args.gif_class, real_image=image,
                          seed=args.seed, classes=classes)
    if args.studio:
        data_dir = lm.config.get("data", {}).get("dir")
        bus = real_class_image(data_dir, "school bus") if data_dir and Path(data_dir).exists() else None
        paths.update(studio_figures(lm, out, init_image=bus))
    for p in paths.values():
        print(p)
    return 0
