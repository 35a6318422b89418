"""Checkpoints and the model store: safetensors weights plus a JSON config.

Nothing here unpickles. Weights are safetensors; optimizer and RNG state are
tensors in safetensors too; everything else is JSON. A training checkpoint is
a folder ``ckpt-0001000/`` written under a temporary name and renamed when
complete, so a crash never leaves a half-written checkpoint that looks whole.

The model store is one directory of named models (default ``model_store/``
in the repo, or ``$DIFFUSION_MODEL_STORE``), each a folder with
``model.safetensors`` (EMA weights), ``config.json`` and ``README.md`` (the
model card). The default model is ``tiny200`` (``DEFAULT_MODEL_NAME``).
A model is written under a temporary name and renamed when complete too; one
it replaces (only with ``overwrite``) is moved whole into ``.replaced/``, not
deleted, so an overwrite can be undone (``engine/replaced.py``).

Every model has a type, ``model_type`` in its config: ``base`` (absent in
older configs) generates images from text; ``sr`` is a super-resolution stage
(``training/superres.py``, ``engine/upscaling.py``) that upscales a base model's images (``sample --upscale``).
``list_models`` and ``load_model`` deal in base models unless asked for
another type, so an SR model never shows up as a base model in the app.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from core.samplers import check_sampler
from core.sampling import parse_guidance_interval
from core.schedules import DiffusionConfig
from models import ConditionalUNet, UNetConfig
from models.text_encoder import DEFAULT_PROMPT_TEMPLATE, TEXT_MODEL_NAME

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = ROOT / "model_store"
# What the app and `diffusion.py sample` open with: the shipped model whose samples the 200-class yardstick
# recognises at least half as often as real photos, at its own defaults (tests/test_model_store.py checks it
# against each model's evaluation.json). tiny200 passes since 2026-12-03 (0.60; BENCHMARKS).
DEFAULT_MODEL_NAME = "tiny200"
# The models this repository ships in model_store/ (tests/test_store_rule.py checks the list against git). The app
# never replaces them (engine/export.py); `diffusion.py export --overwrite` may, and keeps the old one as it keeps
# every replaced model.
SHIPPED_MODELS = frozenset({"tiny200", "default_model", "tiny200-live", "default_model-live", "sr64"})
# Where a replaced model goes, whole (weights, config, card, evaluation, companions). The leading '.' keeps it out
# of list_models and of the names a model can have.
REPLACED_DIR = ".replaced"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT_VERSION = 1
MODEL_TYPES = ("base", "sr")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CKPT_RE = re.compile(r"^ckpt-(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint or model folder is missing, incomplete, corrupt or unsafe."""


def store_dir(store: str | os.PathLike | None = None) -> Path:
    """The model store directory: the argument, ``$DIFFUSION_MODEL_STORE``, or ``model_store/``."""
    return Path(store or os.environ.get("DIFFUSION_MODEL_STORE") or DEFAULT_STORE)


