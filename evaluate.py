#!/usr/bin/env python3
"""How good is a model? Class accuracy and Frechet distance of its samples.

No pretrained Inception network can be downloaded here, so the yardstick is
our own: a small classifier trained on the model's training data (a few
minutes on a CPU) and kept beside the model. For each sampler setting we
generate N images per class and report

* accuracy: how often the classifier recognises the requested class
  (its accuracy on real held-out images is printed for reference);
* FD: the Frechet distance between generated and real held-out images in the
  classifier's penultimate features (lower is better; the real-vs-real
  distance of two disjoint real sets is printed as the noise floor);
* seconds per image on this machine.

With ``--inception PATH`` (pytorch-fid's ``pt_inception-2015-12-05-*.pth``)
the standard FID is reported as well.

    python evaluate.py --model default_model --data data/default32 --per-class 20
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from core.generation import generate_images
from core.prompting import snapping_encoder
from core.samplers import SAMPLERS
from dataprep.dataset import PreprocessedDataset
from engine.request import GenerationRequest, check_guide, resolve_settings
from engine.store import CheckpointError, load_model, load_tensors
from models.text_encoder import encode_prompts

log = logging.getLogger("evaluate")

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"
DEFAULT_SETTINGS = "ddpm:1000,ddim:50,dpm++:20,dpm++:10"
MAX_CLASSIFIER_WIDTH = 256  # a classifier.json asking for more is refused before any memory is allocated
MAX_CLASSIFIER_BLOCKS = 8
CONDITIONING_TARGET = 0.95  # share of class pairs apart that says a model listens to its condition


# --------------------------------------------------------------------------- the yardstick classifier
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class SmallResNet(nn.Module):
    """A small ResNet classifier for 32/64 px images in [-1, 1]: four stages of ``blocks`` basic
    blocks at widths w, 2w, 4w, 8w (the first at full resolution). ``blocks=(1, 1, 1, 1)`` is a
    ResNet-10, ``(2, 2, 2, 2)`` a ResNet-18."""

    def __init__(self, num_classes: int, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1)):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts >= 1 (one per stage), got {blocks}")
        self.config = {"num_classes": num_classes, "width": width, "blocks": list(blocks)}
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        stages, cin = [], w
        for i, n in enumerate(blocks):
            cout = w * 2 ** i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (global average pool), used for the Frechet distance."""
        return self.stages(self.stem(x)).float().mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.array(images_uint8, copy=True)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x.contiguous(memory_format=torch.channels_last)  # NHWC: the fast layout for CPU convolutions


