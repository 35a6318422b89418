"""Where results go: one folder per request under ``--out``, PNGs that carry
their recipe, GIFs and strips, and pruning of old folders (``--keep-runs``)."""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import drawing
from engine.recipe import save_png

GIF_MIN_SIDE = 384  # the denoising GIF's frames are scaled up (nearest) to at least this: 32 px is a smear otherwise
STRIP_MIN_SIDE = 128


class Exporter:
    def __init__(self, out: str | Path, keep_runs: int = 200):
        self.out = Path(out)
        self.keep_runs = keep_runs

    def new_folder(self) -> Path:
        folder = self.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def contains(self, path: Any) -> bool:
        """Whether ``path`` is a file this app wrote (inside ``--out``): API callers may send any path."""
        try:
            return Path(str(path)).resolve().is_relative_to(self.out.resolve())
        except (OSError, RuntimeError, ValueError):
            return False

    def save_images(self, folder: Path, images: Sequence, prompts: Sequence[str], recipes: Sequence[dict],
                    names: Sequence[str]) -> list[str]:
        """One PNG per image, each with its own recipe in the ``parameters`` chunk."""

        return [str(save_png(folder / name, img, prompt, recipe))
                for img, prompt, recipe, name in zip(images, prompts, recipes, names)]

    def denoising_gif(self, folder: Path, frames, timesteps, nrow: int, name: str = "denoising.gif") -> str:
        return str(drawing.denoising_gif(frames, timesteps, folder / name, nrow=nrow, min_side=GIF_MIN_SIDE))

    def denoising_strip(self, folder: Path, frames, timesteps, name: str = "steps.png") -> str:
        path = folder / name
        drawing.denoising_strip(frames, timesteps, path=path, min_side=STRIP_MIN_SIDE)
        return str(path)

    def prune(self) -> None:
        try:
            runs = sorted((p for p in self.out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in runs[: max(0, len(runs) - self.keep_runs)]:
            shutil.rmtree(old, ignore_errors=True)
