"""The colour-only baseline: how much of "recognised" does colour alone explain?

A linear classifier (multinomial logistic regression) on each image's joint RGB histogram
(``bins`` levels per channel, so 6 -> 216 bins, normalised to sum to 1): it sees which colours an
image has and in what proportion, nothing of where they are. Trained on the real training split,
scored on real held-out photos and on samples, beside the yardsticks: a model whose samples the
yardstick recognises far more often than this baseline draws shapes, not only the right colours."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine.store import load_tensors

COLOUR_WEIGHTS = "colour_baseline.safetensors"
COLOUR_CONFIG = "colour_baseline.json"
MAX_BINS = 16  # a config asking for more (16^3 = 4096 features) is refused before any memory is allocated


def colour_histograms(images: np.ndarray, bins: int = 6, batch: int = 4096) -> torch.Tensor:
    """(N, bins^3) float32: each uint8 NHWC image's joint RGB histogram, as fractions of its pixels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    out = torch.empty(len(images), bins ** 3)
    for i in range(0, len(images), batch):
        q = torch.from_numpy(images[i:i + batch].astype(np.int64) * bins // 256)  # (b, h, w, 3) in [0, bins)
        idx = ((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).flatten(1)  # (b, pixels): each pixel's bin
        offset = torch.arange(len(idx))[:, None] * bins ** 3  # one bincount for the batch: image k's bins at k * bins^3
        counts = torch.bincount((idx + offset).flatten(), minlength=len(idx) * bins ** 3).view(len(idx), -1).float()
        out[i:i + batch] = counts / idx.shape[1]
    return out


class ColourBaseline:
    """Logistic regression on colour histograms (``fit``, ``predict``, ``save``/``load``)."""

    def __init__(self, num_classes: int, bins: int = 6):
        if not (isinstance(bins, int) and 2 <= bins <= MAX_BINS):
            raise ValueError(f"bins must be an integer in [2, {MAX_BINS}], got {bins!r}")
        if not (isinstance(num_classes, int) and 2 <= num_classes <= 100_000):
            raise ValueError(f"num_classes must be an integer in [2, 100000], got {num_classes!r}")
        self.num_classes, self.bins = num_classes, bins
        self.weight = torch.zeros(num_classes, bins ** 3)
        self.bias = torch.zeros(num_classes)
        self.mean = torch.zeros(bins ** 3)
        self.std = torch.ones(bins ** 3)

    def _features(self, images: np.ndarray) -> torch.Tensor:
        return (colour_histograms(images, self.bins) - self.mean) / self.std

    def fit(self, images: np.ndarray, labels: np.ndarray, *, epochs: int = 30, lr: float = 0.05,
            weight_decay: float = 1e-4, seed: int = 0) -> "ColourBaseline":
        """Full-batch Adam on the standardised histograms (a convex problem: seconds on a CPU)."""
        h = colour_histograms(images, self.bins)
        self.mean, self.std = h.mean(0), h.std(0).clamp_min(1e-6)
        x, y = (h - self.mean) / self.std, torch.as_tensor(np.asarray(labels), dtype=torch.long)
        torch.manual_seed(seed)
        w = torch.zeros_like(self.weight, requires_grad=True)
        b = torch.zeros_like(self.bias, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr)
        for _ in range(epochs * 10):
            loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def logits(self, images: np.ndarray) -> np.ndarray:
        return (self._features(images) @ self.weight.T + self.bias).numpy()

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float((self.logits(images).argmax(1) == np.asarray(labels)).mean())

    def save(self, folder: Path, meta: dict[str, Any] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std},
                  str(folder / COLOUR_WEIGHTS))
        (folder / COLOUR_CONFIG).write_text(json.dumps({"num_classes": self.num_classes, "bins": self.bins,
                                                        **(meta or {})}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "ColourBaseline":
        meta = json.loads((folder / COLOUR_CONFIG).read_text())
        model = cls(meta.get("num_classes"), meta.get("bins"))
        t = load_tensors(folder / COLOUR_WEIGHTS)
        expected = {"weight": model.weight.shape, "bias": model.bias.shape, "mean": model.mean.shape,
                    "std": model.std.shape}
        if {k: tuple(v.shape) for k, v in t.items()} != {k: tuple(s) for k, s in expected.items()}:
            raise ValueError(f"{folder / COLOUR_WEIGHTS}: tensors do not match {folder / COLOUR_CONFIG}")
        model.weight, model.bias, model.mean, model.std = t["weight"], t["bias"], t["mean"], t["std"]
        return model
