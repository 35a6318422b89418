"""Charts drawn with matplotlib: the training loss curve, the schedules' alpha-bar and a
schedule's log-SNR with the sampler's timesteps.

Each returns the chart as a uint8 RGB array (and writes it when given a path); every figure is
closed after use, also when drawing fails, so a long training run or the app leaks none.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from core.schedules import DiffusionConfig  # noqa: E402
from drawing.pictures import save  # noqa: E402


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
    save(out, path)
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
    save(out, path)
    return out


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
    save(out, path)
    return out
