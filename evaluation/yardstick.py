"""The yardstick around the classifier: which of its classes are the model's, the recipe it is
fitted by (scored on held-out photos after every epoch), the real photos of the model's classes,
and the check that it can tell real photos from degraded ones."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.classifier import (TRAIN_STATE, Classifier, SmallResNet, predict, save_classifier, top_k_accuracy,
                                   train_classifier)
from evaluation.frechet import frechet_distance

log = logging.getLogger("evaluate")  # the tool's name in its log lines, as before the package


@dataclass
class YardstickClasses:
    """Where the model's classes sit among the yardstick's (a 200-class yardstick scores a
    10-class model over all 200): ``of_model[i]`` is the yardstick's index of model class i."""
    names: list[str]
    of_model: np.ndarray

    @classmethod
    def identity(cls, names: Sequence[str]) -> "YardstickClasses":
        return cls(list(names), np.arange(len(names)))

    @classmethod
    def match(cls, model_names: Sequence[str], names: Sequence[str], what: str) -> "YardstickClasses":
        return cls(list(names), class_positions(model_names, names, what))

    def to_model(self, pred: np.ndarray) -> np.ndarray:
        """The yardstick's predictions as model class indices (-1: a class the model does not have)."""
        inverse = np.full(len(self.names), -1)
        inverse[self.of_model] = np.arange(len(self.of_model))
        return inverse[np.asarray(pred)]


