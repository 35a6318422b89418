#!/usr/bin/env python3
"""How good is a model? Class accuracy and Frechet distance of its samples.

No pretrained Inception network can be downloaded here, so the yardstick is
our own: a small classifier trained on the model's training data (a few
minutes on a CPU) and kept beside the model. For each sampler setting we
generate N images per class and report

* accuracy: how often the classifier recognises the requested class
  (its accuracy on real held-out images is printed for reference);
* FD: the Frechet distance between generated and real held-out images in the
  classifier's penultimate features (lower is better; the real-vs-real
  distance of two disjoint real sets is printed as the noise floor);
* seconds per image on this machine.

With ``--inception PATH`` (pytorch-fid's ``pt_inception-2015-12-05-*.pth``)
the standard FID is reported as well.

    python evaluate.py --model default_model --data data/default32 --per-class 20
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from core.guidance import APGSettings
from core.samplers import DEFAULT_GUIDANCE, check_sampler
from dataprep.dataset import PreprocessedDataset
from engine.request import GenerationRequest, check_guide, resolve_settings
from engine.store import CheckpointError, load_model
from evaluation import (AUGMENTATIONS, CLASSIFIER_ARCHS, DEGRADATIONS, MAX_CLASSIFIER_BLOCKS, YardstickRecipe, evaluate, fit_yardstick, format_table,
                        load_classifier, read_free_text, yardstick_check)

DEFAULT_SETTINGS = "ddpm:1000,ddim:50,dpm++:20,dpm++:10"


def parse_settings(text: str) -> list[tuple[str, int]]:
    """``"ddpm:1000,dpm++:20"`` -> ``[("ddpm", 1000), ("dpm++", 20)]``."""

    out = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        try:
            check_sampler(name)
        except ValueError as e:
            raise ValueError(f"bad sampler setting {part!r}: {e}") from None
        if not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"bad sampler setting {part!r}: use e.g. ddpm:1000,ddim:50,dpm++:20")
        out.append((name, int(steps)))
    return out


def parse_blocks(text: str) -> tuple[int, ...]:
    """``"2,2,2,2"`` -> ``(2, 2, 2, 2)``: basic blocks in each of the classifier's four stages."""
    try:
        blocks = tuple(int(v) for v in text.split(","))
    except ValueError:
        blocks = ()
    if len(blocks) != 4 or not all(1 <= b <= MAX_CLASSIFIER_BLOCKS for b in blocks):
        raise ValueError(f"bad classifier blocks {text!r}: four counts in 1..{MAX_CLASSIFIER_BLOCKS}, e.g. 1,1,1,1")
    return blocks