def validate_model_name(name: str) -> str:
    """Model names are plain folder names: letters, digits, '.', '_' and '-' (no paths)."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------- safe tensor files
def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a tensor file without executing anything.

    ``.safetensors`` is read directly. PyTorch ``.pt``/``.pth``/``.bin`` files
    are opened with ``weights_only=True``, which refuses any pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise _not_safetensors(path, e) from e
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only raises UnpicklingError for code payloads
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects or code, not plain tensors ({type(e).__name__}). "
                "Only safetensors or tensor-only state dicts are accepted."
            ) from e
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path} is not a flat state dict of tensors")
        return obj
    raise CheckpointError(f"unsupported weights file {path.name}: expected .safetensors")


def _not_safetensors(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file ({e}); it may be corrupt, truncated, or a pickle in disguise. "
        "Pickled checkpoints are never loaded."
    )


def weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` file, from its JSON header alone.

    No tensor is read or allocated, so a file (or the config beside it) can be
    checked before anything of its size is built.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"unsupported weights file {path.name}: expected .safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _not_safetensors(path, e) from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"missing {path.name} in {path.parent}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


# --------------------------------------------------------------------------- loaded models
@dataclass
class LoadedModel:
    """A network ready to sample, with everything needed to describe it."""

    model: ConditionalUNet
    diffusion: DiffusionConfig
    config: dict[str, Any]
    path: Path
    name: str = ""
    classes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def prompt_template(self) -> str:
        return self.config.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        return self.config.get("sampler_defaults", {})

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """The sigma band its ``sampler_defaults`` apply guidance in (None: every step).

        Every sampling path that takes the model's defaults (the CLI's sample, each tab of the
        app) uses this one value, so the same settings give the same pixels everywhere."""

        return parse_guidance_interval(self.sampler_defaults.get("guidance_interval"))  # checked at load


def model_config(
    unet: UNetConfig,
    diffusion: DiffusionConfig,
    classes: list[dict[str, Any]],
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON config that describes a network (shared by checkpoints and the store)."""
    return {
        "format_version": FORMAT_VERSION,
        "unet": unet.to_dict(),
        "diffusion": diffusion.to_dict(),
        "image_size": unet.image_size,
        "text_model": TEXT_MODEL_NAME,
        "prompt_template": prompt_template,
        "classes": [{k: c[k] for k in ("index", "wnid", "name", "prompt") if k in c} for c in classes],
        **extra,
    }


def model_type_of(config: dict[str, Any]) -> str:
    """``base`` or ``sr``: a config's ``model_type`` (configs from before SR models have none: base)."""
    kind = config.get("model_type", "base") if isinstance(config, dict) else "base"
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"unknown model_type {kind!r} (known: {', '.join(MODEL_TYPES)})")
    return kind


def check_model_type(config: dict[str, Any], expected: str | None, where: str | os.PathLike) -> None:
    """Refuse a model of another type than ``expected`` (None accepts any), and an ``sr`` config
    whose network is not one (the noisy image and the low-resolution image in, an augmentation level)."""
    kind = model_type_of(config)
    if expected is not None and kind != expected:
        what = {"base": "a base (text-to-image) model", "sr": "a super-resolution model"}
        hint = " (use it with --upscale)" if kind == "sr" else " (an upscaler must be an SR model such as sr64)"
        raise CheckpointError(f"{where} is {what[kind]}, not {what[expected]}{hint}")
    if kind == "sr":
        unet = _unet_config(config)
        if unet.in_channels != 2 * unet.out_channels or not unet.aug_embed:
            raise CheckpointError(
                f"invalid SR model config in {where}: an SR network takes the noisy image and the upsampled "
                f"low-resolution image (in_channels = 2 x out_channels) and an augmentation level (aug_embed); "
                f"got in_channels {unet.in_channels}, out_channels {unet.out_channels}, aug_embed {unet.aug_embed}")


