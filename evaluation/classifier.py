"""The yardstick classifiers: a small ResNet (the first yardstick) or a VGG-style plain network (the
second), trained on a model's own training data (no pretrained network can be downloaded here), their
training with flips and crops or stronger augmentation (resumable per epoch), prediction, accuracy
measures, and saving and loading it (a ``classifier.json`` beside ``classifier.safetensors``;
loading refuses a config that asks for an oversized network before allocating anything)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from engine.store import load_tensors
from evaluation.train_state import load_train_state, save_train_state

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"
MAX_CLASSIFIER_WIDTH = 256  # a classifier.json asking for more is refused before any memory is allocated
MAX_CLASSIFIER_BLOCKS = 8

log = logging.getLogger("evaluate")


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


class PooledClassifier(nn.Module):
    """What both yardstick networks share: a convolutional trunk, a global average pool (the features
    the Frechet distance uses) and a linear head."""

    head: nn.Linear
    # Score each image and its mirror image and pool both views' features (so the logits are averaged
    # too: the head is linear). Set from ``classifier.json``'s "mirror_average"; training leaves it off.
    mirror_average: bool = False

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (global average pool), used for the Frechet distance."""
        def pool(view: torch.Tensor) -> torch.Tensor:
            return self.trunk(view).float().mean(dim=(2, 3))

        return (pool(x) + pool(x.flip(-1))) / 2 if self.mirror_average else pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _four_stages(blocks: Sequence[int], what: str) -> tuple[int, ...]:
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be four counts >= 1 ({what} per stage), got {blocks}")
    return blocks


class SmallResNet(PooledClassifier):
    """A small ResNet classifier for 32/64 px images in [-1, 1]: four stages of ``blocks`` basic
    blocks at widths w, 2w, 4w, 8w (the first at full resolution). ``blocks=(1, 1, 1, 1)`` is a
    ResNet-10, ``(2, 2, 2, 2)`` a ResNet-18."""

    def __init__(self, num_classes: int, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1)):
        super().__init__()
        blocks = _four_stages(blocks, "basic blocks")
        self.config = {"arch": "resnet", "num_classes": num_classes, "width": width, "blocks": list(blocks)}
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

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class PlainConvNet(PooledClassifier):
    """A VGG-style classifier with no skip connections: four stages of 3x3 conv + BatchNorm + ReLU
    (one conv in the first stage, two in the others) at widths w, 2w, 4w, 8w, 2x2 max pooling between
    stages. The second yardstick: a network unlike the ResNet (no residual path, max pooling, deeper at
    low resolution), so the two share fewer blind spots."""

    def __init__(self, num_classes: int, width: int = 48, blocks: Sequence[int] = (1, 2, 2, 2)):
        super().__init__()
        blocks = _four_stages(blocks, "convs")
        self.config = {"arch": "plain", "num_classes": num_classes, "width": width, "blocks": list(blocks)}
        layers: list[nn.Module] = []
        cin = 3
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


CLASSIFIER_ARCHS: dict[str, type[PooledClassifier]] = {"resnet": SmallResNet, "plain": PlainConvNet}
Classifier = PooledClassifier


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