def parse_snaps(text: str) -> list[float]:
    """``"0,0.5"`` -> ``[0.0, 0.5]``: snap strengths in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad --snap {text!r}: use strengths in [0, 1], e.g. 0,0.5") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"bad --snap {text!r}: use strengths in [0, 1], e.g. 0,0.5")
    return values


def parse_apg(text: str | None) -> APGSettings | None:
    """``"0,0,-0.5"`` -> ``APGSettings(eta=0, norm_threshold=0, momentum=-0.5)``; None or "" -> plain CFG."""
    if not text:
        return None
    try:
        eta, threshold, momentum = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bad --apg {text!r}: use ETA,NORM_THRESHOLD,MOMENTUM, e.g. 0,0,-0.5") from None
    return APGSettings(eta=eta, norm_threshold=threshold, momentum=momentum)


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default_model", help="store name or model folder")
    parser.add_argument("--store", default=None, help="model store directory")
    parser.add_argument("--data", default=None, help="the model's preprocessed data (default: from its config)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"sampler:steps list (default {DEFAULT_SETTINGS})")
    parser.add_argument("--per-class", type=int, default=20, help="generated images per class per setting")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's sampler_defaults, else "
                             f"{DEFAULT_GUIDANCE:g})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--retrain-classifier", action="store_true")
    parser.add_argument("--classifier", default=None,
                        help="folder of the yardstick classifier (default: beside the model); trained there if missing")
    parser.add_argument("--classifier2", default=None, metavar="DIR",
                        help="a second yardstick's folder: the same images are scored by it too (a second table)")
    parser.add_argument("--free-text", default=None,
                        help="TSV of 'prompt<TAB>class' lines: do free-text prompts land on their class?")
    parser.add_argument("--free-text-per-prompt", type=int, default=0, metavar="N",
                        help="images per free-text prompt (default: --per-class)")
    parser.add_argument("--free-text-skip-unknown", action="store_true",
                        help="leave out free-text lines whose class the model does not have")
    parser.add_argument("--snap", default="0", metavar="S[,S..]",
                        help="free text also with its embedding pulled toward the model's classes by each strength "
                             "in [0, 1] (e.g. 0,0.5: with and without)")
    parser.add_argument("--apg", default=None, metavar="ETA,THRESHOLD,MOMENTUM",
                        help="adaptive projected guidance in place of plain classifier-free guidance, at the same "
                             "network calls (core.guidance; e.g. 0,0,-0.5: no parallel part, no cap, momentum -0.5)")
    parser.add_argument("--save-samples", action="store_true",
                        help="also save each setting's images and labels in --out (samples_<sampler>_<steps>.npz), "
                             "to score them with another yardstick later")
    parser.add_argument("--free-text-setting", default=None,
                        help="sampler:steps for the free-text prompts (default: the model's own sampler and steps)")
    parser.add_argument("--classifier-only", action="store_true",
                        help="only train the yardstick on --data into --classifier and print its held-out accuracy")
    parser.add_argument("--classifier-per-class", type=int, default=0, metavar="N",
                        help="with --classifier-only: train on N images per class (default 0: all)")
    parser.add_argument("--classifier-width", type=int, default=32, help="with --classifier-only: base channels w")
    parser.add_argument("--classifier-blocks", default="1,1,1,1", metavar="N,N,N,N",
                        help="with --classifier-only: basic blocks per stage (1,1,1,1 = ResNet-10; 2,2,2,2 = ResNet-18)")
    parser.add_argument("--classifier-arch", choices=sorted(CLASSIFIER_ARCHS), default="resnet",
                        help="with --classifier-only: the network (resnet: ResNet-10/18; plain: VGG-style, no skips)")
    parser.add_argument("--classifier-augment", choices=AUGMENTATIONS, default="flip-shift",
                        help="with --classifier-only: flip-shift (flip + 4 px shifts) or strong (resized crops, "
                             "colour jitter, random erasing); training resumes per epoch when run again")
    parser.add_argument("--classifier-mirror-average", action="store_true",
                        help="with --classifier-only: the saved yardstick scores each image and its mirror "
                             "image and pools both views (test-time flip averaging)")
    parser.add_argument("--classifier-batch-size", type=int, default=128)
    parser.add_argument("--classifier-lr", type=float, default=2e-3, help="peak of the one-cycle learning rate")
    parser.add_argument("--classifier-weight-decay", type=float, default=5e-4)
    parser.add_argument("--classifier-precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast for training the classifier (fast on AVX512-BF16/AMX CPUs and GPUs)")
    parser.add_argument("--yardstick-check", action="store_true",
                        help="only score --classifier on --data's real held-out photos and on degraded copies of them "
                             f"({', '.join(DEGRADATIONS)}): can it tell good from bad?")
    parser.add_argument("--inception", default=None, help="pytorch-fid Inception weights (.pth) for standard FID")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="sampling precision (default fp32; compare with bf16 for parity)")
    parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="apply guidance only for noise levels sigma in (LO, HI] (default: the model's band; "
                             "'none': every step)")
    parser.add_argument("--guide", default=None, metavar="MODEL",
                        help="autoguidance: guide with this weaker model of the store instead of the unconditional "
                             "branch (same image size and schedule)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="write the table (Markdown) and JSON here (default output_ImageNet/eval/<model>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.classifier_only:
        return _classifier_only(args, device)
    if args.yardstick_check:
        return _yardstick_check(args, device)
    return _evaluate_model(args, device)


def _evaluate_model(args: argparse.Namespace, device: torch.device) -> int:
    """Score --model's samples at each of --settings; print the table and write it (and the JSON) to --out."""
    try:
        lm = load_model(args.model, store=args.store, device=device)
        data = args.data or lm.config.get("data", {}).get("dir")
        if not data:
            raise ValueError("the model's config names no data folder: pass --data")
        guide = load_model(args.guide, store=args.store, device=device) if args.guide else None
        if guide:
            check_guide(lm, guide)
        free_text = (read_free_text(args.free_text, lm.class_names, skip_unknown=args.free_text_skip_unknown)
                     if args.free_text else ())
        # scored at the model's own guidance unless told otherwise: the rule the CLI and the app follow
        chosen = resolve_settings(lm, GenerationRequest(guidance=args.guidance, guidance_interval=args.guidance_interval))
        free_text_setting = (parse_settings(args.free_text_setting)[0] if args.free_text_setting
                             else (chosen.sampler, chosen.steps))
        out = Path(args.out or f"output_ImageNet/eval/{lm.name}")
        result = evaluate(lm, data, parse_settings(args.settings), per_class=args.per_class, guidance=chosen.guidance,
                          seed=args.seed, batch_size=args.batch_size, classifier_epochs=args.classifier_epochs,
                          retrain_classifier=args.retrain_classifier, inception=args.inception, device=device,
                          classifier_dir=Path(args.classifier) if args.classifier else None,
                          free_text=free_text, free_text_setting=free_text_setting,
                          precision=args.precision, snaps=parse_snaps(args.snap),
                          guidance_interval=chosen.guidance_interval,
                          free_text_per_prompt=args.free_text_per_prompt, guide=guide, apg=parse_apg(args.apg),
                          samples_dir=out if args.save_samples else None,
                          second_classifier_dir=Path(args.classifier2) if args.classifier2 else None)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table(result)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.md").write_text(table + "\n")
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'evaluation.md'} and {out / 'evaluation.json'}")
    return 0


