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
from torch import nn
from tqdm import tqdm

log = logging.getLogger("evaluate")

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"
DEFAULT_SETTINGS = "ddpm:1000,ddim:50,dpm++:20,dpm++:10"


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
    """A ResNet-10-ish classifier for 32/64 px images in [-1, 1]."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width}
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2),
                                    BasicBlock(4 * w, 8 * w, 2))
        self.head = nn.Linear(8 * w, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (global average pool), used for the Frechet distance."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(images_uint8, copy=True)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and +-2 px translations (reflect padding)."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[:, :, dy:dy + h, dx:dx + w]


def train_classifier(
    images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 15, batch_size: int = 128,
    lr: float = 2e-3, width: int = 32, seed: int = 0, device: str | torch.device = "cpu",
) -> SmallResNet:
    """Train the yardstick on real training images (uint8 NHWC) with AdamW + cosine LR."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = SmallResNet(num_classes, width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    n = len(labels)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="classifier", dynamic_ncols=True)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).numpy()
        for i in range(0, n, batch_size):
            idx = np.sort(perm[i:i + batch_size])
            x = _augment(_to_input(images[idx], device), g)
            y = torch.from_numpy(labels[idx].astype(np.int64)).to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
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
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / CLASSIFIER_WEIGHTS))
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**model.config, **meta}, indent=2))


def load_classifier(folder: Path, device: str | torch.device = "cpu") -> tuple[SmallResNet, dict[str, Any]]:
    from model_store import load_tensors

    meta = json.loads((folder / CLASSIFIER_CONFIG).read_text())
    model = SmallResNet(meta["num_classes"], meta["width"])
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
        import pytorch_fid.inception as fid_inception

        from model_store import load_tensors

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


def fd_bootstrap_sd(feat: np.ndarray, ref_feat: np.ndarray, rounds: int = 50, seed: int = 0) -> float:
    """How much the FD moves when the generated set is resampled: the noise to judge differences by."""
    rng = np.random.default_rng(seed)
    return float(np.std([frechet_distance(feat[rng.integers(0, len(feat), len(feat))], ref_feat)
                         for _ in range(rounds)]))