def _augment(x: torch.Tensor, g: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Per image: a random horizontal flip and a random crop of the image padded by ``pad``
    pixels (reflect; default an eighth of the side, CIFAR's 4 px at 32 px), i.e. translations
    of up to +-``pad`` px."""
    b, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (b, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (b, 1, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2)  # channels_last memory, NCHW shape


def train_classifier(
    images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 15, batch_size: int = 128,
    lr: float = 2e-3, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1), weight_decay: float = 5e-4,
    precision: str = "fp32", seed: int = 0, device: str | torch.device = "cpu",
    on_epoch: Callable[[int, SmallResNet], None] | None = None,
) -> SmallResNet:
    """Train the yardstick on real training images (uint8 NHWC): AdamW, a one-cycle learning
    rate, flips and crops, label smoothing. ``precision="bf16"`` autocasts the forward pass to
    bfloat16 (several times faster on CPUs with AVX512-BF16 or AMX, and on GPUs); the weights
    stay fp32. ``on_epoch(epoch, model)`` is called after each epoch (e.g. to print held-out
    accuracy; the model is put back in training mode afterwards)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model = SmallResNet(num_classes, width, blocks).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(labels)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="classifier", dynamic_ncols=True)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g).numpy()
        for i in range(0, n, batch_size):
            idx = np.sort(perm[i:i + batch_size])
            x = _augment(_to_input(images[idx], device), g)
            y = torch.from_numpy(labels[idx].astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1, model)
            model.train()
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: SmallResNet, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(class logits, penultimate features) for uint8 NHWC images."""
    device = next(model.parameters()).device
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(_to_input(images[i:i + batch_size], device))
        logits.append(model.head(f).float().cpu().numpy())
        feats.append(f.double().cpu().numpy())
    return np.concatenate(logits), np.concatenate(feats)


def classify(model: SmallResNet, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, penultimate features) for uint8 NHWC images."""
    logits, feats = predict(model, images, batch_size)
    return logits.argmax(1), feats


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits (ties broken by index)."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(1).mean())


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class (NaN for a class with no images)."""
    hits = np.bincount(labels, weights=(pred == labels).astype(float), minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts


def save_classifier(model: SmallResNet, folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / CLASSIFIER_WEIGHTS))
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**model.config, **meta}, indent=2))


def load_classifier(folder: Path, device: str | torch.device = "cpu") -> tuple[SmallResNet, dict[str, Any]]:
    meta = json.loads((folder / CLASSIFIER_CONFIG).read_text())
    width, blocks, classes = meta.get("width"), meta.get("blocks", [1, 1, 1, 1]), meta.get("num_classes")
    if not (isinstance(width, int) and 1 <= width <= MAX_CLASSIFIER_WIDTH and isinstance(classes, int)
            and 1 <= classes <= 100_000 and isinstance(blocks, list) and len(blocks) == 4
            and all(isinstance(b, int) and 1 <= b <= MAX_CLASSIFIER_BLOCKS for b in blocks)):
        raise ValueError(f"{folder / CLASSIFIER_CONFIG}: not a yardstick config (width {width!r}, blocks {blocks!r}, "
                         f"num_classes {classes!r})")
    model = SmallResNet(classes, width, blocks)
    model.load_state_dict(load_tensors(folder / CLASSIFIER_WEIGHTS))
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- distances
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = samples).

    ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2)``, with the
    matrix square roots from symmetric eigendecompositions (stable, no scipy).
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
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


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


# --------------------------------------------------------------------------- evaluation
@dataclass
class Row:
    setting: str
    images: int
    accuracy: float
    fd: float
    seconds_per_image: float
    fid: float | None = None
    accuracy_se: float = 0.0  # binomial standard error of the accuracy
    fd_sd: float = 0.0  # bootstrap standard deviation of the FD over the generated images
    top5: float | None = None  # the requested class among the classifier's 5 best guesses
    class_accuracy: dict[str, float] | None = None  # top-1 accuracy of each class, by name
    conditioning: dict[str, Any] | None = None  # conditioning_check of the images (None with one image per class)


def fd_bootstrap_sd(feat: np.ndarray, ref_feat: np.ndarray, rounds: int = 50, seed: int = 0) -> float:
    """How much the FD moves when the generated set is resampled: the noise to judge differences by."""
    rng = np.random.default_rng(seed)
    return float(np.std([frechet_distance(feat[rng.integers(0, len(feat), len(feat))], ref_feat)
                         for _ in range(rounds)]))


def parse_settings(text: str) -> list[tuple[str, int]]:
    """``"ddpm:1000,dpm++:20"`` -> ``[("ddpm", 1000), ("dpm++", 20)]``."""

    out = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"bad sampler setting {part!r}: use e.g. ddpm:1000,ddim:50,dpm++:20")
        out.append((name, int(steps)))
    return out


def parse_blocks(text: str) -> tuple[int, ...]:
    """``"2,2,2,2"`` -> ``(2, 2, 2, 2)``: basic blocks in each of the classifier's four stages."""
    try:
        blocks = tuple(int(v) for v in text.split(","))
    except ValueError:
        blocks = ()
    if len(blocks) != 4 or not all(1 <= b <= MAX_CLASSIFIER_BLOCKS for b in blocks):
        raise ValueError(f"bad classifier blocks {text!r}: four counts in 1..{MAX_CLASSIFIER_BLOCKS}, e.g. 1,1,1,1")
    return blocks


