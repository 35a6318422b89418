"""Request validation for the app: small pure functions that raise ``InputError``.

Every handler runs its inputs through these before any work starts, and turns
an ``InputError`` into a ``gr.Error`` the user sees (never a stack trace).
Nothing here imports torch or gradio, so ``python web.py --help`` stays fast
and the checks can be unit-tested alone.
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.samplers import SAMPLER_DEFAULTS

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
MAX_FRAMES = 16  # interpolation frames per request (also capped by the memory cap, like images)
MAX_GRID_CELLS = 16  # parameter grid: rows x columns per request
MAX_GRID_VALUES = 8  # values on one grid axis
GRID_AXES = ("guidance", "steps", "sampler", "seed", "prompt")

# UI label -> (sampler, (min, max, default steps)): the core's one table, in its order (the default first)
SAMPLER_CHOICES: dict[str, tuple[str, tuple[int, int, int]]] = {
    spec.label: (name, (spec.min_steps, spec.max_steps, spec.app_steps))
    for name, spec in SAMPLER_DEFAULTS.items()
}
SCHEDULES = ("linear", "cosine")
PRECISION_CHOICES = ("fp32", "auto", "bf16")  # as core.precision.PRECISIONS; auto = bf16 where the hardware is fast at it
# The app samples in fp32 unless asked: its grid, interpolation and /generate then agree pixel for pixel
# on every machine (bf16 images differ slightly; BENCHMARKS.md has the parity figures).
DEFAULT_PRECISION = "fp32"
# Live redraws in bf16 where the hardware is fast at it (fp32 elsewhere): a fifth faster on an
# AVX512-BF16 CPU, and its students score the same by the yardstick (BENCHMARKS.md, "Live in bf16").
# Each Live PNG records the precision it was drawn in, so Restore + Generate repeat its pixels.
LIVE_PRECISION = "auto"
MAX_INTERVAL_CHARS = 60

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


def validate_seed(value: Any, what: str = "Seed") -> int | None:
    """A seed in [0, 2^32 - 1], or None (= pick one at random) for empty / -1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    seed = _whole(value, what)
    if seed == -1:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{what} must be between 0 and {MAX_SEED} (or -1 for random), got {seed}.")
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
    from PIL import (  # lazy, as this module's other heavy imports: see its docstring
        Image,
        UnidentifiedImageError,
    )

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


def validate_blend(text: str) -> str:
    """A (clean) prompt that may blend parts, ``goldfish:0.7 | coral reef:0.3``: its syntax checked
    with the core's own parser, so what passes here is what the sampler accepts."""
    from core.prompting import parse_weighted_prompt  # here: `import web` (web.py --help) must not load torch

    try:
        parse_weighted_prompt(text)
    except ValueError as e:
        raise InputError(f"Blended prompt: {e}.") from None
    return text


def validate_fraction(value: Any, what: str) -> float:
    """A number in [0, 1] (strengths)."""
    x = _number(value, what)
    if not 0.0 <= x <= 1.0:
        raise InputError(f"{what} must be between 0 and 1, got {x:g}.")
    return x


def validate_variation(seed: Any, strength: Any) -> tuple[int | None, float]:
    """(variation seed or None, strength). Strength 0 (the default) means no variation, whatever the
    seed; a strength > 0 with no seed (empty / -1) leaves the seed to the caller to pick at random."""
    s = validate_fraction(0 if strength is None or strength == "" else strength, "Variation strength")
    v = validate_seed(seed, "Variation seed")
    return (v if s > 0 else None), s


