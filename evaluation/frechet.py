"""Frechet distance between feature sets, its bootstrap noise, and pytorch-fid's Inception
features (from a local weights file) for the standard FID."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.store import load_tensors


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = samples).

    ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2)``, with the
    matrix square roots from symmetric eigendecompositions (stable, no scipy).
    """
    return sum(frechet_parts(a, b))


def frechet_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The Frechet distance's two terms: (mean term ``|mu_a - mu_b|^2``, covariance term, the rest).

    A guidance scale mostly moves the mean term; a covariance term that stays put is the shape of the
    feature cloud (variety within and between classes), which only the network can change.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N, D) feature sets with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    sqrt_sa = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_sa @ sb @ sqrt_sa
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum()), float(np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


class InceptionFeatures:
    """pytorch-fid's FID Inception (2048-d pool features) from a local weights file."""

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        import pytorch_fid.inception as fid_inception  # lazy: only for --inception (a test requirement)

        state = load_tensors(weights_path)  # safetensors or weights_only torch.load: never unpickles code
        original = fid_inception.load_state_dict_from_url
        fid_inception.load_state_dict_from_url = lambda *a, **k: state  # the only place it would download
        try:
            self.net = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).to(device).eval()
        finally:
            fid_inception.load_state_dict_from_url = original
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            out.append(self.net(x)[0].flatten(1).double().cpu().numpy())
        return np.concatenate(out)



def fd_bootstrap_sd(feat: np.ndarray, ref_feat: np.ndarray, rounds: int = 50, seed: int = 0) -> float:
    """How much the FD moves when the generated set is resampled: the noise to judge differences by."""
    rng = np.random.default_rng(seed)
    return float(np.std([frechet_distance(feat[rng.integers(0, len(feat), len(feat))], ref_feat)
                         for _ in range(rounds)]))