def parse_snaps(text: str) -> list[float]:
    """``"0,0.5"`` -> ``[0.0, 0.5]``: snap strengths in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad --snap {text!r}: use strengths in [0, 1], e.g. 0,0.5") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"bad --snap {text!r}: use strengths in [0, 1], e.g. 0,0.5")
    return values


def generate_per_class(lm: Any, sampler: str, steps: int, per_class: int, guidance: float, seed: int,
                       batch_size: int, device: torch.device,
                       encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                       prompts: Sequence[str] | None = None, precision: str = "fp32",
                       guidance_interval: tuple[float, float] | None = None,
                       guide: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``per_class`` images of every class prompt (or of each of ``prompts``), the j-th image of
    every prompt from the same seed ``seed + j`` (so the conditioning check can compare classes
    drawn from one noise); returns (images, prompt index of each image, seconds). ``guide``: a
    weaker ``LoadedModel`` guiding in place of the unconditional branch (autoguidance)."""

    prompts = list(prompts) if prompts else [c["prompt"] for c in lm.classes]
    labels = np.repeat(np.arange(len(prompts)), per_class)
    seeds = seed + np.tile(np.arange(per_class), len(prompts))
    images = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(labels), batch_size), desc=f"{sampler} {steps}", dynamic_ncols=True):
        chunk = labels[i:i + batch_size]
        res = generate_images(lm.model, lm.diffusion, [prompts[j] for j in chunk], num_images=len(chunk),
                                sampler=sampler, num_steps=steps, guidance_scale=guidance,
                                seeds=seeds[i:i + batch_size].tolist(), encode_fn=encode_fn, device=device,
                                precision=precision, guidance_interval=guidance_interval,
                                guide_model=guide.model if guide else None,
                                guide_diffusion=guide.diffusion if guide else None)
        images.append(res.images)
    return np.concatenate(images), labels, time.perf_counter() - start


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


def read_free_text(path: str | Path, class_names: Sequence[str], skip_unknown: bool = False) -> list[tuple[str, int]]:
    """``prompt<TAB>class name`` lines (``#`` comments, blank lines ignored) -> (prompt, class index).
    ``skip_unknown``: leave out lines whose class the model does not have (one TSV for several models)."""
    lower = [n.lower() for n in class_names]
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompt, sep, name = line.partition("\t")
        if skip_unknown and sep and prompt.strip() and name.strip().lower() not in lower:
            continue
        if not sep or not prompt.strip() or name.strip().lower() not in lower:
            raise ValueError(f"{path}:{n}: expected 'prompt<TAB>class' with a class of the model "
                             f"({', '.join(class_names)}), got {line!r}")
        pairs.append((prompt.strip(), lower.index(name.strip().lower())))
    if not pairs:
        raise ValueError(f"{path} has no prompts")
    return pairs


def free_text_rows(lm: Any, clf: "SmallResNet", pairs: Sequence[tuple[str, int]], *, per_prompt: int, sampler: str,
                   steps: int, guidance: float, seed: int, batch_size: int, device: torch.device,
                   encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                   yardstick: "YardstickClasses | None" = None) -> list[dict[str, Any]]:
    """Do free-text prompts near a class name land on that class? One row per prompt."""
    yardstick = yardstick or YardstickClasses.identity(lm.class_names)
    images, idx, _ = generate_per_class(lm, sampler, steps, per_prompt, guidance, seed, batch_size, device, encode_fn,
                                        prompts=[p for p, _ in pairs])
    pred, _ = classify(clf, images)
    rows = []
    for k, (prompt, cls) in enumerate(pairs):
        got = pred[idx == k]
        top = np.bincount(got, minlength=len(yardstick.names)).argmax()
        rows.append({"prompt": prompt, "class": lm.classes[cls]["name"], "images": int(len(got)),
                     "accuracy": float((got == yardstick.of_model[cls]).mean()), "most_seen": yardstick.names[int(top)]})
    return rows


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
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def score(epoch: int, model: SmallResNet) -> None:
        logits, _ = predict(model, val_images)
        curve.append({"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1),
                      "val_accuracy": float((logits.argmax(1) == val_labels).mean()),
                      "val_top5": top_k_accuracy(logits, val_labels, 5)})
        log.info("epoch %d: held-out top-1 %.1f%%, top-5 %.1f%% (%.0f s)", epoch, 100 * curve[-1]["val_accuracy"],
                 100 * curve[-1]["val_top5"], curve[-1]["seconds"])

    clf = train_classifier(images, labels, train.num_classes, epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, width=recipe.width, blocks=recipe.blocks, weight_decay=recipe.weight_decay,
                           precision=recipe.precision, device=device, seed=seed, on_epoch=score)
    final = curve[-1]
    meta = {"data_dir": str(train.root), "epochs": recipe.epochs, "train_images": int(len(labels)),
            "val_accuracy": final["val_accuracy"], "val_top5": final["val_top5"], "val_images": int(len(val_labels)),
            "train_seconds": final["seconds"], "recipe": asdict(recipe), "curve": curve,
            "image_size": train.image_size, "classes": [c["name"] for c in train.classes]}
    save_classifier(clf, folder, meta)
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


