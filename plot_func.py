#!/usr/bin/env python3
"""Draw the noise schedules and a forward-diffusion strip of an image.

Writes ``schedules.png`` (alpha-bar over t for the linear and cosine schedules) and, given
``--image``, ``forward_<schedule>.png`` (the image noised to each timestep by q(x_t | x_0),
the same noise at every t) into ``--out``.

    python plot_func.py --image photo.png --schedule linear --out output_ImageNet/plots

The drawing itself is the ``drawing`` package (grids, denoising GIFs and strips, loss curves,
schedules), which training, the figures and the web app use; this command only draws. A model's
README figures (sampling, then these drawings) are ``python diffusion.py figures``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from drawing import forward_diffusion_strip, schedule_plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="image to noise for a forward-diffusion strip")
    parser.add_argument("--schedule", choices=["linear", "cosine"], default="cosine")
    parser.add_argument("--timesteps", default="0,100,250,500,750,999", help="comma-separated timesteps")
    parser.add_argument("--out", default="output_ImageNet/plots", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the forward strip's noise")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)  # moved: python diffusion.py figures
    args = parser.parse_args(argv)
    if args.model:
        print("error: a model's figures are made by `python diffusion.py figures --model NAME` now "
              "(plot_func.py only draws)", file=sys.stderr)
        return 2
    out = Path(args.out)
    schedule_plot(path=out / "schedules.png")
    print(out / "schedules.png")
    image = np.asarray(Image.open(args.image).convert("RGB")) if args.image else None
    if image is not None:
        forward_diffusion_strip(image, [int(t) for t in args.timesteps.split(",")], beta_schedule=args.schedule,
                                seed=args.seed, path=out / f"forward_{args.schedule}.png")
        print(out / f"forward_{args.schedule}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
