#!/usr/bin/env python3
"""The Gradio app: generate images with a stored model, watch them denoise,
and look at the forward (noising) process.

    python web.py                          # default_model on http://127.0.0.1:7860
    python web.py --model my_model --port 8000
    python web.py --host 0.0.0.0 --auth alice:secret   # expose on the LAN, with a login

The model and the text encoder load once at start-up. Sampling runs in a
worker thread and streams previews from a generator; Stop cancels at the next
step. Every PNG it writes carries its recipe (A1111-style ``parameters``
chunk), so a downloaded image can be made again exactly. No diffusion math
lives here: it calls ``diffusion.generate_images``, ``plot_func`` and
``recipe``.

Input checks are small pure functions (``clean_prompt``, ``validate_steps``,
``check_budget``, ``check_upload`` ...) that raise ``InputError``; the
handlers turn that into a ``gr.Error`` the user sees, never a stack trace.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import math
import os
import queue
import random
import shutil
import sys
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

log = logging.getLogger("web")

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "default_model"
DEFAULT_OUT = ROOT / "output_ImageNet" / "web"

# --------------------------------------------------------------------------- limits and defaults
MAX_PROMPT_CHARS = 500
MAX_IMAGES = 16
MAX_SEED = 2**32 - 1
GUIDANCE_RANGE = (0.0, 20.0)
# Memory: images x resolution^2 per batch (16 images at 64 px). Work: that x steps.
DEFAULT_MAX_BATCH_PIXELS = 16 * 64 * 64
DEFAULT_MAX_WORK = 8 * 32 * 32 * 1000  # e.g. 8 DDPM images at 32 px with 1000 steps
DEFAULT_MAX_UPLOAD_MB = 10
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size; bigger is refused before decoding
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORWARD_SIZE = 128  # uploads are centre-cropped and resized to this for the forward strip
MAX_FORWARD_TIMESTEPS = 12

# UI label -> (generate_images name, (min steps, max steps, default steps))
SAMPLER_CHOICES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "DPM-Solver++": ("dpm++", (5, 50, 20)),
    "DDIM": ("ddim", (5, 250, 50)),
    # The DDPM paper samples all 1000 steps; on a CPU that is a long first
    # wait, so the default is 250 (up to 1000 allowed).
    "DDPM": ("ddpm", (10, 1000, 250)),
}
FALLBACK_DEFAULTS = {"sampler": "dpm++", "steps": 20, "guidance_scale": 3.0}
SCHEDULES = ("linear", "cosine")

EXAMPLE_PROMPTS = ("a photo of a goldfish", "a close-up photo of a ladybug", "a yellow school bus on a road")


class InputError(ValueError):
    """Bad user input; the message is meant for the user."""


# --------------------------------------------------------------------------- pure input checks
def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what} is required and must be a number.")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {str(value)[:40]!r}.") from None
    if not math.isfinite(x):
        raise InputError(f"{what} must be a finite number, got {x}.")
    return x


def _whole(value: Any, what: str) -> int:
    x = _number(value, what)
    if abs(x - round(x)) > 1e-9:
        raise InputError(f"{what} must be a whole number, got {x:g}.")
    return int(round(x))


def clean_prompt(text: Any, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Normalise a prompt: control characters become spaces, whitespace is
    collapsed. Empty (or whitespace-only) and over-long prompts are errors."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError("The prompt must be text.")
    if len(text) > 4 * max_chars:  # don't even normalise a huge paste
        raise InputError(f"The prompt is too long ({len(text):,} characters; the limit is {max_chars}).")
    chars = [" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text]
    out = " ".join("".join(chars).split())
    if not out:
        raise InputError("Enter a prompt (or pick a class): the prompt is empty.")
    if len(out) > max_chars:
        raise InputError(f"The prompt is too long ({len(out):,} characters; the limit is {max_chars}).")
    return out


def parse_sampler(value: Any) -> str:
    """A UI label ("DPM-Solver++") or an internal name ("dpm++") -> the UI label."""
    if isinstance(value, str):
        v = value.strip()
        for label, (name, _) in SAMPLER_CHOICES.items():
            if v.lower() in (label.lower(), name):
                return label
    raise InputError(f"Unknown sampler {str(value)[:40]!r}; choose one of {', '.join(SAMPLER_CHOICES)}.")


def steps_range(sampler: str, num_train_timesteps: int = 1000) -> tuple[int, int, int]:
    """(min, max, default) steps for a sampler label, within the model's T."""
    lo, hi, default = SAMPLER_CHOICES[parse_sampler(sampler)][1]
    hi = min(hi, num_train_timesteps)
    lo = min(lo, hi)
    return lo, hi, max(lo, min(default, hi))


def validate_steps(value: Any, sampler: str, num_train_timesteps: int = 1000) -> int:
    steps = _whole(value, "Steps")
    lo, hi, _ = steps_range(sampler, num_train_timesteps)
    if not lo <= steps <= hi:
        raise InputError(f"Steps must be between {lo} and {hi} for {parse_sampler(sampler)}, got {steps}.")
    return steps


def validate_guidance(value: Any) -> float:
    g = _number(value, "Guidance scale")
    lo, hi = GUIDANCE_RANGE
    if not lo <= g <= hi:
        raise InputError(f"Guidance scale must be between {lo:g} and {hi:g}, got {g:g}.")
    return g