def evaluate(
    lm: Any, data_dir: str | Path, settings: Sequence[tuple[str, int]], *, per_class: int = 20,
    guidance: float = 3.0, seed: int = 0, batch_size: int = 50, classifier_epochs: int = 15,
    retrain_classifier: bool = False, inception: str | None = None, device: str | torch.device = "cpu",
    encode_fn: Callable[[list[str]], np.ndarray] | None = None, classifier_dir: Path | None = None,
    free_text: Sequence[tuple[str, int]] = (), free_text_setting: tuple[str, int] = ("dpm++", 20),
    precision: str = "fp32", snaps: Sequence[float] = (0.0,), guidance_interval: tuple[float, float] | None = None,
    free_text_per_prompt: int = 0, guide: Any = None,
) -> dict[str, Any]:
    """Run the whole evaluation; returns a dict with the reference figures and one Row per setting."""

    device = torch.device(device)
    train = PreprocessedDataset(data_dir, split="train")
    val = PreprocessedDataset(data_dir, split="val")
    data_names = [c["name"] for c in train.classes]
    in_data = class_positions(lm.class_names, data_names, f"the data in {data_dir}")
    if len(val) < 2:
        raise ValueError(f"{data_dir} has no held-out split: preprocess it with --val-fraction > 0")
    folder = classifier_dir or lm.path
    if retrain_classifier or not (folder / CLASSIFIER_WEIGHTS).exists():
        fit_yardstick(train, val, folder, recipe=YardstickRecipe(epochs=classifier_epochs), seed=seed, device=device)
    clf, meta = load_classifier(folder, device)
    clf_names = meta.get("classes") or (data_names if meta["num_classes"] == len(data_names) else None)
    if clf_names is None:
        raise ValueError(f"the yardstick in {folder} does not list its classes")
    yardstick = YardstickClasses.match(lm.class_names, clf_names, f"the yardstick in {folder}")

    # The real photos of the model's classes (all of the data's when it has only those), labelled as the model's.
    train_images, train_labels = model_subset(train, in_data)
    val_images, val_labels = model_subset(val, in_data)
    val_logits, val_feat = predict(clf, val_images)
    val_pred = yardstick.to_model(val_logits.argmax(1))
    # Noise floor: FD between the held-out set and an equally sized, class-balanced real training subset.
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(train_labels == c),
                                                 size=min(per_class, int((train_labels == c).sum())),
                                                 replace=False) for c in range(len(lm.classes))]))
    _, ref_feat = classify(clf, train_images[ref_idx])
    inc = InceptionFeatures(inception, device) if inception else None
    inc_val = inc(val_images) if inc else None
    chance = 1.0 / len(clf_names)
    result: dict[str, Any] = {
        "model": lm.name, "data": str(data_dir), "per_class": per_class, "seed": seed, "guidance": guidance,
        "precision": precision, "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "guide": guide.name if guide else None,
        "classes": len(lm.classes), "yardstick_classes": len(clf_names), "real_val_images": int(len(val_labels)),
        "real_val_accuracy": float((val_pred == val_labels).mean()),
        "real_val_top5": top_k_accuracy(val_logits, yardstick.of_model[val_labels], 5),
        "real_vs_real_fd": frechet_distance(ref_feat, val_feat),
        "feature_dim": clf.feature_dim,
        "classifier": {k: meta[k] for k in ("epochs", "val_accuracy", "val_top5", "width", "blocks") if k in meta},
        "real_conditioning": real_conditioning(val_labels, val_feat, val_pred, len(lm.classes), per_class, chance),
        "rows": [],
    }
    if inc:
        result["real_vs_real_fid"] = frechet_distance(inc(train_images[ref_idx]), inc_val)
    for sampler, steps in settings:
        images, labels, secs = generate_per_class(lm, sampler, steps, per_class, guidance, seed, batch_size, device,
                                                  encode_fn, precision=precision, guidance_interval=guidance_interval,
                                                  guide=guide)
        logits, feat = predict(clf, images)
        pred = yardstick.to_model(logits.argmax(1))
        acc = float((pred == labels).mean())
        per_cls = per_class_accuracy(pred, labels, len(lm.classes))
        row = Row(f"{sampler} {steps}", len(images), acc, frechet_distance(feat, val_feat), secs / len(images),
                  frechet_distance(inc(images), inc_val) if inc else None,
                  accuracy_se=math.sqrt(acc * (1 - acc) / len(images)), fd_sd=fd_bootstrap_sd(feat, val_feat, seed=seed),
                  top5=top_k_accuracy(logits, yardstick.of_model[labels], 5),
                  class_accuracy={c["name"]: float(a) for c, a in zip(lm.classes, per_cls)},
                  conditioning=named_pairs(conditioning_check(feat, pred, len(lm.classes), per_class, chance=chance),
                                           lm.class_names)
                  if per_class >= 2 else None)
        result["rows"].append(asdict(row))
        log.info("%s: accuracy %.3f, FD %.2f, %.3f s/image", row.setting, row.accuracy, row.fd, row.seconds_per_image)
    if free_text:
        result["free_text_setting"] = f"{free_text_setting[0]} {free_text_setting[1]}"
        result["free_text"] = []
        for snap in snaps:  # the same prompts and seeds, with and without pulling them toward the classes
            enc = encode_fn
            if snap > 0:
                enc = snapping_encoder(encode_fn or encode_prompts, [c["prompt"] for c in lm.classes], snap)
            rows = free_text_rows(lm, clf, free_text, per_prompt=free_text_per_prompt or per_class,
                                  sampler=free_text_setting[0],
                                  steps=free_text_setting[1], guidance=guidance, seed=seed,
                                  batch_size=batch_size, device=device, encode_fn=enc, yardstick=yardstick)
            result["free_text"] += [dict(r, snap=snap) for r in rows]
    return result


