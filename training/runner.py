"""A training run as a separate process: what the app's Train tab starts, watches, stops and
reconnects to.

The process is ``python diffusion.py train ...``, the command a user would type (no second
training loop), with its output in ``<run>/train.log``. Everything shown about a run is read
back from its folder (``metrics.csv``, the sample grids, the checkpoints, the log, the run lock's
pid), so a reloaded page, a second browser or a restarted server sees the same run, and Stop
works on a run this process did not start. Only one run trains at a time: the app refuses a
second Start, and the run lock (``training.loop.run_lock``) refuses a second writer of a folder.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from training.loop import PRESETS

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LOG = "train.log"
LOCK_FILE = ".train.lock"  # written by training.loop.run_lock: the pid of the process training the run
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TAB_PRESETS = ("smoke", "default")  # the presets a CPU user can finish; imagenet64 and sr64 stay on the CLI
MIN_FREE_BYTES = 512 * 2**20  # a checkpoint of the default preset is ~50 MB; leave room for several


class RunError(ValueError):
    """A request the runner refuses (bad name, no data, a run already training...): says what to do."""


@dataclass(frozen=True)
class RunSpec:
    """What Start asks for. ``minutes`` or ``steps`` (0 = the preset's) bound this session of the run;
    ``resume`` False starts fresh and is refused when the run already has checkpoints."""

    run_name: str
    data_dir: Path
    preset: str = "smoke"
    minutes: float = 0.0
    steps: int = 0
    precision: str = "auto"
    resume: bool = True
    sample_every: int = 0  # 0 = the preset's
    batch_size: int = 0  # 0 = the preset's (``start`` lowers it for a data set smaller than one batch)

    def argv(self, runs_root: Path, python: str = sys.executable) -> list[str]:
        """The command line: exactly what a user would run by hand."""
        cmd = [python, str(ROOT / "diffusion.py"), "train", "--preset", self.preset, "--run_name", self.run_name,
               "--data_dir", str(self.data_dir), "--out_dir", str(runs_root), "--precision", self.precision,
               "--resume", "auto" if self.resume else "never"]
        if self.minutes:
            cmd += ["--max_minutes", f"{self.minutes:g}"]
        if self.steps:  # the run's length: its learning-rate schedule ends there too
            cmd += ["--max_steps", str(self.steps)]
        if self.sample_every:
            cmd += ["--sample_every", str(self.sample_every)]
        if self.batch_size:
            cmd += ["--batch_size", str(self.batch_size)]
        return cmd


@dataclass
class RunStatus:
    """A run as its folder shows it. ``state``: none (no such run), running, stopped (a checkpoint to
    resume), finished (reached its steps), failed (the process ended with an error: see ``log_tail``)."""

    run_name: str
    run_dir: Path
    state: str = "none"
    pid: int | None = None
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    train_seconds: float = 0.0
    eta_s: float | None = None
    checkpoints: list[int] = field(default_factory=list)
    grids: list[tuple[int, Path]] = field(default_factory=list)  # (step, sample grid), oldest first
    curve: list[dict[str, float]] = field(default_factory=list)  # metrics.csv rows
    log_tail: str = ""
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def summary(self) -> str:
        """One line for a person."""
        if self.state == "none":
            return f"{self.run_name}: no run yet."
        parts = [f"{self.run_name}: {self.state}", f"step {self.step:,}" + (f"/{self.max_steps:,}" if self.max_steps else "")]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.images_per_s:
            parts.append(f"{self.images_per_s:.1f} images/s")
        if self.running and self.eta_s is not None:
            parts.append(f"ETA {self.eta_s / 60:.1f} min")
        if self.checkpoints:
            parts.append(f"last checkpoint at step {self.checkpoints[-1]:,}")
        if self.state == "failed":
            parts.append(f"exit code {self.exit_code}" if self.exit_code is not None else "the process died")
        return " · ".join(parts)


def check_run_name(name: str) -> str:
    name = (name or "").strip()
    if not RUN_NAME.match(name):
        raise RunError(f"run name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """``metrics.csv`` as numbers (a row being written is skipped)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
            except ValueError:
                continue
    return rows


def log_tail(run_dir: Path, lines: int = 20) -> str:
    """The last lines of the run's log, progress-bar redraws folded into their last state."""
    path = run_dir / TRAIN_LOG
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    folded = [ln.split("\r")[-1] for ln in text.split("\n")]
    return "\n".join([ln for ln in folded if ln.strip()][-lines:])


def lock_holder(run_dir: Path) -> int | None:
    """The pid training ``run_dir`` now, or None. Read from the run lock's file and checked alive
    (never by taking the lock: a check must not make a starting run fail to get it)."""
    try:
        pid = int((run_dir / LOCK_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a reused pid is not our trainer
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return None
        if not any(a.endswith(b"diffusion.py") or a == b"train" for a in args):
            return None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is not training
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


class TrainingRunner:
    """Start, watch and stop training runs under ``runs_root``, one at a time."""

    def __init__(self, runs_root: str | os.PathLike, python: str = sys.executable,
                 env: dict[str, str] | None = None, min_free_bytes: int = MIN_FREE_BYTES):
        self.runs_root = Path(runs_root)
        self.python = python
        self.env = env
        self.min_free_bytes = min_free_bytes
        self._proc: subprocess.Popen | None = None
        self._proc_run: str | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- reading
    def run_dir(self, name: str) -> Path:
        return self.runs_root / check_run_name(name)

    def runs(self) -> list[str]:
        """Run folders under the root (those with a config or a log), newest first."""
        if not self.runs_root.is_dir():
            return []
        found = [p for p in self.runs_root.iterdir()
                 if p.is_dir() and ((p / "train_config.json").exists() or (p / TRAIN_LOG).exists())
                 and RUN_NAME.match(p.name)]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def active(self) -> str | None:
        """The run training now (started here or elsewhere), or None."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self._proc_run
        return next((name for name in self.runs() if lock_holder(self.runs_root / name)), None)

    def status(self, name: str) -> RunStatus:
        run_dir = self.run_dir(name)
        st = RunStatus(name, run_dir)
        if not run_dir.exists():
            return st
        st.curve = read_curve(run_dir)
        if st.curve:
            last = st.curve[-1]
            st.step, st.loss = int(last.get("step", 0)), last.get("loss")
            st.images_per_s, st.train_seconds = last.get("images_per_s"), last.get("elapsed_s", 0.0)
        ckpt_root = run_dir / "checkpoints"
        st.checkpoints = sorted(int(p.name.split("-")[1]) for p in ckpt_root.glob("ckpt-*")
                                if p.is_dir() and p.name.split("-")[1].isdigit()) if ckpt_root.exists() else []
        st.grids = sorted((int(p.stem.split("_")[1]), p) for p in (run_dir / "samples").glob("grid_*.png")
                          if p.stem.split("_")[1].isdigit())
        st.max_steps = self._max_steps(run_dir)
        st.log_tail = log_tail(run_dir)
        exit_code = None
        with self._lock:
            if self._proc is not None and self._proc_run == name:
                exit_code = self._proc.poll()
                if exit_code is None:
                    st.state, st.pid = "running", self._proc.pid
        if st.state != "running":
            pid = lock_holder(run_dir)
            if pid:
                st.state, st.pid = "running", pid
            elif exit_code not in (None, 0, 130, -signal.SIGINT):
                st.state, st.exit_code = "failed", exit_code
            elif _log_says_failed(st.log_tail):  # ended before this server started, or by a kill
                st.state = "failed"
            elif st.checkpoints:
                st.state = "finished" if st.max_steps and st.checkpoints[-1] >= st.max_steps else "stopped"
            else:
                st.state = "stopped" if (run_dir / TRAIN_LOG).exists() else "none"
        if not st.running and st.checkpoints:  # where a resume starts, even if the last row was not written
            st.step = max(st.step, st.checkpoints[-1])
        if st.running and st.images_per_s and st.max_steps:
            batch = self._batch_size(run_dir)
            if batch:
                st.eta_s = max(0, st.max_steps - st.step) * batch / st.images_per_s
        return st

    @staticmethod
    def _train_config(run_dir: Path) -> dict:
        try:
            return json.loads((run_dir / "train_config.json").read_text())
        except (OSError, ValueError):  # not written yet, or being written
            return {}

    def _max_steps(self, run_dir: Path) -> int:
        cfg = self._train_config(run_dir)
        stop_at, max_steps = int(cfg.get("stop_at_step") or 0), int(cfg.get("max_steps") or 0)
        return min(stop_at, max_steps) if stop_at > 0 else max_steps

    def _batch_size(self, run_dir: Path) -> int:
        return int(self._train_config(run_dir).get("batch_size") or 0)

    # ----------------------------------------------------------------- acting
    def start(self, spec: RunSpec) -> RunStatus:
        """Launch ``diffusion.py train`` for ``spec`` in the background; refuse (``RunError``) when a
        run is training, the data is missing, a fresh start would overwrite checkpoints, or the disk is full."""
        name = check_run_name(spec.run_name)
        if spec.preset not in TAB_PRESETS or spec.preset not in PRESETS:
            raise RunError(f"preset {spec.preset!r}: choose one of {', '.join(TAB_PRESETS)}")
        if spec.minutes < 0 or spec.steps < 0 or spec.sample_every < 0:
            raise RunError("minutes, steps and the sample interval must be >= 0")
        if not (Path(spec.data_dir) / "train_images.npy").exists():
            raise RunError(f"{spec.data_dir} is not a preprocessed data folder (no train_images.npy): prepare it first")
        num_images = len(np.load(Path(spec.data_dir) / "train_labels.npy", mmap_mode="r"))
        if num_images < 1:
            raise RunError(f"{spec.data_dir} has no training images")
        if not spec.batch_size and num_images < PRESETS[spec.preset]["batch_size"]:
            spec = replace(spec, batch_size=num_images)  # 16 pictures still train: a batch is all of them
        run_dir = self.run_dir(name)
        has_checkpoints = any((run_dir / "checkpoints").glob("ckpt-*"))
        if not spec.resume and has_checkpoints:
            raise RunError(f"run {name} has checkpoints: resume it, or give a fresh run another name")
        with self._lock:
            busy = self._proc_run if self._proc is not None and self._proc.poll() is None else None
        busy = busy or next((r for r in self.runs() if lock_holder(self.runs_root / r)), None)
        if busy:
            raise RunError(f"run {busy} is training: stop it first (one run at a time)")
        self.runs_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.runs_root).free
        if free < self.min_free_bytes:
            raise RunError(f"only {free / 2**20:.0f} MB free in {self.runs_root}: training needs at least "
                           f"{self.min_free_bytes / 2**20:.0f} MB for its checkpoints")
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        with (run_dir / TRAIN_LOG).open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv(self.runs_root, self.python))}\n"
                      .encode())
            log.flush()
            proc = subprocess.Popen(spec.argv(self.runs_root, self.python), cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        with self._lock:
            self._proc, self._proc_run = proc, name
        return self.status(name)

    def stop(self, name: str | None = None) -> str:
        """Ask the training process to stop: it finishes its step and saves a checkpoint (SIGINT,
        as Ctrl-C). Works on a run this server did not start (the pid in its lock file)."""
        name = name or self.active()
        if not name:
            return "Nothing is training."
        st = self.status(name)
        if not st.running or not st.pid:
            return f"{name} is not training."
        try:
            os.kill(st.pid, signal.SIGINT)
        except ProcessLookupError:
            return f"{name} had already ended."
        return f"Stopping {name}: it saves a checkpoint after this step."

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process this runner started; its exit code (None on timeout or none started)."""
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _log_says_failed(tail: str) -> bool:
    """A run whose last session ended in a traceback or an ``error:`` line (and not in 'finished')."""
    last_session = tail.rsplit("\n=== ", 1)[-1]
    if "finished at step" in last_session:
        return False
    return "Traceback (most recent call last)" in last_session or bool(
        re.search(r"^(error|Error):", last_session, flags=re.M))


def newest_grids(st: RunStatus, n: int = 6) -> Sequence[tuple[int, Path]]:
    """Up to ``n`` sample grids spread over the run (first, last and evenly between): the timeline."""
    grids = st.grids
    if len(grids) <= n:
        return grids
    picks = sorted({round(i * (len(grids) - 1) / (n - 1)) for i in range(n)})
    return [grids[i] for i in picks]
