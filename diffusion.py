#!/usr/bin/env python3
"""Train and sample class/text-conditional diffusion models: the command line.

    python diffusion.py                      # = train --preset default
    python diffusion.py train --preset smoke --max_steps 300
    torchrun --nproc_per_node 8 diffusion.py train --preset imagenet64 --data_dir data/imagenet64
    python diffusion.py sample --model default_model --class goldfish --n 8 --gif
    python diffusion.py export default --name my_model
    python diffusion.py texts my_model --data_dir data/tiny200_32   # its training texts, for snap to classes
    python diffusion.py distill tiny200 --max_minutes 60     # a 4-step student; export it as tiny200-live
    python diffusion.py list
    python diffusion.py restore my_model                     # undo an export --overwrite: the old my_model back

The diffusion math is the ``core`` package, the training loop ``training``, the model store and the
generation request ``engine``; this file only reads flags and calls them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Sequence

import torch

import drawing
from core.precision import PRECISIONS
from core.prompting import PROMPT_BLEND_HELP
from core.samplers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SAMPLER_DEFAULTS, SAMPLERS
from core.schedules import TIMESTEP_SPACINGS
from dataprep.images import load_init_image
from engine import store
from engine.figures import cmd_figures
from engine.class_texts import attach_class_texts
from engine.export import ExportError, export_run
from engine.replaced import list_replaced, restore, restore_hint
from engine.recipe import load_recipe, save_png
from engine.request import UNCONDITIONAL, GenerationRequest, generate
from engine.store import DEFAULT_MODEL_NAME, CheckpointError, load_model
from training.loop import (
    PRESETS,
    DiskSpaceError,
    RunLockedError,
    TrainConfig,
    make_config,
    train,
)

log = logging.getLogger("diffusion")


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _add_train_args(p: argparse.ArgumentParser, preset: str | None = "default") -> None:
    if preset == "default":
        p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                       help="starting values (smoke: minutes on CPU; default: the shipped model; imagenet64: GPUs)")
    # a student's network, schedule and loss are its teacher's and its method's, not flags
    skip = {"task", "teacher", "base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
            "head_channels", "dropout", "emb_dim", "cond_scale", "text_film", "num_train_timesteps", "beta_schedule",
            "prediction_type", "min_snr_gamma", "timestep_sampling", "logit_mean", "logit_std", "cond_drop_prob",
            "middle_attention", "sr_crop", "sr_aug_max", "sr_text", "sr_residual"} if preset == "distill" else set()
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else None
        flag = f"--{f.name}"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        elif isinstance(default, tuple):
            p.add_argument(flag, type=_int_tuple, default=None, metavar="A,B,..",
                           help=f"(default: {','.join(map(str, default))})")
        else:
            p.add_argument(flag, type=type(default), default=None, help=f"(default: {default})")


def cmd_train(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    cfg = make_config(args.preset, **overrides)
    return run_training(cfg)


def cmd_distill(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    teacher_dir = store.resolve_model_path(args.teacher_model)
    teacher_train = json.loads((teacher_dir / store.CONFIG_FILE).read_text()).get("train", {})
    overrides.update(
        teacher=str(args.teacher_model),
        run_name=args.run_name or f"{teacher_dir.name}-live",
        # the teacher's own data (its classes are checked against the teacher's when training starts)
        data_dir=args.data_dir or teacher_train.get("data_dir"),
    )
    if not overrides["data_dir"]:
        print(f"error: {args.teacher_model} does not say which data it was trained on: give --data_dir",
              file=sys.stderr)
        return 2
    return run_training(make_config("distill", **overrides))


def run_training(cfg: TrainConfig) -> int:
    data = Path(cfg.data_dir)
    if not (data / "train_images.npy").exists():
        print(
            f"No preprocessed training data in {data}/.\nCreate it first, for example the default model's data "
            "(10 Tiny ImageNet classes at 32 px):\n\n"
            f"    python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 32 "
            f"--classes assets/default_classes.txt --val-fraction 0.04 --out {data}\n\n"
            "or download Tiny ImageNet first: python preprocess.py --download tiny-imagenet --size 64 --out "
            f"{data}\n(see python preprocess.py --help)",
            file=sys.stderr,
        )
        return 2
    try:
        train(cfg)
    except (RunLockedError, DiskSpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def apply_png_recipe(args: argparse.Namespace, explicit: set[str]) -> None:
    """``--from-png``: the PNG's recipe fills every setting the command line did not give."""

    r = load_recipe(args.from_png)
    if r.get("negative_prompt"):
        log.warning("the PNG's negative prompt is ignored (this model has no negative prompts)")
    fill = {"model": r.get("model"), "sampler": r.get("sampler"), "steps": r.get("steps"),
            "guidance": r.get("guidance_scale"), "seed": r.get("seed"), "eta": r.get("eta"),
            "spacing": r.get("timestep_spacing"), "variation_seed": r.get("variation_seed"),
            "variation_strength": r.get("variation_strength"), "strength": r.get("strength"),
            # a recipe from before --precision existed was made in fp32
            "precision": r.get("precision") or "fp32",
            # a recipe names its band when it had one: none named is guidance at every step, not the model's default
            "guidance_interval": r.get("guidance_interval") or "none",
            "upscale": r.get("upscaler"), "upscale_steps": r.get("upscale_steps"), "upscale_aug": r.get("upscale_aug"),
            "snap": r.get("snap"),
            # a recipe names its guide model when it had one: none named is classifier-free guidance
            "guide": r.get("guide") or UNCONDITIONAL}
    for key, value in fill.items():
        if value is not None and key not in explicit:
            setattr(args, key, value)
    if "prompt" not in explicit and "class_name" not in explicit:
        args.prompt = [r["prompt"]]
    if "n" not in explicit:
        args.n = 1
    if r.get("strength") is not None and not args.init_image:
        raise ValueError(f"{args.from_png} was made from an init image (denoising strength {r['strength']}): "
                         "pass the same image with --init-image FILE")