def validate_seed(value: Any) -> int | None:
    """A seed in [0, 2^32 - 1], or None (= pick one at random) for empty / -1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    seed = _whole(value, "Seed")
    if seed == -1:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"Seed must be between 0 and {MAX_SEED} (or -1 for random), got {seed}.")
    return seed


def max_images_for(image_size: int, max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> int:
    """How many images of this size one request may make (memory cap, at most 16)."""
    return max(1, min(MAX_IMAGES, max_batch_pixels // max(1, image_size * image_size)))


def validate_num_images(value: Any, image_size: int, max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> int:
    n = _whole(value, "Number of images")
    cap = max_images_for(image_size, max_batch_pixels)
    if not 1 <= n <= cap:
        why = "" if cap == MAX_IMAGES else f" for {image_size} px images on this server"
        raise InputError(f"Number of images must be between 1 and {cap}{why}, got {n}.")
    return n


def check_budget(num_images: int, image_size: int, steps: int, max_work: int = DEFAULT_MAX_WORK) -> int:
    """Refuse requests whose images x pixels x steps exceed the server's cap."""
    work = num_images * image_size * image_size * steps
    if work > max_work:
        fit = max(1, max_work // (image_size * image_size * steps))
        raise InputError(
            f"This request is too large for this server: {num_images} images x {image_size}x{image_size} px x "
            f"{steps} steps = {work / 1e6:.1f} M pixel-steps (limit {max_work / 1e6:.1f} M). "
            f"Use at most {fit} images with {steps} steps, or fewer steps."
        )
    return work


def parse_timesteps(text: Any, num_train_timesteps: int = 1000, max_count: int = MAX_FORWARD_TIMESTEPS) -> list[int]:
    """'0, 100, 250' -> [0, 100, 250], each in [0, T)."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise InputError("Give at least one timestep, e.g. 0, 250, 500, 999.")
    if len(parts) > max_count:
        raise InputError(f"At most {max_count} timesteps, got {len(parts)}.")
    out = []
    for p in parts:
        t = _whole(p, "Each timestep")
        if not 0 <= t < num_train_timesteps:
            raise InputError(f"Timesteps must be between 0 and {num_train_timesteps - 1}, got {t}.")
        out.append(t)
    return out


def parse_auth(text: str) -> tuple[str, str]:
    """'user:pass' -> ('user', 'pass'); the password may contain ':'."""
    user, sep, password = str(text).partition(":")
    if not sep or not user.strip() or not password:
        raise argparse.ArgumentTypeError("--auth must look like user:password (both non-empty)")
    return user.strip(), password


def is_loopback(host: str) -> bool:
    h = str(host).strip().strip("[]").lower()
    if h in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable by others


def exposure_warning(host: str, share: bool, auth: Sequence[Any] | None) -> str | None:
    """The warning to log when the app is reachable by others without a login."""
    if auth:
        return None
    if share:
        return ("--share publishes this app on a public gradio.live URL without a login: anyone with the link can "
                "use it. Add --auth user:password.")
    if not is_loopback(host):
        return (f"Listening on {host}, reachable from other machines, without a login. "
                "Add --auth user:password (or use the default --host 127.0.0.1).")
    return None


def check_upload(path: Any, max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20, max_pixels: int = MAX_UPLOAD_PIXELS,
                 upload_dir: str | Path | None = None):
    """Open an uploaded file as an RGB PIL image, refusing non-images, huge
    files and decompression bombs (the size is checked before decoding).

    With ``upload_dir``, only files inside it are opened: an API caller can
    send any ``{"path": ...}`` (gradio checks only payloads that carry its
    ``meta`` tag), and that must not read the server's own files."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if isinstance(path, dict):  # a gradio FileData payload
        path = path.get("path")
    if not path:
        raise InputError("Upload an image first (or pick one from the model's data).")
    p = Path(str(path))
    if upload_dir is not None:
        try:
            inside = p.resolve().is_relative_to(Path(upload_dir).resolve())
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside:
            raise InputError("Upload the image to this app; a file path on the server is not accepted.")
    try:
        size = p.stat().st_size
    except OSError:
        raise InputError("The uploaded file could not be read; upload it again.") from None
    if size > max_bytes:
        raise InputError(f"The file is too large ({size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
            fmt = im.format
            w, h = im.size
            if fmt not in UPLOAD_FORMATS:
                raise InputError(f"Unsupported image type {fmt}; upload a PNG, JPEG, WebP, GIF, BMP or TIFF.")
            if w < 1 or h < 1 or w * h > max_pixels:
                raise InputError(f"The image is {w}x{h} px; the limit is {max_pixels / 1e6:.0f} megapixels.")
            im.seek(0)
            rgb = im.convert("RGB")
            im.close()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("The image is too large to decode (it looks like a decompression bomb).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise InputError("That file is not an image this app can read; upload a PNG, JPEG or WebP.") from None
    return rgb


def square_resize(image, size: int = FORWARD_SIZE):
    """Centre-crop a PIL image to a square and resize it (Lanczos)."""
    from PIL import Image

    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((size, size), Image.LANCZOS)


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    sampler_label: str
    sampler: str
    steps: int
    guidance: float
    seed: int | None
    num_images: int


def validate_request(prompt: Any, sampler: Any, steps: Any, guidance: Any, seed: Any, num_images: Any, *,
                     image_size: int, num_train_timesteps: int = 1000,
                     max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                     max_work: int = DEFAULT_MAX_WORK) -> GenerateRequest:
    """All the generate tab's checks in one place (raises InputError)."""
    text = clean_prompt(prompt)
    label = parse_sampler(sampler)
    n_steps = validate_steps(steps, label, num_train_timesteps)
    g = validate_guidance(guidance)
    s = validate_seed(seed)
    n = validate_num_images(num_images, image_size, max_batch_pixels)
    check_budget(n, image_size, n_steps, max_work)
    return GenerateRequest(text, label, SAMPLER_CHOICES[label][0], n_steps, g, s, n)


def model_defaults(sampler_defaults: dict[str, Any] | None, num_train_timesteps: int = 1000) -> dict[str, Any]:
    """UI defaults from a model's ``sampler_defaults`` (sampler label, steps, guidance)."""
    d = dict(FALLBACK_DEFAULTS)
    d.update({k: v for k, v in (sampler_defaults or {}).items() if v is not None})
    try:
        label = parse_sampler(d.get("sampler"))
    except InputError:
        label = parse_sampler(FALLBACK_DEFAULTS["sampler"])
    lo, hi, default_steps = steps_range(label, num_train_timesteps)
    try:
        steps = validate_steps(d.get("steps", default_steps), label, num_train_timesteps)
    except InputError:
        steps = default_steps
    try:
        guidance = validate_guidance(d.get("guidance_scale", FALLBACK_DEFAULTS["guidance_scale"]))
    except InputError:
        guidance = FALLBACK_DEFAULTS["guidance_scale"]
    return {"sampler": label, "steps": steps, "guidance_scale": guidance}


def default_timesteps(num_train_timesteps: int) -> str:
    T = num_train_timesteps
    ts = sorted({0, *(int(round(f * (T - 1))) for f in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0))})
    return ", ".join(map(str, ts))


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="web.py", description="Gradio app: generate images, watch them denoise, explore the forward process.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"store name or model folder to load first (default: {DEFAULT_MODEL}, else the first model "
                        "in the store)")
    p.add_argument("--store", default=None,
                   help="model store directory (default: $DIFFUSION_MODEL_STORE or model_store/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link (needs internet)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--auth", type=parse_auth, action="append", metavar="USER:PASS",
                   help="require this login for the page and every API endpoint (repeatable)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="sampling jobs that may run at once on the device (default 1)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="jobs that may wait in the queue; when full, new requests get an error (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--max-batch-pixels", type=int, default=DEFAULT_MAX_BATCH_PIXELS,
                   help="memory cap: images x height x width per request (default 16 images at 64 px)")
    p.add_argument("--max-work", type=int, default=DEFAULT_MAX_WORK,
                   help="work cap: images x height x width x steps per request "
                        f"(default {DEFAULT_MAX_WORK:,} = 8 images at 32 px x 1000 steps)")
    p.add_argument("--time-limit", type=int, default=900, help="seconds a job may run before it is stopped")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: half the cores, which keeps the page responsive)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"where exported PNGs/GIFs go (default {DEFAULT_OUT})")
    p.add_argument("--keep-runs", type=int, default=200, help="keep the newest N request folders in --out")
    p.add_argument("--data", default=None, help="preprocessed data folder for the Forward tab (default: the "
                                                "model's training data, if present)")
    p.add_argument("--max-models", type=int, default=3, help="models kept loaded at once (LRU)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        p.error("--port must be in 1..65535")
    for name in ("concurrency", "max_queue", "max_batch_pixels", "max_work", "time_limit", "keep_runs", "max_models"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if not args.max_upload_mb > 0:
        p.error("--max-upload-mb must be positive")


# --------------------------------------------------------------------------- models
class ModelManager:
    """Loads models by store name or folder once and keeps the last few (LRU)."""

    def __init__(self, store: str | None, device: str, first: str, max_models: int = 3,
                 data_override: str | None = None):
        import model_store as ms

        self.ms = ms
        self.store, self.device, self.max_models = store, device, max_models
        self.data_override = data_override
        self._lock = threading.Lock()
        self._models: "OrderedDict[str, Any]" = OrderedDict()
        self._datasets: dict[str, Any] = {}
        self.extra: dict[str, str] = {}  # choice value -> folder, for --model given as a path
        self.first = self.resolve_choice(first, allow_path=True)

    def resolve_choice(self, choice: str, allow_path: bool = False) -> str:
        s = str(choice or "").strip()
        if s in self.extra or s in self.ms.list_models(self.store):
            return s
        if allow_path and (os.sep in s or s.startswith(".")):
            folder = str(Path(s).resolve())
            self.ms.resolve_model_path(folder)  # raises CheckpointError if absent
            self.extra[folder] = folder
            return folder
        raise InputError(f"Unknown model {s[:80]!r}; available: {', '.join(self.choices_values()) or 'none'}.")

    def public_message(self, e: BaseException) -> str:
        """An error for the page: the server's store path left out (the model's name says which folder)."""
        text = str(e)
        root = str(self.ms.store_dir(self.store).resolve())
        return text.replace(root + os.sep, "").replace(root, "the model store")

    def choices_values(self) -> list[str]:
        return [*self.ms.list_models(self.store), *self.extra]

    def choices(self) -> list[tuple[str, str]]:
        out = [(n, n) for n in self.ms.list_models(self.store)]
        out += [(f"{Path(v).name} ({v})", v) for v in self.extra]
        return out

    def get(self, choice: str):
        key = self.resolve_choice(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            t0 = time.monotonic()
            lm = self.ms.load_model(self.extra.get(key, key), store=self.store, device=self.device)
            log.info("loaded model %s (%d px, %d classes) in %.1f s", lm.name, lm.image_size, len(lm.classes),
                     time.monotonic() - t0)
            self._models[key] = lm
            while len(self._models) > self.max_models:
                old, _ = self._models.popitem(last=False)
                log.info("unloaded model %s (keeping %d)", old, self.max_models)
            return lm

    def dataset(self, choice: str):
        """The model's preprocessed data (val split if present), or None."""
        lm = self.get(choice or self.first)  # empty = the first model, as in WebApp._model
        key = str(lm.path)
        with self._lock:
            if key in self._datasets:
                return self._datasets[key]
        from data import PreprocessedDataset

        candidates = []
        if self.data_override:
            candidates.append(Path(self.data_override))
        d = (lm.config.get("data") or {}).get("dir")
        if d:
            candidates += [Path(d), ROOT / d] if not Path(d).is_absolute() else [Path(d)]
        ds = None
        for c in candidates:
            for split in ("val", "train"):
                if (c / f"{split}_images.npy").is_file():
                    try:
                        ds = PreprocessedDataset(c, split=split)
                        break
                    except (OSError, ValueError) as e:
                        log.warning("cannot use data folder %s (%s)", c, e)
            if ds is not None:
                break
        with self._lock:
            self._datasets[key] = ds
        return ds


def pick_data_image(ds, class_name: str | None, index: Any):
    """The ``index``-th image (of ``class_name``, if given) of a dataset, as uint8 (H, W, 3)."""
    import numpy as np

    i = _whole(index if index not in (None, "") else 0, "Image number")
    labels = np.asarray(ds.labels)
    if class_name:
        names = [c["name"] for c in ds.classes]
        if class_name not in names:
            raise InputError(f"Unknown class {str(class_name)[:60]!r} in this model's data.")
        pool = np.flatnonzero(labels == names.index(class_name))
    else:
        pool = np.arange(len(labels))
    if len(pool) == 0:
        raise InputError(f"No images of {class_name!r} in this model's data.")
    if not 0 <= i < len(pool):
        raise InputError(f"Image number must be between 0 and {len(pool) - 1}, got {i}.")
    return np.array(ds.images[int(pool[i])], dtype=np.uint8)


# --------------------------------------------------------------------------- the app
class JobCancelled(Exception):
    pass


CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
#forward-image img { width: 100%; height: 100%; object-fit: contain; }
#status { min-height: 4.5em; }
"""


class WebApp:
    def __init__(self, args: argparse.Namespace, models: ModelManager):
        self.args = args
        self.models = models
        self.out = Path(args.out)
        self.slots = threading.BoundedSemaphore(args.concurrency)  # sampling jobs on the device
        self._stops: dict[str, set[threading.Event]] = {}
        self._stops_lock = threading.Lock()
        self._schedule_plots: dict[tuple, Any] = {}

    # ----------------------------------------------------------------- stop handling
    def _register(self, session: str, ev: threading.Event) -> None:
        with self._stops_lock:
            self._stops.setdefault(session, set()).add(ev)

    def _unregister(self, session: str, ev: threading.Event) -> None:
        with self._stops_lock:
            evs = self._stops.get(session)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._stops[session]

    def stop(self, request=None) -> str:
        session = getattr(request, "session_hash", None) or ""
        with self._stops_lock:
            evs = list(self._stops.get(session, ()))
        for ev in evs:
            ev.set()
        return "Stopping at the next step..." if evs else "Nothing is running."

    # ----------------------------------------------------------------- small handlers
    def refresh_models(self, current: Any = None):
        """The model picker's choices, re-read from the store (models added after start-up appear)."""
        import gradio as gr

        values = self.models.choices_values()
        return gr.update(choices=self.models.choices(), value=current if current in values else self.models.first)

    def random_seed(self) -> int:
        return random.SystemRandom().randrange(0, MAX_SEED + 1)

    def class_to_prompt(self, class_name: Any, model_choice: Any) -> str:
        import gradio as gr

        from models.text_encoder import class_prompt

        if not class_name:
            return gr.skip()
        lm = self._model(model_choice)
        if class_name not in lm.class_names:
            raise gr.Error(f"{str(class_name)[:60]!r} is not one of this model's classes.",
                           print_exception=False)
        for c in lm.classes:
            if c["name"] == class_name and c.get("prompt"):
                return c["prompt"]
        return class_prompt(class_name, lm.prompt_template)

    def sampler_changed(self, sampler: Any, model_choice: Any):
        import gradio as gr

        try:
            label = parse_sampler(sampler)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        lm = self._model(model_choice)
        T = lm.diffusion.num_train_timesteps
        lo, hi, default = steps_range(label, T)
        d = model_defaults(lm.sampler_defaults, T)
        value = d["steps"] if d["sampler"] == label else default
        note = " (DDPM's full 1000 steps are slow on a CPU; 250 is the default here)" if label == "DDPM" else ""
        return gr.update(minimum=lo, maximum=hi, value=value, info=f"{lo}-{hi} for {label}{note}")

    def _model(self, choice: Any):
        import gradio as gr

        from model_store import CheckpointError

        name = str(choice or self.models.first)
        try:
            return self.models.get(name)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except CheckpointError as e:
            # A broken or mismatched model folder: its reason is the whole story, no traceback needed.
            # Nothing is cached, so a folder fixed on disk loads on the next pick.
            log.warning("model %r cannot be loaded: %s", name, e)
            raise gr.Error(f"Could not load model {name[:80]!r}: {self.models.public_message(e)}",
                           print_exception=False) from None
        except (ValueError, OSError) as e:
            log.exception("loading model %r failed", name)
            raise gr.Error(f"Could not load model {name[:80]!r}: {self.models.public_message(e)}") from None
        except Exception as e:  # out of memory, a device error...: the app stays up for the other models
            log.exception("loading model %r failed", name)
            raise gr.Error(f"Could not load model {name[:80]!r} ({type(e).__name__}). See the server log.") from None

    def model_info(self, lm) -> str:
        d = lm.diffusion
        data = self.models.dataset(str(lm.path) if str(lm.path) in self.models.extra else lm.name)
        return (f"**{lm.name}**: {lm.image_size}x{lm.image_size} px, {len(lm.classes)} classes, "
                f"{d.beta_schedule} schedule, T={d.num_train_timesteps}, {d.prediction_type}; "
                f"device {self.args.device}. "
                + ("Training data available for the Forward tab." if data is not None
                   else "Its training data is not on this machine (upload an image in the Forward tab)."))

    def model_changed(self, model_choice: Any):
        import gradio as gr

        lm = self._model(model_choice)
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm.sampler_defaults, T)
        lo, hi, _ = steps_range(d["sampler"], T)
        cap = max_images_for(lm.image_size, self.args.max_batch_pixels)
        ds = self.models.dataset(model_choice)
        data_classes = [c["name"] for c in ds.classes] if ds is not None else []
        schedule = lm.diffusion.beta_schedule if lm.diffusion.beta_schedule in SCHEDULES else "cosine"
        return (
            self.model_info(lm),
            gr.update(choices=lm.class_names, value=None),
            gr.update(value=d["sampler"]),
            gr.update(minimum=lo, maximum=hi, value=d["steps"]),
            gr.update(value=d["guidance_scale"]),
            gr.update(maximum=cap, value=min(4, cap), info=f"1-{cap}"),
            gr.update(choices=data_classes, value=data_classes[0] if data_classes else None,
                      interactive=ds is not None),
            gr.update(interactive=ds is not None),
            gr.update(value=default_timesteps(T)),
            gr.update(value=schedule),
        )

    # ----------------------------------------------------------------- generate
    def generate(self, prompt, model_choice, sampler, steps, guidance, seed, num_images, show_strip,
                 request=None, progress=None) -> Iterator[tuple]:
        """Stream (gallery, status, seed, gif, strip, files): previews while sampling, then the results."""
        import gradio as gr

        from model_store import CheckpointError

        try:
            yield from self._generate(prompt, model_choice, sampler, steps, guidance, seed, num_images,
                                      show_strip, request, progress)
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except CheckpointError as e:
            raise gr.Error(f"Could not load the model: {e}") from None
        except Exception as e:  # never a stack trace for the user; the log has it
            log.exception("generation failed")
            raise gr.Error(f"Generation failed ({type(e).__name__}: {str(e)[:200]}). See the server log.") from None

    def _generate(self, prompt, model_choice, sampler, steps, guidance, seed, num_images, show_strip,
                  request, progress) -> Iterator[tuple]:
        lm = self._model(model_choice)
        req = validate_request(prompt, sampler, steps, guidance, seed, num_images, image_size=lm.image_size,
                               num_train_timesteps=lm.diffusion.num_train_timesteps,
                               max_batch_pixels=self.args.max_batch_pixels, max_work=self.args.max_work)
        seed_used = req.seed if req.seed is not None else self.random_seed()
        session = getattr(request, "session_hash", None) or f"anon-{uuid.uuid4().hex}"
        stop = threading.Event()
        self._register(session, stop)
        try:
            yield from self._run_job(lm, req, seed_used, stop, session, progress, bool(show_strip))
        finally:
            stop.set()  # a closed/cancelled generator stops its worker at the next step
            self._unregister(session, stop)

    def _run_job(self, lm, req: GenerateRequest, seed_used: int, stop: threading.Event, session: str,
                 progress, show_strip: bool) -> Iterator[tuple]:
        import gradio as gr

        import diffusion as D
        from models.text_encoder import encode_prompts

        events: "queue.Queue[tuple]" = queue.Queue()
        preview_every = max(1, round(req.steps / 10))
        frame_every = max(1, req.steps // 40)

        def on_step(info) -> None:
            if stop.is_set():
                raise JobCancelled()
            last = info.step + 1 == info.num_steps
            if info.step == 0 or (info.step + 1) % preview_every == 0 or last:
                events.put(("preview", info.step, info.num_steps, info.timestep, D.to_uint8(info.x0_pred)))
            else:
                events.put(("step", info.step, info.num_steps, info.timestep, None))

        def work() -> None:
            try:
                while not self.slots.acquire(timeout=0.1):  # wait for the device (a stopped job frees it fast)
                    if stop.is_set():
                        raise JobCancelled()
                try:
                    if stop.is_set():
                        raise JobCancelled()
                    events.put(("start", time.monotonic()))
                    res = D.generate_images(
                        lm.model, lm.diffusion, req.prompt, num_images=req.num_images, sampler=req.sampler,
                        num_steps=req.steps, guidance_scale=req.guidance, seed=seed_used,
                        encode_fn=encode_prompts, prompt_template=lm.prompt_template, return_frames=True,
                        frame_every=frame_every, callback=on_step, device=self.args.device)
                finally:
                    self.slots.release()
                events.put(("done", res))
            except JobCancelled:
                events.put(("cancelled",))
            except BaseException as e:  # reported to the generator below
                events.put(("error", e))

        worker = threading.Thread(target=work, name=f"sample-{session[:8]}", daemon=True)
        t_click = time.monotonic()
        t_start = None
        last_status = ""
        worker.start()
        status = f"Waiting for the device ({self.args.concurrency} job(s) at a time)..."
        yield gr.skip(), status, seed_used, gr.skip(), gr.skip(), gr.skip()
        while True:
            try:
                msg = events.get(timeout=0.25)
            except queue.Empty:
                if status != last_status:  # heartbeat: lets a cancel land within ~0.25 s
                    last_status = status
                    yield gr.skip(), status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                elif not worker.is_alive() and events.empty():
                    raise RuntimeError("the sampling thread ended unexpectedly")
                continue
            kind = msg[0]
            if kind == "start":
                t_start = msg[1]
                status = f"Sampling {req.num_images} image(s) with {req.sampler_label}, {req.steps} steps..."
            elif kind in ("step", "preview"):
                _, i, n, t, x0 = msg
                now = time.monotonic()
                rate = (now - (t_start or t_click)) / (i + 1)
                eta = rate * (n - i - 1)
                status = (f"Step {i + 1}/{n} (t={t}) · {now - t_click:.1f} s elapsed · "
                          f"ETA {format_eta(eta)}")
                if progress is not None:
                    progress((i + 1, n), desc=f"Sampling, ETA {format_eta(eta)}", unit="steps")
                if kind == "preview":
                    items = [(img, f"step {i + 1}/{n}, t={t}") for img in x0]
                    last_status = status
                    yield items, status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif kind == "cancelled":
                yield gr.skip(), f"Stopped after {time.monotonic() - t_click:.1f} s.", gr.skip(), None, None, None
                return
            elif kind == "error":
                raise msg[1]
            elif kind == "done":
                res = msg[1]
                elapsed = time.monotonic() - t_click
                gallery, gif, strip, files = self._export(lm, res, req, show_strip)
                yield (gallery,
                       f"Done: {len(res.images)} image(s) in {elapsed:.1f} s · seed {seed_used}"
                       + (f"..{seed_used + len(res.images) - 1}" if len(res.images) > 1 else "")
                       + f" · {req.sampler_label}, {req.steps} steps, guidance {req.guidance:g}",
                       seed_used, gif, strip, files)
                return

    def _export(self, lm, res, req: GenerateRequest, show_strip: bool):
        import plot_func
        from recipe import save_png

        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.out / f"{stamp}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        gallery, files = [], []
        model_name = lm.name
        for i, (img, prompt, s) in enumerate(zip(res.images, res.prompts, res.seeds)):
            recipe = dict(res.recipe, seed=s, model=model_name)
            path = save_png(folder / f"{i:02d}_seed{s}.png", img, prompt, recipe)
            gallery.append((str(path), f"seed {s}"))
            files.append(str(path))
        nrow = min(4, len(res.images))
        gif = plot_func.denoising_gif(res.frames, res.frame_timesteps, folder / "denoising.gif", nrow=nrow)
        files.append(str(gif))
        strip = None
        if show_strip:
            strip = folder / "steps.png"
            plot_func.denoising_strip(res.frames, res.frame_timesteps, path=strip)
            strip = str(strip)
            files.append(strip)
        self._prune()
        return gallery, str(gif), strip, files

    def _prune(self) -> None:
        try:
            runs = sorted((p for p in self.out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in runs[: max(0, len(runs) - self.args.keep_runs)]:
            shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------- forward tab
    def schedule_image(self, T: int, timesteps: Sequence[int] = ()):
        import plot_func

        key = (T, tuple(timesteps))
        if key not in self._schedule_plots:
            if len(self._schedule_plots) > 64:
                self._schedule_plots.clear()
            self._schedule_plots[key] = plot_func.schedule_plot(T, timesteps=list(timesteps))
        return self._schedule_plots[key]

    @contextlib.contextmanager
    def _strip_errors(self, what: str):
        """Bad input -> its own gr.Error; anything unexpected -> logged, and a short gr.Error."""
        import gradio as gr

        try:
            yield
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as e:
            log.exception("%s failed", what)
            raise gr.Error(f"Could not make the strip ({type(e).__name__}). See the server log.") from None

    def _forward_common(self, model_choice, schedule, timesteps, seed):
        lm = self._model(model_choice)
        T = lm.diffusion.num_train_timesteps
        if schedule not in SCHEDULES:
            raise InputError(f"Schedule must be one of {', '.join(SCHEDULES)}, got {str(schedule)[:40]!r}.")
        ts = parse_timesteps(timesteps, T)
        s = validate_seed(seed)
        return lm, T, ts, (0 if s is None else s)

    def forward(self, image, model_choice, schedule, timesteps, seed):
        """Upload -> (strip of q(x_t | x_0) at the timesteps, alpha-bar plot)."""
        import numpy as np

        import plot_func

        with self._strip_errors("forward strip"):
            _, T, ts, s = self._forward_common(model_choice, schedule, timesteps, seed)
            from gradio.utils import get_upload_folder

            img = check_upload(image, max_bytes=int(self.args.max_upload_mb * 2**20), upload_dir=get_upload_folder())
            arr = np.asarray(square_resize(img, FORWARD_SIZE))
            strip = plot_func.forward_diffusion_strip(arr, ts, beta_schedule=schedule, num_train_timesteps=T, seed=s)
            return strip, self.schedule_image(T, ts)

    def forward_data(self, model_choice, class_name, index, schedule, timesteps, seed):
        """An image from the model's data -> (that image, strip, alpha-bar plot)."""
        import plot_func

        with self._strip_errors("forward strip (data)"):
            _, T, ts, s = self._forward_common(model_choice, schedule, timesteps, seed)
            ds = self.models.dataset(model_choice)
            if ds is None:
                raise InputError("This model's training data is not on this machine; upload an image instead.")
            arr = pick_data_image(ds, class_name, index)
            strip = plot_func.forward_diffusion_strip(arr, ts, beta_schedule=schedule, num_train_timesteps=T, seed=s)
            return arr, strip, self.schedule_image(T, ts)

    # ----------------------------------------------------------------- layout
    def build(self):
        import gradio as gr

        lm = self._model(self.models.first)
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm.sampler_defaults, T)
        lo, hi, _ = steps_range(d["sampler"], T)
        cap = max_images_for(lm.image_size, self.args.max_batch_pixels)
        ds = self.models.dataset(self.models.first)
        data_classes = [c["name"] for c in ds.classes] if ds is not None else []
        schedule = lm.diffusion.beta_schedule if lm.diffusion.beta_schedule in SCHEDULES else "cosine"
        examples = [[c.get("prompt") or c["name"]] for c in lm.classes[:6]] or [[p] for p in EXAMPLE_PROMPTS]

        with gr.Blocks(title="Diffusion image generator", analytics_enabled=False,
                       delete_cache=(3600, 24 * 3600)) as demo:
            gr.Markdown("# Diffusion image generator\nClass- and text-conditional diffusion, "
                        "sampled live. Every PNG carries its recipe (prompt, seed, sampler...).")
            with gr.Row():
                model_dd = gr.Dropdown(self.models.choices(), value=self.models.first, label="Model", scale=1,
                                       filterable=True)
                model_md = gr.Markdown(self.model_info(lm), elem_id="model-info")
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="Prompt", placeholder="a photo of a goldfish", lines=2,
                                            max_length=MAX_PROMPT_CHARS, elem_id="prompt")
                        class_dd = gr.Dropdown(lm.class_names, value=None, label="Class (fills the prompt)",
                                               filterable=True, elem_id="class")
                        gr.Examples(examples, inputs=[prompt], label="Examples")
                        with gr.Row():
                            sampler = gr.Radio(list(SAMPLER_CHOICES), value=d["sampler"], label="Sampler",
                                               elem_id="sampler")
                        steps = gr.Slider(lo, hi, value=d["steps"], step=1, label="Steps", info=f"{lo}-{hi}",
                                          elem_id="steps")
                        guidance = gr.Slider(GUIDANCE_RANGE[0], GUIDANCE_RANGE[1], value=d["guidance_scale"],
                                             step=0.1, label="Guidance scale", info="1 = no guidance")
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, label="Seed (-1 = random)", minimum=-1,
                                             maximum=MAX_SEED, scale=3, elem_id="seed")
                            dice = gr.Button("Random seed", scale=1, size="sm", elem_id="random-seed")
                        num = gr.Slider(1, cap, value=min(4, cap), step=1, label="Number of images",
                                        info=f"1-{cap}", elem_id="num-images")
                        show_strip = gr.Checkbox(False, label="Also show a strip of intermediate steps")
                        with gr.Row():
                            go = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Column(scale=2):
                        status = gr.Markdown("Ready.", elem_id="status")
                        gallery = gr.Gallery(label="Images", format="png", columns=4, height="auto",
                                             object_fit="contain", elem_id="gallery", elem_classes=["pixelated"])
                        with gr.Row():
                            gif = gr.Image(label="Denoising (GIF)", type="filepath", elem_id="gif", height=320,
                                           elem_classes=["pixelated"])
                            strip = gr.Image(label="Intermediate steps (optional, see the tick box)",
                                             type="filepath", elem_id="strip", height=320,
                                             elem_classes=["pixelated"])
                        files = gr.File(label="Downloads (PNG with recipe, GIF)", file_count="multiple")
            with gr.Tab("Forward diffusion"):
                gr.Markdown("How q(x_t | x_0) destroys an image: the same noise at every t, scaled by the "
                            "schedule's alpha-bar. Upload an image or take one from the model's training data.")
                with gr.Row():
                    with gr.Column(scale=1):
                        image_in = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                            format="png", height=260, elem_id="forward-image",
                                            elem_classes=["pixelated"])
                        with gr.Row():
                            data_class = gr.Dropdown(data_classes, value=data_classes[0] if data_classes else None,
                                                     label="Class in the model's data", interactive=ds is not None)
                            data_index = gr.Number(0, precision=0, minimum=0, label="Image #",
                                                   interactive=ds is not None)
                        pick = gr.Button("Use an image from the data", interactive=ds is not None)
                        f_schedule = gr.Radio(list(SCHEDULES), value=schedule, label="Schedule")
                        f_steps = gr.Textbox(default_timesteps(T), label="Timesteps (comma-separated)")
                        f_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Noise seed")
                        f_go = gr.Button("Show forward diffusion", variant="primary", elem_id="forward")
                    with gr.Column(scale=2):
                        f_strip = gr.Image(label="q(x_t | x_0)", type="numpy", format="png", elem_id="forward-strip",
                                           elem_classes=["pixelated"])
                        f_plot = gr.Image(self.schedule_image(T), label="alpha-bar over t", type="numpy",
                                          format="png", elem_id="schedule-plot")

            # ------------------------------------------------------------- events
            gen_event = go.click(
                self._generate_fn(), [prompt, model_dd, sampler, steps, guidance, seed, num, show_strip],
                [gallery, status, seed, gif, strip, files], api_name="generate", preprocess=False,
                concurrency_limit=self.args.concurrency, concurrency_id="sampling",
                show_progress="full", show_progress_on=[status], time_limit=self.args.time_limit)
            prompt.submit(self._generate_fn(), [prompt, model_dd, sampler, steps, guidance, seed, num, show_strip],
                          [gallery, status, seed, gif, strip, files], api_name="generate_on_enter",
                          api_visibility="private", preprocess=False,
                          concurrency_limit=self.args.concurrency, concurrency_id="sampling",
                          show_progress="full", show_progress_on=[status], time_limit=self.args.time_limit)
            stop_btn.click(self._stop_fn(), None, [status], api_name="stop", queue=False, cancels=[gen_event])
            dice.click(self.random_seed, None, [seed], api_name="random_seed", queue=False)
            class_dd.change(self.class_to_prompt, [class_dd, model_dd], [prompt], api_name="class_prompt",
                            queue=False)
            sampler.change(self.sampler_changed, [sampler, model_dd], [steps], api_name="sampler_steps",
                           queue=False)
            model_dd.change(self.model_changed, [model_dd],
                            [model_md, class_dd, sampler, steps, guidance, num, data_class, data_index,
                             f_steps, f_schedule], api_name="select_model", concurrency_limit=1,
                            concurrency_id="models")
            # The forward endpoints run one at a time: Gradio caches an output image under the hash of its
            # pixels and checks only that the file exists, so two identical requests at once could hand one
            # client the other's half-written (even empty) PNG. One at a time, the second finds it complete.
            f_go.click(self.forward, [image_in, model_dd, f_schedule, f_steps, f_seed], [f_strip, f_plot],
                       api_name="forward", preprocess=False, concurrency_limit=1, concurrency_id="forward")
            pick.click(self.forward_data, [model_dd, data_class, data_index, f_schedule, f_steps, f_seed],
                       [image_in, f_strip, f_plot], api_name="forward_data", preprocess=False,
                       concurrency_limit=1, concurrency_id="forward")
            image_in.upload(self.forward, [image_in, model_dd, f_schedule, f_steps, f_seed], [f_strip, f_plot],
                            api_name="forward_on_upload", api_visibility="private", preprocess=False,
                            concurrency_limit=1, concurrency_id="forward")
            gr.api(self._schedule_api(), api_name="schedule")
            demo.load(self.refresh_models, [model_dd], [model_dd], api_name="list_models", queue=False)
        return demo

    # gradio reads these signatures (type hints, gr.Request / gr.Progress defaults)
    def _generate_fn(self):
        import gradio as gr

        app = self

        def generate(prompt, model, sampler, steps, guidance, seed, num_images, show_strip,
                     request: gr.Request, progress=gr.Progress()):
            yield from app.generate(prompt, model, sampler, steps, guidance, seed, num_images, show_strip,
                                    request=request, progress=progress)

        generate.__annotations__["request"] = gr.Request  # a class, not a string: gradio injects it
        return generate

    def _stop_fn(self):
        import gradio as gr

        app = self

        def stop(request: gr.Request) -> str:
            return app.stop(request)

        stop.__annotations__["request"] = gr.Request
        return stop

    def _schedule_api(self):
        import gradio as gr

        app = self

        def schedule(num_train_timesteps: int = 1000) -> str:
            """alpha-bar over t for the linear and cosine schedules, as a PNG file path."""
            try:
                T = _whole(num_train_timesteps, "num_train_timesteps")
                if not 2 <= T <= 100_000:
                    raise InputError("num_train_timesteps must be between 2 and 100000.")
            except InputError as e:
                raise gr.Error(str(e), print_exception=False) from None
            from PIL import Image

            app.out.mkdir(parents=True, exist_ok=True)
            path = app.out / f"schedules_T{T}.png"
            if not path.exists():
                Image.fromarray(app.schedule_image(T)).save(path)
            return str(path)

        return schedule


# --------------------------------------------------------------------------- start-up
NO_MODELS_HELP = """\
No models found in the model store {store}.

Get one:
  1. preprocess the default model's data (10 Tiny ImageNet classes at 32 px):
        python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 32 \\
            --classes assets/default_classes.txt --val-fraction 0.04 --out data/default32
  2. train, then put the weights in the store:
        python diffusion.py train --preset smoke --data_dir data/default32    # minutes on a CPU
        python diffusion.py export smoke --name smoke
     (or --preset default and `export default --name default_model` for the real, slow one)
  3. python web.py
Or use another store or folder:  python web.py --store DIR   |   python web.py --model PATH/TO/MODEL_OR_CHECKPOINT
"""


def _pick_model(args, ms) -> str:
    if args.model and (os.sep in args.model or args.model.startswith(".")):
        return args.model
    names = ms.list_models(args.store)
    if not names:
        print(NO_MODELS_HELP.format(store=ms.store_dir(args.store).resolve()), file=sys.stderr)
        raise SystemExit(2)
    if args.model:
        if args.model not in names:
            print(f"error: no model named {args.model!r} in {ms.store_dir(args.store).resolve()} "
                  f"(available: {', '.join(names)})", file=sys.stderr)
            raise SystemExit(2)
        return args.model
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    log.warning("%s is not in the store yet; using %s", DEFAULT_MODEL, names[0])
    return names[0]


def open_models(args: argparse.Namespace, ms: Any, first: str) -> tuple[ModelManager, Any]:
    """The model manager and the model shown first (loaded).

    A model named with ``--model`` must load. Otherwise ``first`` (from
    ``_pick_model``) is tried, then the rest of the store in order: one broken
    folder in the store is logged and passed over instead of keeping the app,
    and every good model, down. It stays in the picker, where choosing it shows
    its error. Raises ``CheckpointError`` when nothing loads.
    """
    models = ModelManager(args.store, args.device, first, args.max_models, args.data)
    if args.model:
        return models, models.get(models.first)
    failures = []
    for name in [first, *(n for n in ms.list_models(args.store) if n != first)]:
        try:
            models.first = models.resolve_choice(name)
            return models, models.get(models.first)
        except (ms.CheckpointError, InputError, ValueError) as e:
            log.warning("model %s cannot be loaded (%s); trying the next one in the store", name, e)
            failures.append(f"{name}: {e}")
    raise ms.CheckpointError("no model in the store could be loaded:\n  " + "\n  ".join(failures))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # No internet here: never phone home, never reach the hub.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warning = exposure_warning(args.host, args.share, args.auth)
    if warning:
        log.warning("%s", warning)

    import torch

    import model_store as ms
    from models.text_encoder import get_text_encoder

    first = _pick_model(args, ms)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available here (use --device cpu)", file=sys.stderr)
        return 2
    if args.device == "cpu" or args.threads:
        threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)
        log.info("torch uses %d CPU thread(s) (--threads)", threads)
    t0 = time.monotonic()
    try:
        models, lm = open_models(args, ms, first)
    except (ms.CheckpointError, InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    encoder = get_text_encoder()
    encoder.encode([c.get("prompt") or c["name"] for c in lm.classes] or list(EXAMPLE_PROMPTS))
    log.info("model %s and text encoder ready in %.1f s", lm.name, time.monotonic() - t0)

    import gradio as gr

    app = WebApp(args, models)
    demo = app.build()
    # api_open=False: queued endpoints cannot be POSTed directly around the queue and its limits.
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1, api_open=False)
    app.out.mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=args.auth,
        auth_message="This diffusion app requires a login." if args.auth else None,
        max_file_size=int(args.max_upload_mb * 2**20), allowed_paths=[str(app.out.resolve())],
        theme=gr.themes.Soft(), css=CSS, ssr_mode=False, mcp_server=False, show_error=False,
        footer_links=["api"], enable_monitoring=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