def _unet_config(config: dict[str, Any]) -> UNetConfig:
    try:
        return UNetConfig.from_dict(config["unet"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"invalid model config: {e}") from e


def build_model(config: dict[str, Any]) -> tuple[ConditionalUNet, DiffusionConfig]:
    """The network a config describes, with fresh weights.

    This allocates the network for real: with a config from a file, call
    ``check_config_against_weights`` first (``load_model`` does), or a config
    asking for 200000 channels allocates hundreds of gigabytes.
    """
    unet_config = _unet_config(config)
    try:
        diffusion = DiffusionConfig.from_dict(config["diffusion"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config: {e}") from e
    return ConditionalUNet(unet_config), diffusion


def _weights_prefix(names: Sequence[str] | Any, use_ema: bool) -> str:
    """The key prefix of the network to load: ``ema.``/``model.`` in a training checkpoint, none in the store."""
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in names) else "model."
    return prefix if any(k.startswith(prefix) for k in names) else ""


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _listed(items: list[str], limit: int = 5) -> str:
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_config_against_weights(
    config: dict[str, Any], shapes: dict[str, tuple[int, ...]], *, where: str | os.PathLike = "the weights"
) -> None:
    """Raise ``CheckpointError`` unless the network ``config`` describes has exactly these tensor shapes.

    ``shapes`` is the network's own state dict (keys without ``model.``/``ema.``),
    from ``weight_shapes``. The network is built on the ``meta`` device, which
    records shapes and allocates nothing; a config asking for far more
    parameters than the file holds is refused here, before any real allocation.
    """
    unet_config = _unet_config(config)
    # Even on the meta device, each module is a Python object: millions of residual
    # blocks would take minutes to build. Every residual block has at least its two
    # convolution weights, so a file with fewer tensors cannot be for this config.
    min_blocks = len(unet_config.channel_mult) * (2 * unet_config.num_res_blocks + 1) + 2
    if 2 * min_blocks > len(shapes):
        raise CheckpointError(
            f"weights in {where} do not match its config: the config asks for {min_blocks:,} residual blocks "
            f"(num_res_blocks {unet_config.num_res_blocks}, {len(unet_config.channel_mult)} levels), "
            f"but the weights hold only {len(shapes):,} tensors"
        )
    try:
        with torch.device("meta"):
            meta = ConditionalUNet(unet_config)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, AssertionError, OverflowError) as e:
        raise CheckpointError(f"invalid model config: cannot build the network it describes ({e})") from e
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    problems = []
    n_config = sum(math.prod(s) for s in expected.values())
    n_weights = sum(math.prod(s) for s in shapes.values())
    if n_config > n_weights:
        problems.append(f"the config describes {n_config:,} parameters, the weights hold {n_weights:,}")
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} [weights {_shape_str(shapes[k])}, config {_shape_str(expected[k])}]"
             for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing:
        problems.append(f"{len(missing)} tensors missing from the weights: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors in the weights: {_listed(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} tensors of another shape: {_listed(wrong, 3)}")
    if problems:
        raise CheckpointError(f"weights in {where} do not match its config: " + "; ".join(problems))


def resolve_model_path(
    name_or_path: str | os.PathLike, store: str | os.PathLike | None = None, *, allow_path: bool = True
) -> Path:
    """A store name (``default_model``) or a folder path -> the folder.

    Names are looked up only inside the store and cannot escape it (not with
    ``..``, not through a symlink). Anything with a path separator or a
    leading ``.`` is a path, which the CLI accepts; pass ``allow_path=False``
    for names from untrusted input (a web form), so only store names resolve.
    """
    s = str(name_or_path)
    p = Path(s)
    if os.sep in s or (os.altsep and os.altsep in s) or s.startswith("."):
        if not allow_path:
            raise ValueError(f"model name {s!r} is a path; only names of models in the store are accepted here")
        if p.is_dir():
            return p
        raise CheckpointError(f"model folder not found: {p}")
    validate_model_name(s)
    root = store_dir(store).resolve()
    folder = (root / s).resolve()
    if folder.parent != root:
        raise ValueError(f"model name {s!r} escapes the model store")
    if not folder.is_dir():
        available = ", ".join(list_models(store, model_type=None)) or "none"
        raise CheckpointError(f"no model named {s!r} in {root} (available: {available})")
    return folder


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL_NAME,
    *,
    store: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    allow_path: bool = True,
    model_type: str | None = "base",
) -> LoadedModel:
    """Load a store model by name, or a store/checkpoint folder by path.

    For a training checkpoint folder the EMA weights are used (``use_ema``).
    Weights are cast to float32 (the store may hold fp16). ``allow_path=False``
    accepts store names only (see ``resolve_model_path``). ``model_type``: the
    type asked for (``base``, ``sr``, or None for any); another is refused
    before anything is built (``load_sr_model`` asks for ``sr``).
    """
    folder = resolve_model_path(name_or_path, store, allow_path=allow_path)
    config = _read_json(folder / CONFIG_FILE)
    check_model_type(config, model_type, folder)
    check_sampler_defaults(config, folder)
    # Config and weights are checked against each other from the file's header and a
    # network on the meta device, so a broken or hostile folder costs nothing to refuse.
    shapes = weight_shapes(folder / WEIGHTS_FILE)
    prefix = _weights_prefix(shapes, use_ema)
    check_config_against_weights(
        config, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}, where=folder)
    model, diffusion = build_model(config)
    tensors = load_tensors(folder / WEIGHTS_FILE)
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {folder} do not match its config: {e}") from e
    # channels_last: the layout CPU (oneDNN) and CUDA convolutions are fastest in, for fp32 and bf16 alike
    model.to(device=device, memory_format=torch.channels_last).eval()
    return LoadedModel(model, diffusion, config, folder, name=folder.name, classes=config.get("classes", []))