def cmd_sample(args: argparse.Namespace) -> int:
    explicit = {k for k, v in vars(args).items() if v is not None and k not in ("func", "command", "out", "store",
                                                                                 "gif", "device", "from_png")}
    if args.from_png:
        apply_png_recipe(args, explicit)
    args.model = args.model or DEFAULT_MODEL_NAME
    if bool(args.prompt) == bool(args.class_name):
        print("error: give --prompt TEXT or --class NAME (one of them), or --from-png FILE", file=sys.stderr)
        return 2
    if (args.variation_strength is not None) != (args.variation_seed is not None):
        print("error: --variation-seed and --variation-strength go together", file=sys.stderr)
        return 2
    if args.strength is not None and not args.init_image:
        print("error: --strength needs --init-image FILE", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(args.model, store=args.store, device=device)
    if args.class_name and lm.class_names:
        known = {c.lower() for c in lm.class_names}
        unknown = [c for c in args.class_name if c.lower() not in known]
        if unknown:
            log.warning("classes %s are not among this model's classes; using them as free text", unknown)
    if args.snap is not None and (not 0 < args.snap <= 1 or not lm.classes):
        print("error: --snap needs a strength in (0, 1] and a model with classes", file=sys.stderr)
        return 2
    request = GenerationRequest(
        prompts=args.prompt, class_names=args.class_name, num_images=8 if args.n is None else args.n,
        seed=0 if args.seed is None else args.seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
        guidance_interval=args.guidance_interval, eta=args.eta or 0.0, spacing=args.spacing,
        precision=args.precision or "auto", variation_seed=args.variation_seed,
        variation_strength=args.variation_strength or 0.0,
        init_image=load_init_image(args.init_image, lm.image_size) if args.init_image else None,
        init_name=Path(args.init_image).name if args.init_image else None, strength=args.strength,
        snap=args.snap or 0.0, guide=None if args.guide in (None, UNCONDITIONAL) else args.guide,
        upscale=args.upscale, upscale_steps=args.upscale_steps, upscale_aug=args.upscale_aug)
    gen = generate(lm, request, store=args.store, device=device, return_frames=args.gif)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S")
    if list(out.glob(f"{stem}_*")):  # a run in the same second: do not overwrite its files
        stem += "-" + next(str(i) for i in range(1, 10_000) if not list(out.glob(f"{stem}-{i}_*")))
    for i, (img, prompt, recipe) in enumerate(zip(gen.images, gen.prompts, gen.recipes)):
        print(save_png(out / f"{stem}_{i:02d}_seed{recipe['seed']}.png", img, prompt, recipe))
    grid = drawing.sample_grid(gen.images, nrow=min(8, len(gen.images)), path=out / f"{stem}_grid.png")
    print(out / f"{stem}_grid.png", f"({grid.shape[1]}x{grid.shape[0]})")
    if args.gif:
        print(drawing.denoising_gif(gen.frames, gen.frame_timesteps, out / f"{stem}_denoise.gif",
                                    nrow=min(8, len(gen.images))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    run = Path(args.run)
    if not run.exists():
        run = Path(args.out_dir) / args.run
    try:
        defaults = json.loads(args.sampler_defaults) if args.sampler_defaults else None
    except ValueError as e:
        print(f"error: --sampler_defaults is not valid JSON: {e}", file=sys.stderr)
        return 2
    try:  # the maintainer's tool: any existing model, a shipped one too, is replaced with --overwrite (and kept)
        done = export_run(
            run, args.name, overwrite=args.overwrite, store_root=args.store, checkpoint=args.checkpoint,
            sampler_defaults=defaults, evaluation=Path(args.evaluation).read_text() if args.evaluation else None,
            notes=Path(args.notes).read_text() if args.notes else None, fp32=args.fp32, data_dir=args.data_dir)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in done.folder.iterdir()) / 1e6
    print(f"exported {done.checkpoint} (EMA weights, {'fp32' if args.fp32 else 'fp16'}) to {done.folder} "
          f"({size:.1f} MB)")
    if done.class_texts:
        print(f"snap targets: {done.class_texts}")
    if done.replaced:
        print(restore_hint(done.replaced))
    return 0


def cmd_texts(args: argparse.Namespace) -> int:
    try:
        folder = store.resolve_model_path(args.model, args.store, allow_path=False)
        count = attach_class_texts(folder, args.data_dir)
    except (ValueError, store.CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{folder}: {count} training texts from {args.data_dir}; 'snap to classes' now reads prompts by them")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    folder, displaced = restore(args.replaced, args.store)
    print(f"restored {folder}." + (f" {restore_hint(displaced)}" if displaced else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    root = store.store_dir(args.store)
    if args.replaced:
        entries = list_replaced(args.store)
        print("\n".join(f"{r.entry:40s} {r.name} as it was before {r.replaced_at}  {r.folder}" for r in entries)
              or f"no replaced models in {root}")
        return 0
    names = store.list_models(args.store, model_type=None)
    if not names:
        print(f"no models in {root}")
        return 0
    for name in names:
        cfg = json.loads((root / name / store.CONFIG_FILE).read_text())
        kind = "  (super-resolution)" if cfg.get("model_type") == "sr" else ""
        print(f"{name:24s} {cfg.get('image_size')}px  {len(cfg.get('classes', []))} classes  "
              f"step {cfg.get('step', '?')}  {root / name}{kind}")
    return 0


# Over 100 lines on purpose: the flat list of every subcommand's flags, the --help a user reads.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion.py", description="Train and sample class/text-conditional diffusion models.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a model (the default command)",
                       description="Train on a folder made by preprocess.py. Every option overrides the preset.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a few-step student (guidance folded in) from a store model",
                       description="Teach a student to do in 1-4 steps, one forward each, what the teacher does in "
                                   "20 guided steps (core/distill.py). The student is the teacher's network with a "
                                   "guidance input, trained on the teacher's data; resumable like training; export "
                                   "it with `export RUN --name TEACHER-live`. Every option overrides the distill "
                                   "preset.")
    p.add_argument("teacher_model", metavar="TEACHER", help="store model name or model folder, e.g. tiny200")
    _add_train_args(p, preset="distill")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sample", help="generate images with a stored model",
                       description="Generate images. Prompts may blend texts with weights: " + PROMPT_BLEND_HELP)
    p.add_argument("--model", default=None,
                   help="store name or model/checkpoint folder (default: tiny200, all 200 classes; default_model has 10)")
    p.add_argument("--store", default=None,
                   help="model store directory (default: model_store/ or $DIFFUSION_MODEL_STORE)")
    p.add_argument("--prompt", action="append", help="free-text prompt (repeat for several)")
    p.add_argument("--class", dest="class_name", action="append", help="class name, e.g. goldfish (repeatable)")
    p.add_argument("--n", type=int, default=None, help="number of images (default 8; 1 with --from-png)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"default: the model's sampler_defaults, else {DEFAULT_SAMPLER}")
    own_steps = ", ".join(f"{name} {spec.steps or 'every timestep'}" for name, spec in SAMPLER_DEFAULTS.items())
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (default: the model's sampler_defaults, else {own_steps})")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale, 1 = none "
                   f"(default: the model's sampler_defaults, else {DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=int, default=None, help="image i uses seed + i (default 0)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 deterministic, the default; 1 DDPM-like)")
    p.add_argument("--from-png", default=None, metavar="FILE",
                   help="regenerate a PNG written by this CLI or the app (or AUTOMATIC1111): its recipe fills "
                        "every setting not given on the command line")
    p.add_argument("--variation-seed", type=int, default=None, metavar="N",
                   help="variations: slerp each image's starting noise toward that of seed N + i")
    p.add_argument("--variation-strength", type=float, default=None, metavar="S",
                   help="0 = the seed's own image, 1 = the variation seed's own image")
    p.add_argument("--init-image", default=None, metavar="FILE",
                   help="start from this image (SDEdit): it is noised to t = strength x T and denoised from there")
    p.add_argument("--strength", type=float, default=None, metavar="S",
                   help="with --init-image: 0 keeps the image, 1 ignores it (default 1)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="apply guidance only where the noise level sigma is in (LO, HI] (Kynkaanniemi et al. "
                        "2024), e.g. 0.28,2.9; cheaper steps outside it; 'none' = guidance at every step "
                        "(default: the model's sampler_defaults, else every step)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto (default): bf16 autocast where the hardware has fast bf16 (AVX512-BF16/AMX CPUs, "
                        "recent GPUs), else fp32")
    p.add_argument("--spacing", choices=TIMESTEP_SPACINGS, default=None, help="timestep spacing")
    p.add_argument("--snap", type=float, default=None, metavar="S",
                   help="pull the prompt's embedding toward the model's nearest classes by S in (0, 1] "
                        "(free text the model never saw lands on the class it means)")
    p.add_argument("--guide", default=None, metavar="MODEL",
                   help="guide with: 'unconditional' (classifier-free guidance, the default) or a weaker model "
                        "of the store with the same image size and schedule (autoguidance, Karras et al. 2024: "
                        "an early checkpoint or a smaller network)")
    p.add_argument("--upscale", default=None, metavar="SR_MODEL",
                   help="upscale with a super-resolution model, e.g. sr64 (32 px -> 64 px; a cascade's second stage)")
    p.add_argument("--upscale-steps", type=int, default=None, metavar="N",
                   help="DPM-Solver++ steps of the upscaler (default: its sampler_defaults, else 10)")
    p.add_argument("--upscale-aug", type=float, default=None, metavar="LEVEL",
                   help="conditioning-augmentation noise level in [0, 1] for the upscaler (default: its "
                        "sampler_defaults, else 0.05)")
    p.add_argument("--out", default="output_ImageNet/samples", help="output folder")
    p.add_argument("--gif", action="store_true", help="also write the denoising GIF")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="put a run's EMA weights into the model store")
    p.add_argument("run", help="run name (under --out_dir) or run folder")
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--checkpoint", default=None, help="a specific ckpt folder (default: the run's latest)")
    p.add_argument("--out_dir", default="output_ImageNet", help="where runs live")
    p.add_argument("--store", default=None, help="model store directory")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half the size)")
    p.add_argument("--data_dir", default=None,
                   help="the preprocessed folder whose training texts go with the model, for 'snap to classes' "
                        "(default: the one the run trained on)")
    p.add_argument("--sampler_defaults", default=None, help='JSON, e.g. {"sampler": "dpm++", "steps": 20}')
    p.add_argument("--evaluation", default=None, help="Markdown file with evaluation results for the model card")
    p.add_argument("--notes", default=None, help="Markdown file appended to the model card (figures, caveats)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model of that name (it is moved aside: `restore NAME` undoes it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("figures", help="a model's README figures: per-class grid, denoising GIF and strip, "
                                       "forward strip with the model's x_0 guesses",
                       description="Sample with a stored model and draw its figures with the drawing package.")
    p.add_argument("--model", default="default_model", help="store name or model folder (default: default_model)")
    p.add_argument("--store", default=None, help="model store directory")
    p.add_argument("--out", default=None, help="output folder (default: output_ImageNet/<model>)")
    p.add_argument("--class", dest="gif_class", default="goldfish", help="class of the GIF and the strips")
    p.add_argument("--per-class", type=int, default=6, help="images per class in the grid")
    p.add_argument("--classes", default=None, metavar="N|NAMES",
                   help="the grid's rows: N classes spread over the model's list, or comma-separated names "
                        "(default: every class)")
    p.add_argument("--image", default=None,
                   help="real image for the forward strip (default: the first of the class in the model's data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--studio", action="store_true",
                   help="also the README's studio pictures (variations, blends, img2img, interpolation, grid); "
                        "needs the default model's classes")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("list", help="list the models in the store")
    p.add_argument("--store", default=None)
    p.add_argument("--replaced", action="store_true", help="list the models an export --overwrite moved aside")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("texts", help="keep a preprocessed folder's training texts with a store model, for 'snap "
                                     "to classes' (export does this itself; this is for models exported before)")
    p.add_argument("model", help="a model name in the store")
    p.add_argument("--data_dir", required=True, help="the preprocessed folder the model was trained on")
    p.add_argument("--store", default=None, help="model store directory")
    p.set_defaults(func=cmd_texts)

    p = sub.add_parser("restore", help="put back a model that an export --overwrite replaced",
                       description="The model now under that name is moved aside in its turn (`list --replaced`).")
    p.add_argument("replaced", help="a model name (its newest replaced copy) or an entry of `list --replaced`")
    p.add_argument("--store", default=None, help="model store directory")
    p.set_defaults(func=cmd_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]  # `python diffusion.py` trains
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a damaged or foreign checkpoint: a clear line, not a trace
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
