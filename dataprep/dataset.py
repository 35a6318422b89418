"""The Dataset over a folder written by ``preprocess.py``; used by training and the app.

    ds = PreprocessedDataset("data/preprocessed", split="train", flip=True)
    image, label = ds[0]   # float32 (3, H, W) in [-1, 1], int

The images stay on disk (a read-only memory map, opened lazily in each
process), so the Dataset is cheap to pickle into DataLoader workers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val")


def _hint(root: Path) -> str:
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        return (
            f" An unfinished run left {partial}: re-run the same preprocess.py command to resume it, e.g. "
            f"python preprocess.py --src <same source> --out {root}"
        )
    return (
        " Create it with: python preprocess.py --src <ImageNet folder, Tiny ImageNet zip or class folders> "
        f"--out {root}  (e.g. --src ../shared/data/tiny-imagenet-200.zip)"
    )


def _require(root: Path, name: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"preprocessed data folder {root} does not exist.{_hint(root)}")
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {root} is not a complete preprocessed folder.{_hint(root)}")
    return path


def load_classes(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The class list of a preprocessed folder: dicts with index, wnid, name, names, prompt, count."""
    root = Path(root)
    doc = json.loads(_require(root, "classes.json").read_text(encoding="utf-8"))
    classes = doc["classes"] if isinstance(doc, dict) else doc
    return list(classes)


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a preprocessed folder."""
    root = Path(root)
    return json.loads(_require(root, "manifest.json").read_text(encoding="utf-8"))


class PreprocessedDataset(Dataset):
    """``(image, label)`` pairs from ``<root>/<split>_images.npy`` and ``<split>_labels.npy``.

    ``image`` is a float32 tensor ``(3, H, W)`` in ``[-1, 1]``; ``label`` an int.
    ``flip=True`` mirrors each image left-right with probability 1/2, drawn
    from torch's RNG (so ``torch.manual_seed`` and DataLoader worker seeding
    make it reproducible).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", flip: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.flip = bool(flip)
        self._images_path = _require(self.root, f"{split}_images.npy")
        labels_path = _require(self.root, f"{split}_labels.npy")
        self.classes = load_classes(self.root)
        self.manifest = load_manifest(self.root)
        self._labels_path = labels_path
        self._lazy: dict[str, Any] = {}
        self._images: np.ndarray | None = None
        self._pid = -1
        images = self.images
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
            raise ValueError(f"{self._images_path}: expected uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
        if len(images) != len(self.labels):
            raise ValueError(
                f"{self.root}: {len(images)} images but {len(self.labels)} labels in the {split} split; "
                "re-run preprocess.py with --overwrite"
            )
        self.image_size = int(images.shape[1])
        self.num_classes = len(self.classes)
        self._len = len(self.labels)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"{labels_path}: labels outside [0, {self.num_classes})")
        _require(self.root, "class_embeddings.npy")
        if self.class_embeddings.shape[0] != self.num_classes:
            raise ValueError(
                f"class_embeddings.npy has {self.class_embeddings.shape[0]} rows for {self.num_classes} classes"
            )

    # Labels and embeddings load on first use and are not pickled, so sending
    # the Dataset to DataLoader workers stays cheap even for ImageNet-1k.
    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)`` class indices."""
        if "labels" not in self._lazy:
            self._lazy["labels"] = np.load(self._labels_path)
        return self._lazy["labels"]

    @property
    def class_embeddings(self) -> torch.Tensor:
        """float32 ``(C, 384)``: the text embedding of each class prompt."""
        if "class_embeddings" not in self._lazy:
            emb = np.load(self.root / "class_embeddings.npy")
            self._lazy["class_embeddings"] = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        return self._lazy["class_embeddings"]

    @property
    def template_embeddings(self) -> torch.Tensor | None:
        """float32 ``(C, T, 384)``: each class under every prompt template, or None if the file is missing."""
        if "template_embeddings" not in self._lazy:
            path = self.root / "template_embeddings.npy"
            self._lazy["template_embeddings"] = (
                torch.from_numpy(np.ascontiguousarray(np.load(path), dtype=np.float32)) if path.is_file() else None
            )
        return self._lazy["template_embeddings"]

    @property
    def images(self) -> np.ndarray:
        """The uint8 ``(N, H, W, 3)`` array, memory-mapped read-only (once per process)."""
        if self._images is None or self._pid != os.getpid():
            self._images = np.load(self._images_path, mmap_mode="r")
            self._pid = os.getpid()
        return self._images

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def prompts(self) -> list[str]:
        return [c.get("prompt", c["name"]) for c in self.classes]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        arr = np.array(self.images[index], dtype=np.uint8, copy=True)  # (H, W, 3), off the memmap
        img = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, int(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # reopened lazily in the worker process
        state["_pid"] = -1
        state["_lazy"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"PreprocessedDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"size={self.image_size}, classes={self.num_classes}, flip={self.flip})"
        )
