"""What a training run keeps in its folder, beside the loop that fills it: the lock that makes
one process its only writer, the disk-space check before a checkpoint, the clean-up of
checkpoints a crash left unfinished or unusable, and the log (``metrics.csv``, TensorBoard,
``loss_curve.png``).
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
import torch

import drawing
from engine import store
from fileio import atomic_write_text, exclusive_lock
from models import count_parameters
from training.config import TrainConfig
from training.tensorboard import EventWriter

log = logging.getLogger("train")


# --------------------------------------------------------------------------- disk space
class DiskSpaceError(RuntimeError):
    """Too little free disk space for the next checkpoint (the previous one is kept)."""


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """What one checkpoint takes: the weights, their EMA and AdamW's two moments, in fp32."""
    return 4 * 4 * count_parameters(model)


def check_disk_space(folder: Path, need: int) -> None:
    """Refuse to start a checkpoint that cannot fit (twice its size: it is written beside the old
    ones, then renamed), rather than die half-way through writing it."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < 2 * need:
        raise DiskSpaceError(f"only {free / 2**20:.0f} MB free in {folder}: a checkpoint needs {2 * need / 2**20:.0f} MB. "
                             "Free some space (or lower --keep_checkpoints) and run the same command to resume "
                             "from the last checkpoint")


# --------------------------------------------------------------------------- one writer per run
class RunLockedError(RuntimeError):
    """Another training process is already writing this run folder."""


def run_lock(run_dir: Path) -> Any:
    """Hold ``<run_dir>/.train.lock`` for the whole run, so a run folder never has two writers.

    Two processes on one run would write the same ``ckpt-NNNNNNN`` folders and replace each
    other's ``metrics.csv``. The lock is the project's file lock (``fileio.exclusive_lock``).
    """
    return exclusive_lock(run_dir / ".train.lock", busy=lambda pid: RunLockedError(
        f"another training process (pid {pid}) is already writing {run_dir}: wait for it to finish, "
        "stop it, or give this run another --run_name"))


# --------------------------------------------------------------------------- the log
NOISE_BANDS = 4  # metrics.csv splits the loss over this many equal ranges of t


def metrics_header(num_train_timesteps: int) -> list[str]:
    """``metrics.csv``'s columns: the loss, then the loss in each band of t (``loss_t0_250`` ...)."""
    edges = [round(k * num_train_timesteps / NOISE_BANDS) for k in range(NOISE_BANDS + 1)]
    return ["step", "loss", "lr", "images_per_s", "elapsed_s",
            *(f"loss_t{lo}_{hi}" for lo, hi in zip(edges, edges[1:]))]


def truncate_metrics(path: Path, step: int, header: list[str] | None = None) -> None:
    """Drop the rows of ``metrics.csv`` after ``step`` (written by steps a crash took back); with
    ``header``, a file written before a column existed gets today's header, its old rows empty there."""
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1]
    for line in lines[1:]:
        try:
            if int(line.split(",", 1)[0]) <= step:
                keep.append(line)
        except ValueError:  # a half-written last line
            continue
    if header and lines and lines[0].strip().split(",") != header:
        old_width = len(lines[0].strip().split(","))
        keep = [",".join(header) + "\n"] + [line.rstrip("\r\n") + "," * (len(header) - old_width) + "\n"
                                            for line in keep[1:]]
    if keep != lines:
        atomic_write_text(path, "".join(keep))


