"""Preprocessing's defaults and its error type (shared by the sources, the pipeline and the CLI)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("preprocess")

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN_SYNSETS = REPO_ROOT / "assets" / "LOC_synset_mapping.txt"
DEFAULT_OUT = "data/preprocessed"
DEFAULT_DOWNLOAD_DIR = "data/downloads"
DEFAULT_SIZE = 64
DEFAULT_DESCRIPTIONS = REPO_ROOT / "assets" / "class_descriptions.tsv"
# 2% of each class is held out by default (10 of Tiny ImageNet's 500 per class;
# a class with a single image keeps it for training).
DEFAULT_VAL_FRACTION = 0.02
# Images above this many pixels are refused as possible decompression bombs.
# 100 MP is far above any ImageNet photo (the largest are ~ 20 MP) and below
# what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
WNID_RE = re.compile(r"^n\d{8}$")

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The MD5 of the official archive (248,100,043 bytes) as published in many
# public Tiny ImageNet loaders (torchvision-style ``md5 = ...`` constants). We
# could not fetch the archive from here to compute its SHA-256, so the default
# verification for the official URL is this MD5; the SHA-256 is always
# computed and printed, and checked when ``--sha256`` is given. (The shared
# ``../shared/data/tiny-imagenet-200.zip`` is a train-only repack with a
# different checksum.)
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
DOWNLOADS = {"tiny-imagenet": {"url": TINY_IMAGENET_URL, "md5": TINY_IMAGENET_MD5, "filename": "tiny-imagenet-200.zip"}}

EmbedFn = Callable[[list[str]], np.ndarray]


class PreprocessError(RuntimeError):
    """A problem with the input or the options, reported without a traceback by the CLI."""