def _augment_strong(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: a flip, a random resized crop (area 50-100%, aspect 3/4-4/3, bilinear), colour
    jitter (brightness, contrast and saturation each scaled by 0.7-1.3) and, for a quarter of the
    images, one erased rectangle (2-25% of the area) filled with noise. The second yardstick's
    augmentation: it must recognise shapes under colour and framing changes, so it leans less on a
    class's average colour than a flip-and-shift classifier does."""
    b, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731 - all draws from one generator, in order
    flip = (u(b) < 0.5).float() * 2 - 1
    area, log_aspect = 0.5 + 0.5 * u(b), (u(b) * 2 - 1) * math.log(4 / 3)
    sx = torch.sqrt(area * log_aspect.exp()).clamp(max=1.0)
    sy = torch.sqrt(area / log_aspect.exp()).clamp(max=1.0)
    tx, ty = (u(b) * 2 - 1) * (1 - sx), (u(b) * 2 - 1) * (1 - sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta.to(x.device), [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright, contrast, sat = (0.7 + 0.6 * u(3, b)).to(x.device)[:, :, None, None, None]
    x = (x + 1) / 2 * bright
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = grey + (x - grey) * sat
    x = (x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)
    x = x.clamp(0, 1) * 2 - 1
    erase, e_area, e_log_aspect = u(b) < 0.25, 0.02 + 0.23 * u(b), (u(b) * 2 - 1) * math.log(3.3)
    eh = (torch.sqrt(e_area * e_log_aspect.exp()) * h).round().clamp(1, h).long()
    ew = (torch.sqrt(e_area / e_log_aspect.exp()) * w).round().clamp(1, w).long()
    y0, x0 = (u(b) * (h - eh + 1)).long(), (u(b) * (w - ew + 1)).long()
    noise = torch.randn(b, 3, h, w, generator=g).clamp(-1, 1).to(x.device)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    box = (((rows >= y0[:, None]) & (rows < (y0 + eh)[:, None]))[:, :, None]
           & ((cols >= x0[:, None]) & (cols < (x0 + ew)[:, None]))[:, None, :] & erase[:, None, None])
    x = torch.where(box[:, None].to(x.device), noise, x)
    return x.contiguous(memory_format=torch.channels_last)


AUGMENTATIONS = ("flip-shift", "strong")
TRAIN_STATE = "training_state"  # <folder>/training_state.{safetensors,json}: a classifier's training, resumable per epoch


def train_classifier(
    images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 15, batch_size: int = 128,
    lr: float = 2e-3, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1), weight_decay: float = 5e-4,
    precision: str = "fp32", seed: int = 0, device: str | torch.device = "cpu",
    on_epoch: Callable[[int, Classifier], None] | None = None, arch: str = "resnet",
    augmentation: str = "flip-shift", state_path: Path | None = None,
    state_extra: Callable[[], dict[str, Any]] | None = None,
) -> Classifier:
    """Train the yardstick on real training images (uint8 NHWC): AdamW, a one-cycle learning
    rate, flips and crops, label smoothing. ``precision="bf16"`` autocasts the forward pass to
    bfloat16 (several times faster on CPUs with AVX512-BF16 or AMX, and on GPUs); the weights
    stay fp32. ``on_epoch(epoch, model)`` is called after each epoch (e.g. to print held-out
    accuracy; the model is put back in training mode afterwards). ``arch`` picks the network
    (``CLASSIFIER_ARCHS``), ``augmentation`` the per-image augmentation (``AUGMENTATIONS``). With
    ``state_path``, the training state is saved there after every epoch and a run that finds one
    resumes after its last epoch (same result as an unbroken run); ``state_extra()`` is saved beside it
    (e.g. the held-out curve so far)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"arch must be one of {sorted(CLASSIFIER_ARCHS)}, got {arch!r}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model = CLASSIFIER_ARCHS[arch](num_classes, width, blocks).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(labels)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    first_epoch = 0
    if state_path is not None and state_path.with_suffix(".json").exists():
        first_epoch = load_train_state(state_path, model, opt, sched, g)["epoch"]
        log.info("resuming the classifier's training after epoch %d (%s)", first_epoch, state_path)
    augment = (lambda x: _augment(x, g)) if augmentation == "flip-shift" else (lambda x: _augment_strong(x, g))
    model.train()
    bar = tqdm(total=steps, initial=first_epoch * math.ceil(n / batch_size), desc="classifier", dynamic_ncols=True)
    for epoch in range(first_epoch, epochs):
        perm = torch.randperm(n, generator=g).numpy()
        for i in range(0, n, batch_size):
            idx = np.sort(perm[i:i + batch_size])
            x = augment(_to_input(images[idx], device))
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
        if state_path is not None:
            save_train_state(state_path, epoch + 1, model, opt, sched, g, state_extra() if state_extra else {})
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(class logits, penultimate features) for uint8 NHWC images."""
    device = next(model.parameters()).device
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(_to_input(images[i:i + batch_size], device))
        logits.append(model.head(f).float().cpu().numpy())
        feats.append(f.double().cpu().numpy())
    return np.concatenate(logits), np.concatenate(feats)


def classify(model: Classifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
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


def save_classifier(model: Classifier, folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / CLASSIFIER_WEIGHTS))
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**model.config, **meta}, indent=2))


def build_classifier(meta: dict[str, Any], source: str = "classifier config") -> Classifier:
    """The untrained network a ``classifier.json`` describes (``source`` names it in errors). The one
    place a config becomes a network: a config asking for more than ``MAX_CLASSIFIER_WIDTH`` channels,
    ``MAX_CLASSIFIER_BLOCKS`` blocks per stage or 100,000 classes is refused before any memory is allocated."""
    width, blocks, classes = meta.get("width"), meta.get("blocks", [1, 1, 1, 1]), meta.get("num_classes")
    mirror = meta.get("mirror_average", False)
    arch = meta.get("arch", "resnet")  # classifiers saved before the second yardstick are all ResNets
    if not (arch in CLASSIFIER_ARCHS and isinstance(width, int) and 1 <= width <= MAX_CLASSIFIER_WIDTH and isinstance(classes, int)
            and 1 <= classes <= 100_000 and isinstance(blocks, list) and len(blocks) == 4
            and all(isinstance(b, int) and 1 <= b <= MAX_CLASSIFIER_BLOCKS for b in blocks)
            and isinstance(mirror, bool)):
        raise ValueError(f"{source}: not a yardstick config (arch {arch!r}, width {width!r}, blocks {blocks!r}, "
                         f"num_classes {classes!r}, mirror_average {mirror!r})")
    model = CLASSIFIER_ARCHS[arch](classes, width, blocks)
    model.mirror_average = mirror
    return model


def load_classifier(folder: Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    meta = json.loads((folder / CLASSIFIER_CONFIG).read_text())
    model = build_classifier(meta, str(folder / CLASSIFIER_CONFIG))
    model.load_state_dict(load_tensors(folder / CLASSIFIER_WEIGHTS))
    return model.to(device).eval(), meta