def model_sampler(sampler_defaults: dict[str, Any]) -> str | None:
    """The sampler a model's ``sampler_defaults`` name (a name of ``core.samplers``' table, in any case),
    or None when they name none; another name is a ValueError that names the choices."""
    name = sampler_defaults.get("sampler")
    if name is None:
        return None
    return check_sampler(name.lower() if isinstance(name, str) else name)


def check_sampler_defaults(config: dict[str, Any], where: str | os.PathLike) -> None:
    """A config's ``sampler_defaults`` must be an object whose sampler (if any) is one of the table's,
    whose steps (if any) are a whole number >= 1, whose guidance scale (if any) is a finite number and
    whose guidance interval (if any) parses: ``engine.request`` resolves them without a fallback."""
    defaults = config.get("sampler_defaults", {})
    if not isinstance(defaults, dict):
        raise CheckpointError(f"{where}: sampler_defaults must be a JSON object")
    steps, guidance = defaults.get("steps"), defaults.get("guidance_scale", 1.0)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise CheckpointError(f"{where}: sampler_defaults: steps must be a whole number >= 1, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise CheckpointError(f"{where}: sampler_defaults: guidance_scale must be a finite number, got {guidance!r}")
    try:
        model_sampler(defaults)
        parse_guidance_interval(defaults.get("guidance_interval"))
    except ValueError as e:
        raise CheckpointError(f"{where}: sampler_defaults: {e}") from None


def load_sr_model(name_or_path: str | os.PathLike = "sr64", **kwargs: Any) -> LoadedModel:
    """Load a super-resolution model (``model_type`` ``sr``), with ``load_model``'s checks."""
    return load_model(name_or_path, model_type="sr", **kwargs)


def _stored_type(folder: Path) -> str:
    """The type of a stored model; an unreadable config counts as base (``load_model`` reports it)."""
    try:
        return model_type_of(json.loads((folder / CONFIG_FILE).read_text()))
    except (OSError, ValueError, CheckpointError):
        return "base"


def list_models(store: str | os.PathLike | None = None, model_type: str | None = "base") -> list[str]:
    """Names of the complete models of ``model_type`` (``base``, ``sr``; None: all) in the store, sorted."""
    root = store_dir(store)
    if not root.is_dir():
        return []
    real_root = root.resolve()
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and _NAME_RE.match(p.name) and p.resolve().parent == real_root  # no links out of the store
        and (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file()
        and (model_type is None or _stored_type(p) == model_type)
    )


class Stored(NamedTuple):
    folder: Path  # the model, under its name
    replaced: Path | None  # where the model it replaced went (in REPLACED_DIR); None when the name was new


def store_model(
    name: str,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    card: str,
    *,
    store: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
    keep_files: Sequence[str] = (),
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Stored:
    """Write a named model (weights cast to ``dtype``, config, model card) atomically: into a temporary
    folder in the store, renamed to ``name`` when complete and flushed, so a crash never leaves a half
    model under the name.

    An existing model is replaced only with ``overwrite``, and is then moved whole into
    ``REPLACED_DIR`` rather than deleted (``engine.replaced.restore`` puts it back). The files named in
    ``keep_files`` (companions such as the evaluation's classifier, which depend on the data, not on
    the weights) are copied into the new model; ``extra_tensors`` (file name -> tensors) are written
    beside the weights as safetensors.
    """
    validate_model_name(name)
    root = store_dir(store)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    exists = FileExistsError(f"model {name!r} already exists in {root} (use --overwrite to replace it)")
    if final.exists() and not overwrite:
        raise exists
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))  # unique: two exports may run at once
    try:
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()},
                  str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (tmp / CARD_FILE).write_text(card)
        for file_name, tensors in (extra_tensors or {}).items():
            if Path(file_name).name != file_name or file_name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
                raise ValueError(f"not a companion file name: {file_name!r}")
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / file_name))
        for keep in keep_files:
            if Path(keep).name == keep and (final / keep).is_file() and not (tmp / keep).exists():
                shutil.copy2(final / keep, tmp / keep)
        _flush_folder(tmp)
        replaced = None
        if final.exists() or final.is_symlink():
            if not overwrite:  # written meanwhile by another export
                raise exists
            replaced = replaced_folder(root, name)
            os.replace(final, replaced)
        try:
            os.rename(tmp, final)  # refused (not merged) if another export put a model there meanwhile
        except OSError:
            if final.exists():
                raise exists from None
            raise
        _fsync_dir(root)
        return Stored(final, replaced)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when something failed


