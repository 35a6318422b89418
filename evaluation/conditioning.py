"""Does a model listen to its condition? The conditioning check on images drawn class-major from
shared seeds, the same check on real photos (the reference), and the binomial tail it rests on."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

CONDITIONING_TARGET = 0.95  # share of class pairs apart that says a model listens to its condition


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def conditioning_check(features: np.ndarray, pred: np.ndarray, num_classes: int, per_class: int,
                       alpha: float = 0.05, chance: float | None = None) -> dict[str, Any]:
    """Does the model listen to its condition? ``features``/``pred``: the yardstick's features and
    predicted classes of images laid out class-major, ``per_class`` per class, where the j-th
    image of every class starts from the same seed (``generate_per_class``).

    * ``pairs_apart``: the share of class pairs (a, b) whose images from one seed are farther
      apart (mean over seeds) than a typical pair of seeds within a class (the mean of a's and
      b's mean within-class distance). "Every class is the same picture" scores near 0; a model
      that listens scores near 1 (target: at least 0.95).
    * ``distance_ratio``: median distance between two classes from one seed over the median
      distance between two seeds of one class.
    * ``classes_above_chance``: the share of classes whose images the yardstick puts in their own
      class more often than chance (default 1 / num_classes; 1 / the yardstick's classes when it
      knows more classes than the model) can explain, one-sided binomial at ``alpha``.
    """
    f = np.asarray(features, np.float64)
    if per_class < 2 or f.shape[0] != num_classes * per_class or num_classes < 2:
        raise ValueError(f"the conditioning check needs >= 2 classes x >= 2 seeds laid out class-major, "
                         f"got {f.shape[0]} images for {num_classes} x {per_class}")
    grid = f.reshape(num_classes, per_class, -1)  # [class, seed, feature]

    def pairwise(x: np.ndarray) -> np.ndarray:  # (..., n, d) -> (..., n, n) Euclidean distances
        sq = (x ** 2).sum(-1)
        return np.sqrt(np.clip(sq[..., :, None] + sq[..., None, :] - 2 * x @ np.swapaxes(x, -1, -2), 0, None))

    within = pairwise(grid)  # [class, seed, seed]
    iu_s = np.triu_indices(per_class, 1)
    within_pairs = within[:, iu_s[0], iu_s[1]]  # [class, seed pairs]
    typical_within = within_pairs.mean(1)  # [class]
    between = pairwise(np.swapaxes(grid, 0, 1))  # [seed, class, class]
    iu_c = np.triu_indices(num_classes, 1)
    between_pairs = between[:, iu_c[0], iu_c[1]]  # [seed, class pairs]
    between_mean = between_pairs.mean(0)  # [class pairs]: the two classes' distance, averaged over seeds
    reference = (typical_within[iu_c[0]] + typical_within[iu_c[1]]) / 2  # a typical pair of seeds of either class
    apart = between_mean > reference
    hits = (np.asarray(pred).reshape(num_classes, per_class) == np.arange(num_classes)[:, None]).sum(1)
    chance = 1.0 / num_classes if chance is None else chance
    significant = [binomial_tail(int(h), per_class, chance) < alpha for h in hits]
    hits_needed = next((k for k in range(per_class + 1) if binomial_tail(k, per_class, chance) < alpha), None)
    worst = np.argsort(between_mean / reference)[:5]
    return {
        "seeds": per_class, "class_pairs": int(len(apart)),
        "pairs_apart": float(apart.mean()),
        "distance_ratio": float(np.median(between_pairs) / max(np.median(within_pairs), 1e-12)),
        "median_between_classes": float(np.median(between_pairs)),
        "median_within_class": float(np.median(within_pairs)),
        "classes_above_chance": float(np.mean(significant)),
        "hits_needed": hits_needed,
        "closest_pairs": [(int(iu_c[0][i]), int(iu_c[1][i])) for i in worst],
    }



def real_conditioning(labels: np.ndarray, feats: np.ndarray, pred: np.ndarray, num_classes: int,
                      per_class: int, chance: float | None = None) -> dict[str, Any] | None:
    """The conditioning check on real held-out photos (the first ``per_class`` of each class, capped
    by the smallest class): what a model that draws each class as well as real photos would score."""
    labels = np.asarray(labels)
    n = min(per_class, int(np.bincount(labels, minlength=num_classes).min()))
    if n < 2:
        return None
    idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(num_classes)])
    return conditioning_check(feats[idx], pred[idx], num_classes, n, chance=chance)


def named_pairs(check: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The conditioning check with its closest class pairs written as names."""
    return {**check, "closest_pairs": [f"{names[a]} / {names[b]}" for a, b in check["closest_pairs"]]}