def class_positions(names: Sequence[str], among: Sequence[str], what: str) -> np.ndarray:
    """The index in ``among`` of each of ``names`` (case-insensitive), or ValueError naming the missing."""
    lookup = {n.lower(): i for i, n in enumerate(among)}
    missing = [n for n in names if n.lower() not in lookup]
    if missing:
        raise ValueError(f"{what} does not know the model's classes {', '.join(missing[:5])}"
                         + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    return np.array([lookup[n.lower()] for n in names])


def class_balanced_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``per_class`` images of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


@dataclass
class YardstickRecipe:
    """How the yardstick classifier is trained (``evaluate.py --classifier-only`` flags)."""
    epochs: int = 15
    width: int = 32
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    precision: str = "fp32"
    arch: str = "resnet"  # evaluation.classifier.CLASSIFIER_ARCHS
    augmentation: str = "flip-shift"  # evaluation.classifier.AUGMENTATIONS
    mirror_average: bool = False  # score each image and its mirror, pooling both (PooledClassifier.mirror_average)


def fit_yardstick(train: Any, val: Any, folder: Path, *, recipe: YardstickRecipe | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", per_class: int = 0) -> dict[str, Any]:
    """Train the yardstick classifier on a preprocessed train split (``per_class`` > 0: a
    class-balanced subset of that many images per class, when CPU time is short), score it on
    the held-out split after every epoch, and save it (with those scores) in ``folder``;
    returns its metadata."""
    recipe = recipe or YardstickRecipe()
    images, labels = np.asarray(train.images), np.asarray(train.labels)
    if per_class > 0:
        idx = class_balanced_subset(labels, per_class, seed)
        images, labels = images[idx], labels[idx]
    log.info("training the yardstick classifier on %d images: %s", len(labels), recipe)
    val_images, val_labels = np.asarray(val.images), np.asarray(val.labels)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / TRAIN_STATE
    curve: list[dict[str, float]] = []
    if state_path.with_suffix(".json").exists():  # an interrupted run: keep its curve, resume its clock
        curve = json.loads(state_path.with_suffix(".json").read_text()).get("curve", [])
    t0 = time.perf_counter() - (curve[-1]["seconds"] if curve else 0.0)

    def score(epoch: int, model: Classifier) -> None:
        logits, _ = predict(model, val_images)
        curve.append({"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1),
                      "val_accuracy": float((logits.argmax(1) == val_labels).mean()),
                      "val_top5": top_k_accuracy(logits, val_labels, 5)})
        log.info("epoch %d: held-out top-1 %.1f%%, top-5 %.1f%% (%.0f s)", epoch, 100 * curve[-1]["val_accuracy"],
                 100 * curve[-1]["val_top5"], curve[-1]["seconds"])

    clf = train_classifier(images, labels, train.num_classes, epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, width=recipe.width, blocks=recipe.blocks, weight_decay=recipe.weight_decay,
                           precision=recipe.precision, device=device, seed=seed, on_epoch=score,
                           arch=recipe.arch, augmentation=recipe.augmentation, state_path=state_path,
                           state_extra=lambda: {"curve": curve})
    final = curve[-1]
    mirror: dict[str, Any] = {}
    if recipe.mirror_average:  # the curve was scored on one view; the saved figures are the two-view ones
        clf.mirror_average = True
        logits, _ = predict(clf, val_images)
        mirror = {"mirror_average": True, "val_accuracy_one_view": final["val_accuracy"],
                  "val_top5_one_view": final["val_top5"]}
        final = {**final, "val_accuracy": float((logits.argmax(1) == val_labels).mean()),
                 "val_top5": top_k_accuracy(logits, val_labels, 5)}
        log.info("with its mirror image: held-out top-1 %.1f%%, top-5 %.1f%%", 100 * final["val_accuracy"],
                 100 * final["val_top5"])
    meta = {**mirror, "data_dir": str(train.root), "epochs": recipe.epochs, "train_images": int(len(labels)),
            "val_accuracy": final["val_accuracy"], "val_top5": final["val_top5"], "val_images": int(len(val_labels)),
            "train_seconds": final["seconds"], "recipe": asdict(recipe), "curve": curve,
            "image_size": train.image_size, "classes": [c["name"] for c in train.classes]}
    save_classifier(clf, folder, meta)
    for suffix in (".safetensors", ".json"):  # finished: the resume state has served its purpose
        state_path.with_suffix(suffix).unlink(missing_ok=True)
    return {**clf.config, **meta}


def model_subset(split: Any, in_data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a preprocessed split restricted to the model's classes (``in_data[i]``:
    the split's index of model class i), labelled with the model's indices."""
    labels = np.asarray(split.labels)
    if np.array_equal(in_data, np.arange(split.num_classes)):
        return np.asarray(split.images), labels
    to_model = np.full(split.num_classes, -1)
    to_model[in_data] = np.arange(len(in_data))
    keep = np.flatnonzero(to_model[labels] >= 0)
    return np.asarray(split.images[keep]), to_model[labels[keep]]


def degrade(images: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """Real photos made worse in known ways, to see whether a yardstick can tell: ``down<N>`` (bicubic
    down to N px and back: blur; ``down16``, ``down8``, the milder ``down24``), ``noise`` / ``noise05``
    (Gaussian, sd 0.2 / 0.05 of the [-1, 1] range), ``desat`` (colour saturation halved: washed out),
    ``blob`` (every pixel the image's mean colour)."""
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float()
    size = x.shape[-1]
    if how.startswith("down"):
        small = F.interpolate(x, size=int(how[4:]), mode="bicubic", antialias=True, align_corners=False)
        x = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
    elif how in ("noise", "noise05"):
        sd = 0.2 if how == "noise" else 0.05
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sd * 127.5
    elif how == "desat":
        x = (x + x.mean(dim=1, keepdim=True)) / 2
    elif how == "blob":
        x = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:
        raise ValueError(f"unknown degradation {how!r}")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


DEGRADATIONS = ("down16", "down8", "noise", "blob")


def yardstick_check(clf: SmallResNet, train: Any, val: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Can the yardstick tell good from bad? Top-1/top-5 and FD to the held-out photos of: an equal
    number of real training photos (the floor), and the held-out photos degraded in each of
    ``DEGRADATIONS`` (FD against a second real set, so the degraded images are not their own reference)."""
    val_images, val_labels = np.asarray(val.images), np.asarray(val.labels)
    train_labels = np.asarray(train.labels)
    per_class = max(1, len(val_labels) // max(1, train.num_classes))
    ref = class_balanced_subset(train_labels, per_class, seed)
    _, ref_feat = predict(clf, np.asarray(train.images)[ref])
    rows = []
    for name, images in [("real held-out photos", val_images)] + [(f"held-out, {d}", degrade(val_images, d, seed))
                                                                   for d in DEGRADATIONS]:
        logits, feat = predict(clf, images)
        rows.append({"images": name, "top1": float((logits.argmax(1) == val_labels).mean()),
                     "top5": top_k_accuracy(logits, val_labels, 5), "fd": frechet_distance(feat, ref_feat)})
    return rows