def save_to_store(name: str, state_dict: dict[str, torch.Tensor], config: dict[str, Any], card: str,
                  **options: Any) -> Path:
    """``store_model`` for callers that want only the model's folder."""
    return store_model(name, state_dict, config, card, **options).folder


def replaced_folder(root: Path, name: str) -> Path:
    """An unused ``REPLACED_DIR/<name>-<UTC time>`` in the store ``root`` for a model about to be moved
    aside. The folder holds a ``.gitignore``: a replaced shipped model is never committed by accident."""
    base = root / REPLACED_DIR
    base.mkdir(exist_ok=True)
    if not (base / ".gitignore").exists():
        (base / ".gitignore").write_text("*\n")
    stamp = f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    return next(base / f"{stamp}{suffix}" for suffix in ("", *(f"-{i}" for i in range(1, 10**6)))
                if not (base / f"{stamp}{suffix}").exists())


# --------------------------------------------------------------------------- training checkpoints
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # The saved moments are contiguous. A channels_last parameter needs them in its own layout:
    # the fused AdamW kernels walk raw memory, so mismatched strides silently pair the wrong
    # elements (and the resumed run diverges); the other code paths just lose their fast path.
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step in a checkpoint folder's name (``ckpt-0001000`` -> 1000)."""
    m = _CKPT_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint folder name (ckpt-NNNNNNN)")
    return int(m.group(1))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flush_folder(folder: Path) -> None:
    """Flush a folder's files and its listing to disk before a rename makes them visible under their name."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def checkpoint_dirs(ckpt_root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    ckpt_root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    rng: dict[str, torch.Tensor],
    keep: int = 3,
) -> Path:
    """Write ``ckpt-<step>/`` atomically (temp folder + rename), then prune to the last ``keep``."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{step:07d}"
    tmp = root / f".tmp-ckpt-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    save_file(weights, str(tmp / WEIGHTS_FILE))
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    opt_tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in rng.items()})
    save_file(opt_tensors, str(tmp / STATE_FILE))
    full = dict(config, step=step, optimizer=opt_meta, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2))
    _flush_folder(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)  # the rename itself survives a power cut
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class TrainingState:
    step: int
    config: dict[str, Any]
    rng: dict[str, torch.Tensor]
    path: Path


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> TrainingState:
    """Restore model, EMA and optimizer from a checkpoint folder (raises CheckpointError if unusable)."""
    path = Path(path)
    config = _read_json(path / CONFIG_FILE)
    weights = load_tensors(path / WEIGHTS_FILE)
    state = load_tensors(path / STATE_FILE)
    try:
        model.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ema.")})
        if optimizer is not None:
            _load_optimizer(optimizer, state, config["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this model/optimizer: {e}") from e
    rng = {k[4:]: v for k, v in state.items() if k.startswith("rng.")}
    return TrainingState(step=int(config["step"]), config=config, rng=rng, path=path)


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(ckpt_root)
    return dirs[-1] if dirs else None


def latest_checkpoint_usable(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest checkpoint that loads; a damaged one is skipped with a warning."""
    for path in reversed(checkpoint_dirs(ckpt_root)):
        try:
            cfg = json.loads((path / CONFIG_FILE).read_text())
            load_tensors(path / WEIGHTS_FILE)
            load_tensors(path / STATE_FILE)
            int(cfg["step"])
            return path
        except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
            log.warning("skipping unusable checkpoint %s: %s", path, e)
    return None