def degrade(images: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """Real photos made worse in known ways, to see whether a yardstick can tell: ``down16`` / ``down8``
    (bicubic down to 16 or 8 px and back: blur), ``noise`` (Gaussian, sd 0.2 of the [-1, 1] range),
    ``blob`` (every pixel the image's mean colour)."""
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float()
    size = x.shape[-1]
    if how.startswith("down"):
        small = F.interpolate(x, size=int(how[4:]), mode="bicubic", antialias=True, align_corners=False)
        x = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
    elif how == "noise":
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 0.2 * 127.5
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


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per sampler setting against the real held-out photos (top-1 and top-5 as
    a share of real, FD as a multiple of the real-vs-real floor at the same count), the
    conditioning check, and the best and worst classes."""
    fid = "real_vs_real_fid" in result
    real1, real5, floor = result["real_val_accuracy"], result.get("real_val_top5"), result["real_vs_real_fd"]
    head = ("| sampler / steps | images | top-1 | top-1 / real | top-5 | top-5 / real | FD (classifier feats) | FD / floor |"
            " classes apart (pairs) | own class above chance |" + (" FID |" if fid else "") + " s / image (this CPU) |")
    lines = [head, "|" + " --- |" * (11 + fid)]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def ratio(x: float | None, ref: float | None) -> str:
        return "-" if x is None or not ref else f"{x / ref:.2f}"

    def cond(c: dict[str, Any] | None) -> tuple[str, str]:
        return ("-", "-") if not c else (f"{c['pairs_apart']:.1%}", f"{c['classes_above_chance']:.1%}")

    for r in result["rows"]:
        apart, chance = cond(r.get("conditioning"))
        lines.append(f"| {r['setting']} | {r['images']} | {r['accuracy']:.1%} ± {r.get('accuracy_se', 0):.1%} |"
                     f" {ratio(r['accuracy'], real1)} | {pct(r.get('top5'))} | {ratio(r.get('top5'), real5)} |"
                     f" {r['fd']:.2f} ± {r.get('fd_sd', 0):.2f} | {r['fd'] / floor:.1f}x | {apart} | {chance} |"
                     + (f" {r['fid']:.1f} |" if fid else "") + f" {r['seconds_per_image']:.3f} |")
    apart, chance = cond(result.get("real_conditioning"))
    lines.append(f"| real held-out photos (reference) | {result['real_val_images']} | {real1:.1%} | 1.00 | {pct(real5)} |"
                 f" 1.00 | {floor:.2f} (real vs real) | 1.0x | {apart} | {chance} |"
                 + (f" {result['real_vs_real_fid']:.1f} |" if fid else "") + " - |")
    lines.append("")
    band = (f" (only for sigma in ({result['guidance_interval'][0]:g}, {result['guidance_interval'][1]:g}])"
            if result.get("guidance_interval") else "")
    clf = result.get("classifier", {})
    lines.append(f"{result['classes']} classes, {result['per_class']} images per class per setting (the j-th image of "
                 f"every class from seed {result.get('seed', 0)} + j), guidance {result['guidance']}{band}. Yardstick: "
                 f"width {clf.get('width', '?')}, blocks {clf.get('blocks', [1, 1, 1, 1])}, feature dim "
                 f"{result['feature_dim']}. ± is one standard error: binomial for accuracy, bootstrap over the generated "
                 "images for FD. The floor is the FD between real training photos (as many as generated) and the "
                 "held-out photos.")
    for r in result["rows"]:
        c = r.get("conditioning")
        if c:
            lines += ["", f"Conditioning check ({r['setting']}, {c['seeds']} seeds x {result['classes']} classes): "
                      f"two classes from one seed are farther apart than two seeds of one class for "
                      f"**{c['pairs_apart']:.1%}** of {c['class_pairs']} class pairs ("
                      f"{'meets' if c['pairs_apart'] >= CONDITIONING_TARGET else 'FAILS'} the "
                      f"{CONDITIONING_TARGET:.0%} target; median distance "
                      f"between classes / within a class {c['distance_ratio']:.2f}); "
                      f"{c['classes_above_chance']:.1%} of classes are put in their own class above chance "
                      + (f"({c['hits_needed']} of {c['seeds']} needed)." if c["hits_needed"]
                         else "(no count is, with so few seeds).") + f" Closest pairs: {', '.join(c['closest_pairs'])}."]
    ranked = [r for r in result["rows"] if r.get("class_accuracy")]
    if ranked and len(ranked[0]["class_accuracy"]) > 10:
        r = ranked[0]
        order = sorted(r["class_accuracy"].items(), key=lambda kv: (-kv[1], kv[0]))
        show = lambda part: ", ".join(f"{name} {acc:.0%}" for name, acc in part)  # noqa: E731
        lines += ["", f"Best 10 classes ({r['setting']}): {show(order[:10])}.",
                  f"Worst 10 classes ({r['setting']}): {show(order[-10:][::-1])}."]
    if result.get("free_text"):
        lines.append("")
        names = [r for r in result["rows"] if r["setting"] == result.get("free_text_setting")]
        for snap in sorted({f.get("snap", 0.0) for f in result["free_text"]}):
            rows = [f for f in result["free_text"] if f.get("snap", 0.0) == snap]
            acc = float(np.mean([f["accuracy"] for f in rows]))
            vs = (f" ({acc / names[0]['accuracy']:.0%} of the class-name prompts' {names[0]['accuracy']:.1%})"
                  if names and names[0]["accuracy"] > 0 else "")
            lines.append(f"Free text, snap {snap:g}: {len(rows)} prompts land on their class {acc:.1%} of the time{vs}.")
    if result.get("free_text"):
        lines += ["", f"Free text ({result['free_text_setting']}, {result['free_text'][0]['images']} images per prompt):", "",
                  "| prompt | meant class | classified as that class | most often classified as |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['prompt'].replace('|', '/')}{' (snap %g)' % r['snap'] if r.get('snap') else ''} | {r['class']} |"
                  f" {r['accuracy']:.0%} | {r['most_seen']} |" for r in result["free_text"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default_model", help="store name or model folder")
    parser.add_argument("--store", default=None, help="model store directory")
    parser.add_argument("--data", default=None, help="the model's preprocessed data (default: from its config)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"sampler:steps list (default {DEFAULT_SETTINGS})")
    parser.add_argument("--per-class", type=int, default=20, help="generated images per class per setting")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's sampler_defaults, else 3.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--retrain-classifier", action="store_true")
    parser.add_argument("--classifier", default=None,
                        help="folder of the yardstick classifier (default: beside the model); trained there if missing")
    parser.add_argument("--free-text", default=None,
                        help="TSV of 'prompt<TAB>class' lines: do free-text prompts land on their class?")
    parser.add_argument("--free-text-per-prompt", type=int, default=0, metavar="N",
                        help="images per free-text prompt (default: --per-class)")
    parser.add_argument("--free-text-skip-unknown", action="store_true",
                        help="leave out free-text lines whose class the model does not have")
    parser.add_argument("--snap", default="0", metavar="S[,S..]",
                        help="free text also with its embedding pulled toward the model's classes by each strength "
                             "in [0, 1] (e.g. 0,0.5: with and without)")
    parser.add_argument("--free-text-setting", default="dpm++:20", help="sampler:steps for the free-text prompts")
    parser.add_argument("--classifier-only", action="store_true",
                        help="only train the yardstick on --data into --classifier and print its held-out accuracy")
    parser.add_argument("--classifier-per-class", type=int, default=0, metavar="N",
                        help="with --classifier-only: train on N images per class (default 0: all)")
    parser.add_argument("--classifier-width", type=int, default=32, help="with --classifier-only: base channels w")
    parser.add_argument("--classifier-blocks", default="1,1,1,1", metavar="N,N,N,N",
                        help="with --classifier-only: basic blocks per stage (1,1,1,1 = ResNet-10; 2,2,2,2 = ResNet-18)")
    parser.add_argument("--classifier-batch-size", type=int, default=128)
    parser.add_argument("--classifier-lr", type=float, default=2e-3, help="peak of the one-cycle learning rate")
    parser.add_argument("--classifier-weight-decay", type=float, default=5e-4)
    parser.add_argument("--classifier-precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast for training the classifier (fast on AVX512-BF16/AMX CPUs and GPUs)")
    parser.add_argument("--yardstick-check", action="store_true",
                        help="only score --classifier on --data's real held-out photos and on degraded copies of them "
                             f"({', '.join(DEGRADATIONS)}): can it tell good from bad?")
    parser.add_argument("--inception", default=None, help="pytorch-fid Inception weights (.pth) for standard FID")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="sampling precision (default fp32; compare with bf16 for parity)")
    parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="apply guidance only for noise levels sigma in (LO, HI] (default: the model's band; "
                             "'none': every step)")
    parser.add_argument("--guide", default=None, metavar="MODEL",
                        help="autoguidance: guide with this weaker model of the store instead of the unconditional "
                             "branch (same image size and schedule)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="write the table (Markdown) and JSON here (default output_ImageNet/eval/<model>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.classifier_only:
        return _classifier_only(args, device)
    if args.yardstick_check:
        return _yardstick_check(args, device)
    try:
        lm = load_model(args.model, store=args.store, device=device)
        data = args.data or lm.config.get("data", {}).get("dir")
        if not data:
            raise ValueError("the model's config names no data folder: pass --data")
        guide = load_model(args.guide, store=args.store, device=device) if args.guide else None
        if guide:
            check_guide(lm, guide)
        free_text = (read_free_text(args.free_text, lm.class_names, skip_unknown=args.free_text_skip_unknown)
                     if args.free_text else ())
        # scored at the model's own guidance unless told otherwise: the rule the CLI and the app follow
        chosen = resolve_settings(lm, GenerationRequest(guidance=args.guidance, guidance_interval=args.guidance_interval))
        result = evaluate(lm, data, parse_settings(args.settings), per_class=args.per_class, guidance=chosen.guidance,
                          seed=args.seed, batch_size=args.batch_size, classifier_epochs=args.classifier_epochs,
                          retrain_classifier=args.retrain_classifier, inception=args.inception, device=device,
                          classifier_dir=Path(args.classifier) if args.classifier else None,
                          free_text=free_text, free_text_setting=parse_settings(args.free_text_setting)[0],
                          precision=args.precision, snaps=parse_snaps(args.snap),
                          guidance_interval=chosen.guidance_interval,
                          free_text_per_prompt=args.free_text_per_prompt, guide=guide)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table(result)
    print(table)
    out = Path(args.out or f"output_ImageNet/eval/{lm.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.md").write_text(table + "\n")
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'evaluation.md'} and {out / 'evaluation.json'}")
    return 0


def _yardstick_check(args: argparse.Namespace, device: torch.device) -> int:
    if not args.data or not args.classifier:
        print("error: --yardstick-check needs --data (a preprocessed folder) and --classifier", file=sys.stderr)
        return 2
    try:
        train = PreprocessedDataset(args.data, split="train")
        val = PreprocessedDataset(args.data, split="val")
        clf, meta = load_classifier(Path(args.classifier), device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = yardstick_check(clf, train, val, args.seed)
    print(f"yardstick {args.classifier} (width {meta['width']}, blocks {meta.get('blocks', [1, 1, 1, 1])}) on "
          f"{len(val)} held-out photos of {args.data}; FD against as many real training photos\n")
    print("| images | top-1 | top-5 | FD |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['images']} | {r['top1']:.1%} | {r['top5']:.1%} | {r['fd']:.2f} |")
    return 0


def _classifier_only(args: argparse.Namespace, device: torch.device) -> int:
    if not args.data or not args.classifier:
        print("error: --classifier-only needs --data (a preprocessed folder) and --classifier (where to save it)",
              file=sys.stderr)
        return 2
    try:
        train = PreprocessedDataset(args.data, split="train")
        val = PreprocessedDataset(args.data, split="val")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(val) < 2:
        print(f"error: {args.data} has no held-out split: preprocess it with --val-fraction > 0", file=sys.stderr)
        return 2
    try:
        recipe = YardstickRecipe(epochs=args.classifier_epochs, width=args.classifier_width,
                                 blocks=parse_blocks(args.classifier_blocks), batch_size=args.classifier_batch_size,
                                 lr=args.classifier_lr, weight_decay=args.classifier_weight_decay,
                                 precision=args.classifier_precision)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = fit_yardstick(train, val, Path(args.classifier), recipe=recipe, seed=args.seed, device=device,
                         per_class=args.classifier_per_class)
    for point in meta["curve"]:
        print(f"epoch {point['epoch']:3d}  {point['seconds']:7.0f} s  top-1 {point['val_accuracy']:.1%}  "
              f"top-5 {point['val_top5']:.1%}")
    print(f"yardstick on {len(val)} held-out images of {train.num_classes} classes: top-1 {meta['val_accuracy']:.1%}, "
          f"top-5 {meta['val_top5']:.1%} ({meta['train_images']} training images, {meta['epochs']} epochs, "
          f"{meta['train_seconds']:.0f} s); saved in {args.classifier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