def validate_frames(value: Any, image_size: int, max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> int:
    """Interpolation frames: 2..16, and no more than one batch of images may hold (the memory cap)."""
    n = _whole(value, "Number of frames")
    cap = max(2, min(MAX_FRAMES, max_images_for(image_size, max_batch_pixels)))
    if not 2 <= n <= cap:
        raise InputError(f"Number of frames must be between 2 and {cap}, got {n}.")
    return n


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    sampler_label: str
    sampler: str
    steps: int
    guidance: float
    seed: int | None
    num_images: int
    variation_seed: int | None = None  # None with variation_strength > 0: pick one at random
    variation_strength: float = 0.0
    strength: float | None = None  # img2img (SDEdit) strength; None = no init image
    snap: float = 0.0  # pull the prompt toward the nearest training classes (prompting.snap_to_classes)
    precision: str = DEFAULT_PRECISION
    guidance_interval: tuple[float, float] | None = None  # EDM sigma band where guidance applies; None = everywhere


def validate_precision(value: Any) -> str:
    """``fp32``, ``auto`` (bf16 where the CPU/GPU is fast at it, else fp32) or ``bf16``; empty = fp32."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_PRECISION
    if not isinstance(value, str) or value.strip().lower() not in PRECISION_CHOICES:
        raise InputError(f"Precision must be one of {', '.join(PRECISION_CHOICES)}, got {str(value)[:40]!r}.")
    return value.strip().lower()


def validate_guidance_interval(value: Any) -> tuple[float, float] | None:
    """``"LO,HI"`` in EDM sigma (guidance only for sigma in (LO, HI]); empty = guidance at every step."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value)
    if len(text) > MAX_INTERVAL_CHARS:
        raise InputError(f"Guidance interval is too long ({len(text)} characters); write it as LO,HI.")
    from core.sampling import (
        parse_guidance_interval,  # the one parser the CLI and recipes use (imports torch)
    )

    try:
        return parse_guidance_interval(text)
    except ValueError as e:
        raise InputError(f"Guidance interval: {e}. Example: 0.28,5.42 (empty = guidance at every step).") from None


def interval_text(band: tuple[float, float] | None) -> str:
    """A band as the Guidance interval box shows it ("LO,HI"); "" = guidance at every step."""
    return f"{band[0]:g},{band[1]:g}" if band else ""


def validate_request(prompt: Any, sampler: Any, steps: Any, guidance: Any, seed: Any, num_images: Any, *,
                     image_size: int, num_train_timesteps: int = 1000,
                     max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                     max_work: int = DEFAULT_MAX_WORK, variation_seed: Any = None, variation_strength: Any = 0.0,
                     strength: Any = None, snap: Any = 0.0, precision: Any = DEFAULT_PRECISION,
                     guidance_interval: Any = None) -> GenerateRequest:
    """All the generate tab's checks in one place (raises InputError). ``strength`` is checked
    only when an init image comes with the request (the caller passes None otherwise)."""
    text = validate_blend(clean_prompt(prompt))
    label = parse_sampler(sampler)
    n_steps = validate_steps(steps, label, num_train_timesteps)
    g = validate_guidance(guidance)
    s = validate_seed(seed)
    n = validate_num_images(num_images, image_size, max_batch_pixels)
    check_budget(n, image_size, n_steps, max_work)
    v_seed, v_strength = validate_variation(variation_seed, variation_strength)
    st = None if strength is None else validate_fraction(strength, "Denoising strength")
    sn = validate_fraction(0 if snap is None or snap == "" else snap, "Snap to classes")
    return GenerateRequest(text, label, SAMPLER_CHOICES[label][0], n_steps, g, s, n, v_seed, v_strength, st, sn,
                           validate_precision(precision), validate_guidance_interval(guidance_interval))


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




# --------------------------------------------------------------------------- interpolation, grid, learn
@dataclass(frozen=True)
class InterpolateRequest:
    prompt_a: str
    prompt_b: str
    seed_a: int | None  # None: pick one at random
    seed_b: int | None  # None: the same as seed A
    frames: int
    sampler_label: str
    sampler: str
    steps: int
    guidance: float


def validate_interpolation(prompt_a: Any, prompt_b: Any, seed_a: Any, seed_b: Any, frames: Any, sampler: Any,
                           steps: Any, guidance: Any, *, image_size: int, num_train_timesteps: int = 1000,
                           max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                           max_work: int = DEFAULT_MAX_WORK) -> InterpolateRequest:
    """Two prompts and/or two seeds (an empty prompt B or seed B = the same as A), N frames."""
    a = validate_blend(clean_prompt(prompt_a))
    b = a if prompt_b is None or (isinstance(prompt_b, str) and not prompt_b.strip()) else \
        validate_blend(clean_prompt(prompt_b))
    sa = validate_seed(seed_a, "Seed A")
    sb = validate_seed(seed_b, "Seed B")
    if b == a and (sb is None or sb == sa):
        raise InputError("Give two different prompts or two different seeds to interpolate between.")
    label = parse_sampler(sampler)
    n_steps = validate_steps(steps, label, num_train_timesteps)
    g = validate_guidance(guidance)
    n = validate_frames(frames, image_size, max_batch_pixels)
    check_budget(n, image_size, n_steps, max_work)
    return InterpolateRequest(a, b, sa, sb, n, label, SAMPLER_CHOICES[label][0], n_steps, g)


def split_values(text: Any, axis: str) -> list[str]:
    """An axis's values: comma-separated (prompts: separated by ';', since prompts contain commas)."""
    if isinstance(text, (list, tuple)):
        parts = [str(p) for p in text]
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        parts = [str(text)]
    elif isinstance(text, str):
        parts = text.split(";" if axis == "prompt" else ",")
    else:
        raise InputError(f"The {axis} values must be text, e.g. {GRID_EXAMPLES[axis]!r}.")
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise InputError(f"Give at least one {axis} value, e.g. {GRID_EXAMPLES[axis]!r}.")
    if len(parts) > MAX_GRID_VALUES:
        raise InputError(f"At most {MAX_GRID_VALUES} values on one axis, got {len(parts)} {axis} values.")
    return parts


GRID_EXAMPLES = {"guidance": "1, 3, 7", "steps": "10, 20, 40", "sampler": "DDIM, DPM-Solver++",
                 "seed": "0, 1, 2", "prompt": "a photo of a goldfish; a photo of a ladybug"}


def parse_axis(axis: Any, text: Any) -> tuple[str, list]:
    """('guidance', '1, 3') -> ('guidance', [1.0, 3.0]); steps are checked per cell (they depend on the sampler)."""
    if axis not in GRID_AXES:
        raise InputError(f"Grid axis must be one of {', '.join(GRID_AXES)}, got {str(axis)[:40]!r}.")
    parts = split_values(text, axis)
    if axis == "guidance":
        values: list = [validate_guidance(p) for p in parts]
    elif axis == "steps":
        values = [_whole(p, "Steps") for p in parts]
    elif axis == "sampler":
        values = [parse_sampler(p) for p in parts]
    elif axis == "seed":
        values = []
        for p in parts:
            s = validate_seed(p)
            if s is None:
                raise InputError("Grid seeds must be numbers from 0 to 4294967295 (no -1: every cell needs its own).")
            values.append(s)
    else:
        values = [validate_blend(clean_prompt(p)) for p in parts]
    return axis, values


@dataclass(frozen=True)
class GridRequest:
    x_axis: str
    x_values: list
    y_axis: str | None
    y_values: list
    cells: list  # rows of dicts: prompt, sampler_label, sampler, steps, guidance, seed (None: the grid's random seed)


def validate_grid(prompt: Any, sampler: Any, steps: Any, guidance: Any, seed: Any, x_axis: Any, x_values: Any,
                  y_axis: Any, y_values: Any, *, image_size: int, num_train_timesteps: int = 1000,
                  max_work: int = DEFAULT_MAX_WORK) -> GridRequest:
    """The base settings, then two axes (Y may be 'none'); every cell checked, at most 16 cells, and their
    total work under the server's cap."""
    ax, xs = parse_axis(x_axis, x_values)
    if y_axis in (None, "", "none"):
        ay, ys = None, [None]
    else:
        ay, ys = parse_axis(y_axis, y_values)
        if ay == ax:
            raise InputError(f"The two grid axes must differ (both are {ax}).")
    if len(xs) * len(ys) > MAX_GRID_CELLS:
        raise InputError(f"The grid has {len(xs)} x {len(ys)} = {len(xs) * len(ys)} cells; the limit is "
                         f"{MAX_GRID_CELLS}.")
    base = {"prompt": prompt, "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed}
    base = {k: v for k, v in base.items() if k not in (ax, ay)}  # an axis replaces its base value
    b_prompt = validate_blend(clean_prompt(base["prompt"])) if "prompt" in base else None
    b_sampler = parse_sampler(base["sampler"]) if "sampler" in base else None
    b_guidance = validate_guidance(base["guidance"]) if "guidance" in base else None
    b_seed = validate_seed(base["seed"]) if "seed" in base else None
    rows, work = [], 0
    for yv in ys:
        row = []
        for xv in xs:
            cell = {"prompt": b_prompt, "sampler_label": b_sampler, "guidance": b_guidance, "seed": b_seed,
                    "steps": base.get("steps")}
            for axis, v in ((ax, xv), (ay, yv)):
                if axis == "sampler":
                    cell["sampler_label"] = v
                elif axis is not None:
                    cell[axis] = v
            cell["steps"] = validate_steps(cell["steps"], cell["sampler_label"], num_train_timesteps)
            cell["sampler"] = SAMPLER_CHOICES[cell["sampler_label"]][0]
            work += image_size * image_size * cell["steps"]
            row.append(cell)
        rows.append(row)
    if work > max_work:
        raise InputError(f"This grid is too large for this server: {work / 1e6:.1f} M pixel-steps in all (limit "
                         f"{max_work / 1e6:.1f} M). Use fewer cells or fewer steps.")
    return GridRequest(ax, xs, ay, [] if ay is None else ys, rows)


def parse_guidance_list(text: Any, max_count: int = MAX_GRID_VALUES) -> list[float]:
    """'1, 3, 7' -> [1.0, 3.0, 7.0] (the Learn tab's guidance comparison)."""
    values = [validate_guidance(p) for p in split_values(text, "guidance")]
    if len(values) > max_count:
        raise InputError(f"At most {max_count} guidance scales, got {len(values)}.")
    return values


GUIDE_UNCONDITIONAL = "unconditional"  # "guide with" the model's own null branch: classifier-free guidance


def validate_guide(value: Any, models: Sequence[str]) -> str | None:
    """The "Guide with" choice: None for classifier-free guidance ("unconditional", or nothing), else a
    base model of this store (autoguidance; whether it fits the model is checked when it is loaded)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", GUIDE_UNCONDITIONAL)):
        return None
    if not isinstance(value, str) or value not in models:
        raise InputError(f"Guide with must be '{GUIDE_UNCONDITIONAL}' or a model of this store "
                         f"({', '.join(models) or 'none'}), got {str(value)[:60]!r}.")
    return value