def parse_settings(text: str) -> list[tuple[str, int]]:
    """``"ddpm:1000,dpm++:20"`` -> ``[("ddpm", 1000), ("dpm++", 20)]``."""
    from diffusion import SAMPLERS

    out = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"bad sampler setting {part!r}: use e.g. ddpm:1000,ddim:50,dpm++:20")
        out.append((name, int(steps)))
    return out


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
                       guidance_interval: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``per_class`` images of every class prompt (or of each of ``prompts``);
    returns (images, prompt index of each image, seconds)."""
    import diffusion as D

    prompts = list(prompts) if prompts else [c["prompt"] for c in lm.classes]
    labels = np.repeat(np.arange(len(prompts)), per_class)
    images = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(labels), batch_size), desc=f"{sampler} {steps}", dynamic_ncols=True):
        chunk = labels[i:i + batch_size]
        res = D.generate_images(lm.model, lm.diffusion, [prompts[j] for j in chunk], num_images=len(chunk),
                                sampler=sampler, num_steps=steps, guidance_scale=guidance, seed=seed + i,
                                encode_fn=encode_fn, device=device, precision=precision,
                                guidance_interval=guidance_interval)
        images.append(res.images)
    return np.concatenate(images), labels, time.perf_counter() - start


def read_free_text(path: str | Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """``prompt<TAB>class name`` lines (``#`` comments, blank lines ignored) -> (prompt, class index)."""
    lower = [n.lower() for n in class_names]
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompt, sep, name = line.partition("\t")
        if not sep or not prompt.strip() or name.strip().lower() not in lower:
            raise ValueError(f"{path}:{n}: expected 'prompt<TAB>class' with a class of the model "
                             f"({', '.join(class_names)}), got {line!r}")
        pairs.append((prompt.strip(), lower.index(name.strip().lower())))
    if not pairs:
        raise ValueError(f"{path} has no prompts")
    return pairs


def free_text_rows(lm: Any, clf: "SmallResNet", pairs: Sequence[tuple[str, int]], *, per_prompt: int, sampler: str,
                   steps: int, guidance: float, seed: int, batch_size: int, device: torch.device,
                   encode_fn: Callable[[list[str]], np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Do free-text prompts near a class name land on that class? One row per prompt."""
    images, idx, _ = generate_per_class(lm, sampler, steps, per_prompt, guidance, seed, batch_size, device, encode_fn,
                                        prompts=[p for p, _ in pairs])
    pred, _ = classify(clf, images)
    rows = []
    for k, (prompt, cls) in enumerate(pairs):
        got = pred[idx == k]
        top = np.bincount(got, minlength=len(lm.classes)).argmax()
        rows.append({"prompt": prompt, "class": lm.classes[cls]["name"], "images": int(len(got)),
                     "accuracy": float((got == cls).mean()), "most_seen": lm.classes[int(top)]["name"]})
    return rows


def class_balanced_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``per_class`` images of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def fit_yardstick(train: Any, val: Any, folder: Path, *, epochs: int, seed: int = 0,
                  device: str | torch.device = "cpu", per_class: int = 0) -> dict[str, Any]:
    """Train the yardstick classifier on a preprocessed train split (``per_class`` > 0: a
    class-balanced subset of that many images per class, when CPU time is short), score it on
    the held-out split, and save it (with those scores) in ``folder``; returns its metadata."""
    images, labels = np.asarray(train.images), np.asarray(train.labels)
    if per_class > 0:
        idx = class_balanced_subset(labels, per_class, seed)
        images, labels = images[idx], labels[idx]
    log.info("training the yardstick classifier on %d images (%d epochs)", len(labels), epochs)
    t0 = time.perf_counter()
    clf = train_classifier(images, labels, train.num_classes, epochs=epochs, device=device, seed=seed)
    train_s = time.perf_counter() - t0
    n_train = int(len(labels))
    logits, _ = predict(clf, np.asarray(val.images))
    labels = np.asarray(val.labels)
    meta = {"data_dir": str(train.root), "epochs": epochs, "train_images": n_train,
            "val_accuracy": float((logits.argmax(1) == labels).mean()),
            "val_top5": top_k_accuracy(logits, labels, 5), "train_seconds": round(train_s, 1),
            "image_size": train.image_size, "classes": [c["name"] for c in train.classes]}
    save_classifier(clf, folder, meta)
    return {**clf.config, **meta}


def evaluate(
    lm: Any, data_dir: str | Path, settings: Sequence[tuple[str, int]], *, per_class: int = 20,
    guidance: float = 3.0, seed: int = 0, batch_size: int = 50, classifier_epochs: int = 15,
    retrain_classifier: bool = False, inception: str | None = None, device: str | torch.device = "cpu",
    encode_fn: Callable[[list[str]], np.ndarray] | None = None, classifier_dir: Path | None = None,
    free_text: Sequence[tuple[str, int]] = (), free_text_setting: tuple[str, int] = ("dpm++", 20),
    precision: str = "fp32", snaps: Sequence[float] = (0.0,), guidance_interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation; returns a dict with the reference figures and one Row per setting."""
    from data import PreprocessedDataset

    device = torch.device(device)
    train = PreprocessedDataset(data_dir, split="train")
    val = PreprocessedDataset(data_dir, split="val")
    if [c["prompt"] for c in train.classes] != [c["prompt"] for c in lm.classes]:
        raise ValueError(f"the classes of {data_dir} are not the model's classes: evaluate on the data it was trained on")
    if len(val) < 2:
        raise ValueError(f"{data_dir} has no held-out split: preprocess it with --val-fraction > 0")
    folder = classifier_dir or lm.path
    if retrain_classifier or not (folder / CLASSIFIER_WEIGHTS).exists():
        fit_yardstick(train, val, folder, epochs=classifier_epochs, seed=seed, device=device)
    clf, meta = load_classifier(folder, device)

    val_images, val_labels = np.asarray(val.images), np.asarray(val.labels)
    val_logits, val_feat = predict(clf, val_images)
    val_pred = val_logits.argmax(1)
    # Noise floor: FD between the held-out set and an equally sized, class-balanced real training subset.
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(np.asarray(train.labels) == c),
                                                 size=min(per_class, int((np.asarray(train.labels) == c).sum())),
                                                 replace=False) for c in range(train.num_classes)]))
    _, ref_feat = classify(clf, np.asarray(train.images)[ref_idx])
    inc = InceptionFeatures(inception, device) if inception else None
    inc_val = inc(val_images) if inc else None
    result: dict[str, Any] = {
        "model": lm.name, "data": str(data_dir), "per_class": per_class, "guidance": guidance, "precision": precision,
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "classes": len(lm.classes), "real_val_images": int(len(val_labels)),
        "real_val_accuracy": float((val_pred == val_labels).mean()),
        "real_val_top5": top_k_accuracy(val_logits, val_labels, 5),
        "real_vs_real_fd": frechet_distance(ref_feat, val_feat),
        "feature_dim": clf.feature_dim, "classifier": {k: meta[k] for k in ("epochs", "val_accuracy", "width") if k in meta},
        "rows": [],
    }
    if inc:
        result["real_vs_real_fid"] = frechet_distance(inc(np.asarray(train.images)[ref_idx]), inc_val)
    for sampler, steps in settings:
        images, labels, secs = generate_per_class(lm, sampler, steps, per_class, guidance, seed, batch_size, device,
                                                  encode_fn, precision=precision, guidance_interval=guidance_interval)
        logits, feat = predict(clf, images)
        pred = logits.argmax(1)
        acc = float((pred == labels).mean())
        per_cls = per_class_accuracy(pred, labels, len(lm.classes))
        row = Row(f"{sampler} {steps}", len(images), acc, frechet_distance(feat, val_feat), secs / len(images),
                  frechet_distance(inc(images), inc_val) if inc else None,
                  accuracy_se=math.sqrt(acc * (1 - acc) / len(images)), fd_sd=fd_bootstrap_sd(feat, val_feat, seed=seed),
                  top5=top_k_accuracy(logits, labels, 5),
                  class_accuracy={c["name"]: float(a) for c, a in zip(lm.classes, per_cls)})
        result["rows"].append(asdict(row))
        log.info("%s: accuracy %.3f, FD %.2f, %.3f s/image", row.setting, row.accuracy, row.fd, row.seconds_per_image)
    if free_text:
        result["free_text_setting"] = f"{free_text_setting[0]} {free_text_setting[1]}"
        result["free_text"] = []
        for snap in snaps:  # the same prompts and seeds, with and without pulling them toward the classes
            enc = encode_fn
            if snap > 0:
                from models.text_encoder import encode_prompts
                from prompting import snapping_encoder

                enc = snapping_encoder(encode_fn or encode_prompts, [c["prompt"] for c in lm.classes], snap)
            rows = free_text_rows(lm, clf, free_text, per_prompt=per_class, sampler=free_text_setting[0],
                                  steps=free_text_setting[1], guidance=guidance, seed=seed,
                                  batch_size=batch_size, device=device, encode_fn=enc)
            result["free_text"] += [dict(r, snap=snap) for r in rows]
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per sampler setting, with the real-data references."""
    fid = "real_vs_real_fid" in result
    head = ("| sampler / steps | images | class accuracy (top-1) | top-5 | FD (classifier feats) |" + (" FID |" if fid else "")
            + " s / image (this CPU) |")
    lines = [head, "|" + " --- |" * (6 + fid)]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    for r in result["rows"]:
        lines.append(f"| {r['setting']} | {r['images']} | {r['accuracy']:.1%} ± {r.get('accuracy_se', 0):.1%} |"
                     f" {pct(r.get('top5'))} | {r['fd']:.2f} ± {r.get('fd_sd', 0):.2f} |"
                     + (f" {r['fid']:.1f} |" if fid else "") + f" {r['seconds_per_image']:.3f} |")
    lines.append(f"| real held-out images (reference) | {result['real_val_images']} | {result['real_val_accuracy']:.1%} |"
                 f" {pct(result.get('real_val_top5'))} | {result['real_vs_real_fd']:.2f} (real vs real) |"
                 + (f" {result['real_vs_real_fid']:.1f} |" if fid else "") + " - |")
    lines.append("")
    band = (f" (only for sigma in ({result['guidance_interval'][0]:g}, {result['guidance_interval'][1]:g}])"
            if result.get("guidance_interval") else "")
    lines.append(f"{result['classes']} classes, {result['per_class']} images per class per setting, guidance "
                 f"{result['guidance']}{band}, classifier feature dim {result['feature_dim']}. "
                 "± is one standard error: binomial for accuracy, bootstrap over the generated images for FD.")
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
        lines += ["", f"Free text ({result['free_text_setting']}, {result['per_class']} images per prompt):", "",
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
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--retrain-classifier", action="store_true")
    parser.add_argument("--classifier", default=None,
                        help="folder of the yardstick classifier (default: beside the model); trained there if missing")
    parser.add_argument("--free-text", default=None,
                        help="TSV of 'prompt<TAB>class' lines: do free-text prompts land on their class?")
    parser.add_argument("--snap", default="0", metavar="S[,S..]",
                        help="free text also with its embedding pulled toward the model's classes by each strength "
                             "in [0, 1] (e.g. 0,0.5: with and without)")
    parser.add_argument("--free-text-setting", default="dpm++:20", help="sampler:steps for the free-text prompts")
    parser.add_argument("--classifier-only", action="store_true",
                        help="only train the yardstick on --data into --classifier and print its held-out accuracy")
    parser.add_argument("--classifier-per-class", type=int, default=0, metavar="N",
                        help="with --classifier-only: train on N images per class (default 0: all)")
    parser.add_argument("--inception", default=None, help="pytorch-fid Inception weights (.pth) for standard FID")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="sampling precision (default fp32; compare with bf16 for parity)")
    parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="apply guidance only for noise levels sigma in (LO, HI] (default: everywhere)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="write the table (Markdown) and JSON here (default output_ImageNet/eval/<model>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from diffusion import parse_guidance_interval
    from model_store import CheckpointError, load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.classifier_only:
        return _classifier_only(args, device)
    try:
        lm = load_model(args.model, store=args.store, device=device)
        data = args.data or lm.config.get("data", {}).get("dir")
        if not data:
            raise ValueError("the model's config names no data folder: pass --data")
        free_text = read_free_text(args.free_text, lm.class_names) if args.free_text else ()
        result = evaluate(lm, data, parse_settings(args.settings), per_class=args.per_class, guidance=args.guidance,
                          seed=args.seed, batch_size=args.batch_size, classifier_epochs=args.classifier_epochs,
                          retrain_classifier=args.retrain_classifier, inception=args.inception, device=device,
                          classifier_dir=Path(args.classifier) if args.classifier else None,
                          free_text=free_text, free_text_setting=parse_settings(args.free_text_setting)[0],
                          precision=args.precision, snaps=parse_snaps(args.snap),
                          guidance_interval=parse_guidance_interval(args.guidance_interval))
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


def _classifier_only(args: argparse.Namespace, device: torch.device) -> int:
    from data import PreprocessedDataset

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
    meta = fit_yardstick(train, val, Path(args.classifier), epochs=args.classifier_epochs, seed=args.seed, device=device,
                         per_class=args.classifier_per_class)
    print(f"yardstick on {len(val)} held-out images of {train.num_classes} classes: top-1 {meta['val_accuracy']:.1%}, "
          f"top-5 {meta['val_top5']:.1%} ({meta['train_images']} training images, {meta['epochs']} epochs, "
          f"{meta['train_seconds']:.0f} s); saved in {args.classifier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
