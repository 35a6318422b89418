#!/usr/bin/env python3
"""Pictures of the diffusion process: forward-noising strips, denoising GIFs
and strips, sample grids, loss curves and schedule plots.

Used by training (periodic samples), the CLI and the web app. Every function
takes uint8 images ``(N, H, W, 3)`` (or [-1, 1] tensors, converted with
clamping), returns the picture as a uint8 array, and writes it when given a
path. Frame labels state the real model timestep. Matplotlib figures are
always closed after use.

This module draws what it is given; it never loads a model. A model's README
figures (sampling, then these drawings) are ``python diffusion.py figures``
(engine/figures.py).

As a script: ``python plot_func.py --help`` renders a schedule plot and a
forward strip of an image.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from core.pixels import to_uint8  # noqa: E402
from core.schedules import DiffusionConfig  # noqa: E402
from core.traces import noised_versions  # noqa: E402

ImageBatch = np.ndarray | torch.Tensor


def as_uint8(images: ImageBatch) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` from uint8 arrays or [-1, 1] float arrays/tensors.

    Floats are denormalised from [-1, 1] with clamping (NaN becomes 0, the
    middle grey); tensors may be ``(N, C, H, W)`` or ``(C, H, W)``, arrays
    ``(N, H, W, C)`` or ``(H, W, C)`` (channel-first arrays are accepted too).
    Grey (1 channel) is repeated to RGB and an alpha channel is dropped.
    """
    if isinstance(images, torch.Tensor):
        x = images.detach()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            arr = x.permute(0, 2, 3, 1).cpu().numpy()
        else:
            arr = to_uint8(torch.nan_to_num(x.float(), nan=0.0))
    else:
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None, ..., None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
            arr = arr.transpose(0, 2, 3, 1)  # channel-first array
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):  # floats are taken as [-1, 1]
                arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
                arr = ((np.clip(arr, -1, 1) + 1) * 127.5).round().astype(np.uint8)
            elif arr.dtype == np.bool_:
                arr = arr.astype(np.uint8) * 255
            else:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected images of shape (N, H, W, 3), got {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.shape[0] == 0:
        raise ValueError("no images")
    return np.ascontiguousarray(arr)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _upscale(img: Image.Image, min_side: int) -> Image.Image:
    """Nearest-neighbour upscaling so 32 px images stay crisp and labels fit."""
    factor = max(1, math.ceil(min_side / min(img.size)))
    return img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img


def _stack(pictures: Sequence[Image.Image], *, horizontal: bool, gap: int = 2) -> Image.Image:
    """Pictures side by side (or one above the other) on white, ``gap`` px apart."""
    if horizontal:
        size = (sum(p.width for p in pictures) + gap * (len(pictures) - 1), max(p.height for p in pictures))
    else:
        size = (max(p.width for p in pictures), sum(p.height for p in pictures) + gap * (len(pictures) - 1))
    canvas = Image.new("RGB", size, "white")
    offset = 0
    for p in pictures:
        canvas.paste(p, (offset, 0) if horizontal else (0, offset))
        offset += (p.width if horizontal else p.height) + gap
    return canvas


def _save(array: np.ndarray, path: str | os.PathLike | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def sample_grid(
    images: ImageBatch,
    nrow: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    padding: int = 2,
    min_cell: int = 64,
) -> np.ndarray:
    """Tile images into a grid (``nrow`` per row); optional caption under each cell."""
    imgs = as_uint8(images)
    n, h, w, _ = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    scale = max(1, math.ceil(min_cell / min(h, w)))
    ch, cw = h * scale, w * scale
    cap = 14 if labels else 0
    grid = Image.new("RGB", (nrow * (cw + padding) + padding, ncol_rows * (ch + cap + padding) + padding), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(10)
    for i in range(n):
        r, c = divmod(i, nrow)
        x0, y0 = padding + c * (cw + padding), padding + r * (ch + cap + padding)
        grid.paste(Image.fromarray(imgs[i]).resize((cw, ch), Image.NEAREST), (x0, y0))
        if labels:
            draw.text((x0 + 1, y0 + ch + 1), str(labels[i])[: max(4, cw // 6)], fill="black", font=font)
    out = np.asarray(grid)
    _save(out, path)
    return out


def _labelled(img: np.ndarray, label: str, min_side: int = 96) -> Image.Image:
    """An image with a caption bar on top."""
    pic = _upscale(Image.fromarray(img), min_side)
    bar = 16
    canvas = Image.new("RGB", (pic.width, pic.height + bar), "white")
    canvas.paste(pic, (0, bar))
    ImageDraw.Draw(canvas).text((3, 2), label, fill="black", font=_font(11))
    return canvas


def forward_diffusion_strip(
    image: ImageBatch,
    timesteps: Sequence[int] = (0, 100, 250, 500, 750, 999),
    *,
    beta_schedule: str = "cosine",
    num_train_timesteps: int = 1000,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    min_side: int = 96,
) -> np.ndarray:
    """One image noised to each timestep by q(x_t | x_0), side by side, labelled ``t=...``.

    The same noise is used at every t, so the strip shows only the schedule.
    """
    terms = DiffusionConfig(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule).terms()
    xt = noised_versions(terms, as_uint8(image)[:1], timesteps, seed=seed)
    ts = [int(t) for t in timesteps]
    frames = [_labelled(f, f"t={t}", min_side) for f, t in zip(to_uint8(xt), ts)]
    out = np.asarray(_stack(frames, horizontal=True))
    _save(out, path)
    return out


def denoising_frames(frames: Sequence[ImageBatch], timesteps: Sequence[int], nrow: int | None = None,
                     min_side: int = 0) -> list[np.ndarray]:
    """Each step's batch as one labelled grid (``t=...``, the real model timestep),
    scaled up (nearest neighbour, whole factors) until its short side is at least ``min_side``."""
    if len(frames) != len(timesteps):
        raise ValueError(f"{len(frames)} frames but {len(timesteps)} timesteps")
    out = []
    for batch, t in zip(frames, timesteps):
        grid = sample_grid(batch, nrow, padding=1)
        out.append(np.asarray(_labelled(grid, f"t={int(t)}", min_side=max(min_side, grid.shape[0]))))
    return out


def denoising_gif(
    frames: Sequence[ImageBatch],
    timesteps: Sequence[int],
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    fps: float = 8.0,
    hold_last: float = 1.5,
    min_side: int = 0,
) -> Path:
    """Write the denoising process as a looping GIF (the final image held ``hold_last`` s)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pictures = denoising_frames(frames, timesteps, nrow, min_side)
    if not pictures:
        raise ValueError("no frames to write")
    durations = [1000.0 / fps] * len(pictures)
    durations[-1] = hold_last * 1000.0
    return write_gif(path, pictures, durations)


def write_gif(path: str | os.PathLike, pictures: Sequence[np.ndarray], durations: Sequence[float]) -> Path:
    """RGB uint8 pictures as a looping GIF, frame i shown ``durations[i]`` ms.

    Each frame gets its own 256-colour palette by Pillow's fast octree quantizer: about 4x
    faster than the default median cut on the app's 1566x412 denoising frames (3.0 -> 0.7 s
    for 20 frames; the app writes one per request), at the same file size."""

    if len(pictures) != len(durations) or not pictures:
        raise ValueError(f"{len(pictures)} pictures but {len(durations)} durations")
    frames = [Image.fromarray(as_uint8(p)[0]).quantize(256, method=Image.Quantize.FASTOCTREE)
              for p in pictures]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Pillow wants a plain number, not a list, for a single frame.
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=[round(d) for d in durations] if len(frames) > 1 else round(durations[0]))
    return path


def denoising_strip(
    frames: Sequence[ImageBatch],
    timesteps: Sequence[int],
    *,
    max_frames: int = 8,
    max_images: int = 4,
    path: str | os.PathLike | None = None,
    min_side: int = 64,
) -> np.ndarray:
    """Intermediate steps as a table: one row per image (at most ``max_images``),
    one column per chosen step (``max_frames`` spread evenly, always the first
    and the last), each column labelled with its real model timestep."""
    if len(frames) != len(timesteps):
        raise ValueError(f"{len(frames)} frames but {len(timesteps)} timesteps")
    if not frames:
        raise ValueError("no frames")
    n = len(frames)
    k = max(1, min(int(max_frames), n))
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]
    batches = [as_uint8(frames[i])[:max(1, int(max_images))] for i in picks]
    columns = []
    for i, batch in zip(picks, batches):
        col = _stack([_upscale(Image.fromarray(img), min_side) for img in batch], horizontal=False)
        columns.append(_labelled(np.asarray(col), f"t={int(timesteps[i])}", min_side=min_side))
    out = np.asarray(_stack(columns, horizontal=True))
    _save(out, path)
    return out


@torch.no_grad()
def forward_and_prediction_strip(
    noisy: ImageBatch,
    guesses: ImageBatch,
    timesteps: Sequence[int],
    *,
    path: str | os.PathLike | None = None,
    min_side: int = 96,
) -> np.ndarray:
    """Top row: an image noised to each t (``noisy``); bottom row: the model's one-step guess of
    x_0 from each x_t (``guesses``), as ``diffusion.one_step_x0`` returns them.

    Shows what the forward process destroys and how much of it the model can
    recover in one step: the picture behind "predict the clean image".
    """
    noisy, guesses = as_uint8(noisy), as_uint8(guesses)
    ts = [int(t) for t in timesteps]
    if not len(noisy) == len(guesses) == len(ts):
        raise ValueError(f"{len(noisy)} noisy images, {len(guesses)} guesses and {len(ts)} timesteps")
    top = _stack([_labelled(f, f"x_t, t={t}", min_side) for f, t in zip(noisy, ts)], horizontal=True)
    bottom = _stack([_labelled(f, "guess of x_0", min_side) for f in guesses], horizontal=True)
    out = np.asarray(_stack([top, bottom], horizontal=False))
    _save(out, path)
    return out


def _figure_to_array(fig) -> np.ndarray:
    """Render a figure to uint8 RGB and close it (also when rendering fails)."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def loss_curve(
    steps: Sequence[float], losses: Sequence[float], path: str | os.PathLike | None = None, *, smooth: int = 50
) -> np.ndarray:
    """Training loss against step (raw, faint) with a moving median (bold), log scale.

    A median, not a mean: the first window would otherwise carry the steep initial
    drop far to the right, and single spikes would bend the line."""
    steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    if steps.shape != losses.shape or steps.ndim != 1:
        raise ValueError(f"steps and losses must be 1-D and the same length, got {steps.shape} and {losses.shape}")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        ax.plot(steps, losses, alpha=0.3, lw=0.8, label="loss")
        if len(losses) >= 2:
            k = max(1, min(smooth, len(losses) // 5 or 1))
            med = np.median(np.lib.stride_tricks.sliding_window_view(losses, k), axis=1)
            ax.plot(steps[k - 1:], med, lw=2, label=f"median of last {k}")
        finite = losses[np.isfinite(losses)]
        if len(finite) and np.all(finite > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    except BaseException:
        plt.close(fig)
        raise
    out = _figure_to_array(fig)
    _save(out, path)
    return out


def schedule_plot(
    num_train_timesteps: int = 1000,
    path: str | os.PathLike | None = None,
    *,
    schedules: Sequence[str] = ("linear", "cosine"),
    timesteps: Sequence[int] | None = None,
) -> np.ndarray:
    """alpha-bar (signal fraction) over t for the linear and cosine schedules;
    ``timesteps`` (optional) are marked with dotted lines."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        for name in schedules:
            ac = DiffusionConfig(num_train_timesteps=num_train_timesteps, beta_schedule=name).terms().alphas_cumprod
            ax.plot(np.arange(num_train_timesteps), ac.numpy(), label=name, lw=2)
        for t in timesteps or ():
            ax.axvline(int(t), color="grey", ls=":", lw=1)
        ax.set_xlabel("timestep t")
        ax.set_ylabel(r"$\bar\alpha_t$")
        ax.set_title("Signal kept by q(x_t | x_0)")
        ax.set_xlim(0, num_train_timesteps - 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    except BaseException:
        plt.close(fig)
        raise
    out = _figure_to_array(fig)
    _save(out, path)
    return out


# --------------------------------------------------------------------------- the app's studio pictures
def upscale_nearest(image: ImageBatch, min_side: int) -> np.ndarray:
    """One image scaled up by a whole factor (nearest neighbour: pixels stay crisp) to at least ``min_side``."""
    return np.asarray(_upscale(Image.fromarray(as_uint8(image)[0]), min_side))


def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]],
    *,
    col_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    title: str | None = None,
    min_side: int = 96,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """A table of images (rows of uint8 (H, W, 3)), each scaled up crisply to ``min_side``,
    with a label over each column and left of each row (a parameter grid, a per-step table)."""
    if not rows or not rows[0]:
        raise ValueError("no images")
    ncol = max(len(r) for r in rows)
    cells = [[_upscale(Image.fromarray(as_uint8(im)[0]), min_side) for im in r] for r in rows]
    cw = max(c.width for r in cells for c in r)
    ch = max(c.height for r in cells for c in r)
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max([int(probe.textlength(str(t), font=font)) + 8 for t in row_labels] + [0])
    top = 18 if col_labels else 0
    head = 20 if title else 0
    gap = 2
    canvas = Image.new("RGB", (left + ncol * (cw + gap), head + top + len(rows) * (ch + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        draw.text((left + j * (cw + gap) + 3, head + 2), str(label)[: max(6, cw // 7)], fill="black", font=font)
    for i, r in enumerate(cells):
        y = head + top + i * (ch + gap)
        if i < len(row_labels):
            draw.text((3, y + ch // 2 - 7), str(row_labels[i]), fill="black", font=font)
        for j, c in enumerate(r):
            canvas.paste(c, (left + j * (cw + gap), y))
    out = np.asarray(canvas)
    _save(out, path)
    return out


def stack_pictures(pictures: Sequence[np.ndarray], *, gap: int = 8, path: str | os.PathLike | None = None
                   ) -> np.ndarray:
    """uint8 (H, W, 3) pictures one above the other on white (two tables of different widths)."""
    if not pictures:
        raise ValueError("no pictures")
    out = np.asarray(_stack([Image.fromarray(as_uint8(p)[0]) for p in pictures], horizontal=False, gap=gap))
    _save(out, path)
    return out


def frames_gif(images: ImageBatch, path: str | os.PathLike, *, labels: Sequence[str] = (), fps: float = 6.0,
               min_side: int = 256, bounce: bool = True) -> Path:
    """Images as a looping GIF, each scaled up crisply and captioned (an interpolation);
    ``bounce`` plays it forward and back so the loop has no jump."""
    imgs = as_uint8(images)
    pictures = [np.asarray(_labelled(im, labels[i] if i < len(labels) else "", min_side))
                for i, im in enumerate(imgs)]
    if bounce and len(pictures) > 2:
        pictures = pictures + pictures[-2:0:-1]
    return write_gif(path, pictures, [1000.0 / fps] * len(pictures))


def log_snr_plot(
    log_snr: Sequence[float],
    marked: Sequence[int] = (),
    *,
    label: str = "",
    title: str = "log-SNR of the schedule, and the timesteps the sampler visits",
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """log(alpha-bar / (1 - alpha-bar)) over t (given), with ``marked`` timesteps as dots on the curve."""
    y = np.asarray(log_snr, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    try:
        ax.plot(np.arange(len(y)), y, lw=2, label="log-SNR(t)")
        ts = [int(t) for t in marked if 0 <= int(t) < len(y)]
        if ts:
            ax.scatter(ts, y[ts], color="crimson", zorder=3, s=18, label=label or f"{len(ts)} sampler steps")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("timestep t")
        ax.set_ylabel("log SNR")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, len(y) - 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    except BaseException:
        plt.close(fig)
        raise
    out = _figure_to_array(fig)
    _save(out, path)
    return out


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