class MetricsLog:
    """The loss, learning rate and speed of each window of ``log_every`` steps: a row of
    ``metrics.csv`` and TensorBoard scalars (rank 0), the loss also by noise level. A resumed
    run first drops the rows past its checkpoint (the steps that wrote them were lost)."""

    def __init__(self, cfg: TrainConfig, step: int, master: bool):
        self.cfg, self.master = cfg, master
        self.header = metrics_header(cfg.num_train_timesteps)
        self.band_sum, self.band_n = torch.zeros(NOISE_BANDS), torch.zeros(NOISE_BANDS)
        self.board = EventWriter(cfg.run_dir / "tensorboard") if master and cfg.report_to == "tensorboard" else None
        self.file = None
        if master:
            path = cfg.run_dir / "metrics.csv"
            new = not path.exists() or step == 0
            if not new:
                truncate_metrics(path, step, self.header)  # rows past the checkpoint were lost with the steps
            self.file = path.open("w" if new else "a", newline="")
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(self.header)
        self.window_loss, self.window_n, self.window_t = 0.0, 0, time.time()

    def add(self, loss: float, t: torch.Tensor, per_image: torch.Tensor | None) -> None:
        """One step's loss, and with ``per_image`` (this process's images at noise levels ``t``) its bands."""
        self.window_loss += loss
        self.window_n += 1
        if per_image is not None:  # the loss by noise level (this process's images): what is learnt when
            band = (t * NOISE_BANDS // self.cfg.num_train_timesteps).clamp(max=NOISE_BANDS - 1).cpu()
            self.band_sum.index_add_(0, band, per_image.detach().float().cpu())
            self.band_n.index_add_(0, band, torch.ones_like(band, dtype=torch.float32))

    def pause(self, seconds: float) -> None:
        """Time spent on checkpoints and samples: not part of the window's images/s."""
        self.window_t += seconds

    def write(self, step: int, now: float, lr: float, train_seconds: float,
              mean_across: Callable[[float], float]) -> tuple[float, float]:
        """End the window at ``step``: its row (rank 0); returns its mean loss (over all processes,
        by ``mean_across``) and images/s."""
        ips = self.window_n * self.cfg.batch_size / max(1e-9, now - self.window_t)
        mean_loss = mean_across(self.window_loss / self.window_n)
        if self.master:
            bands = [f"{v:.6f}" if n > 0 else "" for v, n in zip((self.band_sum / self.band_n.clamp(min=1)).tolist(),
                                                                 self.band_n.tolist())]
            self.writer.writerow([step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{ips:.1f}", f"{train_seconds:.1f}", *bands])
            self.file.flush()
            if self.board:
                self.board.scalars(step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": ips,
                                          **{f"train/{name}": float(v) for name, v in zip(self.header[5:], bands) if v}})
        self.window_loss, self.window_n, self.window_t = 0.0, 0, now
        self.band_sum.zero_()
        self.band_n.zero_()
        return mean_loss, ips

    def image(self, step: int, grid: Path) -> None:
        """A sample grid, to TensorBoard."""
        if self.board and grid.exists():
            self.board.image(step, "samples/grid", np.asarray(Image.open(grid).convert("RGB")))

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.board:
            self.board.close()


def write_loss_curve(cfg: TrainConfig) -> None:
    path = cfg.run_dir / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    if rows:
        drawing.loss_curve([float(r["step"]) for r in rows], [float(r["loss"]) for r in rows],
                           cfg.run_dir / "loss_curve.png")


# --------------------------------------------------------------------------- unfinished checkpoints
def remove_stale_temp(ckpt_root: Path) -> None:
    """Delete checkpoint folders a killed run left half-written (the run's only writer is this process)."""
    root = Path(ckpt_root)
    if root.is_dir():
        for tmp in root.glob(".tmp-ckpt-*"):
            log.warning("removing an unfinished checkpoint left by an earlier run: %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def set_aside_unusable(ckpt_root: Path, resume_from: Path | None) -> None:
    """Rename checkpoints newer than ``resume_from`` (so unusable) to ``.unusable-ckpt-...``.

    Otherwise a damaged checkpoint with a higher step could survive keep-last-K
    pruning while good ones are deleted. Kept, not deleted, for inspection.
    """
    last = -1 if resume_from is None else store.checkpoint_step(resume_from)
    for path in store.checkpoint_dirs(ckpt_root):
        if store.checkpoint_step(path) > last:
            aside = path.with_name(f".unusable-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("setting aside unusable checkpoint %s as %s", path, aside.name)
            os.replace(path, aside)