def _yardstick_check(args: argparse.Namespace, device: torch.device) -> int:
    if not args.data or not args.classifier:
        print("error: --yardstick-check needs --data (a preprocessed folder) and --classifier", file=sys.stderr)
        return 2
    try:
        train = PreprocessedDataset(args.data, split="train")
        val = PreprocessedDataset(args.data, split="val")
        clf, meta = load_classifier(Path(args.classifier), device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = yardstick_check(clf, train, val, args.seed)
    print(f"yardstick {args.classifier} (width {meta['width']}, blocks {meta.get('blocks', [1, 1, 1, 1])}) on "
          f"{len(val)} held-out photos of {args.data}; FD against as many real training photos\n")
    print("| images | top-1 | top-5 | FD |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['images']} | {r['top1']:.1%} | {r['top5']:.1%} | {r['fd']:.2f} |")
    return 0


def _classifier_only(args: argparse.Namespace, device: torch.device) -> int:
    if not args.data or not args.classifier:
        print("error: --classifier-only needs --data (a preprocessed folder) and --classifier (where to save it)",
              file=sys.stderr)
        return 2
    try:
        train = PreprocessedDataset(args.data, split="train")
        val = PreprocessedDataset(args.data, split="val")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(val) < 2:
        print(f"error: {args.data} has no held-out split: preprocess it with --val-fraction > 0", file=sys.stderr)
        return 2
    try:
        recipe = YardstickRecipe(epochs=args.classifier_epochs, width=args.classifier_width,
                                 blocks=parse_blocks(args.classifier_blocks), batch_size=args.classifier_batch_size,
                                 lr=args.classifier_lr, weight_decay=args.classifier_weight_decay,
                                 precision=args.classifier_precision, arch=args.classifier_arch,
                                 augmentation=args.classifier_augment, mirror_average=args.classifier_mirror_average)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = fit_yardstick(train, val, Path(args.classifier), recipe=recipe, seed=args.seed, device=device,
                         per_class=args.classifier_per_class)
    for point in meta["curve"]:
        print(f"epoch {point['epoch']:3d}  {point['seconds']:7.0f} s  top-1 {point['val_accuracy']:.1%}  "
              f"top-5 {point['val_top5']:.1%}")
    print(f"yardstick on {len(val)} held-out images of {train.num_classes} classes: top-1 {meta['val_accuracy']:.1%}, "
          f"top-5 {meta['val_top5']:.1%} ({meta['train_images']} training images, {meta['epochs']} epochs, "
          f"{meta['train_seconds']:.0f} s); saved in {args.classifier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
