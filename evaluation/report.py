"""The whole evaluation of a model (its samples per sampler setting against real held-out photos)
and its Markdown table."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.guidance import APGSettings
from core.prompting import snapping_encoder
from core.samplers import DEFAULT_GUIDANCE
from dataprep.dataset import PreprocessedDataset
from engine.class_texts import snap_targets
from evaluation.classifier import (CLASSIFIER_WEIGHTS, SmallResNet, classify, load_classifier, per_class_accuracy, predict,
                                   top_k_accuracy)
from evaluation.conditioning import CONDITIONING_TARGET, conditioning_check, named_pairs, real_conditioning
from evaluation.free_text import free_text_rows
from evaluation.frechet import InceptionFeatures, fd_bootstrap_sd, frechet_distance
from evaluation.generation import generate_per_class
from evaluation.yardstick import YardstickClasses, YardstickRecipe, class_positions, fit_yardstick, model_subset
from models.text_encoder import encode_prompts

log = logging.getLogger("evaluate")  # the tool's name in its log lines, as before the package


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


def evaluate(
    lm: Any, data_dir: str | Path, settings: Sequence[tuple[str, int]], *, per_class: int = 20,
    guidance: float = DEFAULT_GUIDANCE, seed: int = 0, batch_size: int = 50, classifier_epochs: int = 15,
    retrain_classifier: bool = False, inception: str | None = None, device: str | torch.device = "cpu",
    encode_fn: Callable[[list[str]], np.ndarray] | None = None, classifier_dir: Path | None = None,
    free_text: Sequence[tuple[str, int]] = (), free_text_setting: tuple[str, int] = ("dpm++", 20),
    precision: str = "fp32", snaps: Sequence[float] = (0.0,), guidance_interval: tuple[float, float] | None = None,
    free_text_per_prompt: int = 0, guide: Any = None, apg: APGSettings | None = None,
    samples_dir: Path | None = None, second_classifier_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation; returns a dict with the reference figures and one Row per setting.
    ``apg``: adaptive projected guidance in place of plain CFG; ``samples_dir``: also save each
    setting's images and labels there (``samples_<sampler>_<steps>.npz``), to score them again later
    with another yardstick without sampling again; ``second_classifier_dir``: score the same images with
    a second yardstick too (``result["second_yardstick"]``: its real-photo figures and rows)."""

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

    # The real photos of the model's classes (all of the data's when it has only those), labelled as the model's.
    train_images, train_labels = model_subset(train, in_data)
    val_images, val_labels = model_subset(val, in_data)
    # Noise floor: FD between the held-out set and an equally sized, class-balanced real training subset.
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(train_labels == c),
                                                 size=min(per_class, int((train_labels == c).sum())),
                                                 replace=False) for c in range(len(lm.classes))]))
    inc = InceptionFeatures(inception, device) if inception else None
    real = (train_images[ref_idx], val_images, val_labels)
    reference, figures = _yardstick_reference(folder, lm, data_names, real, per_class, device)
    reference.inception, reference.inception_val = inc, inc(val_images) if inc else None
    second = _yardstick_reference(second_classifier_dir, lm, data_names, real, per_class, device) \
        if second_classifier_dir else None
    result: dict[str, Any] = {
        "model": lm.name, "data": str(data_dir), "per_class": per_class, "seed": seed, "guidance": guidance,
        "precision": precision, "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "guide": guide.name if guide else None, "apg": asdict(apg) if apg else None,
        "classes": len(lm.classes), **figures, "rows": [],
    }
    if second:
        result["second_yardstick"] = {"classifier_dir": str(second_classifier_dir), **second[1], "rows": []}
    if inc:
        result["real_vs_real_fid"] = frechet_distance(inc(train_images[ref_idx]), reference.inception_val)
    for sampler, steps in settings:
        images, labels, secs = generate_per_class(lm, sampler, steps, per_class, guidance, seed, batch_size, device,
                                                  encode_fn, precision=precision, guidance_interval=guidance_interval,
                                                  guide=guide, apg=apg)
        if samples_dir is not None:
            samples_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(samples_dir / f"samples_{sampler}_{steps}.npz", images=images, labels=labels)
        row = _score_setting(lm, reference, f"{sampler} {steps}", images, labels, secs, per_class, seed)
        result["rows"].append(asdict(row))
        if second:
            result["second_yardstick"]["rows"].append(
                asdict(_score_setting(lm, second[0], row.setting, images, labels, secs, per_class, seed)))
        log.info("%s: accuracy %.3f, FD %.2f, %.3f s/image", row.setting, row.accuracy, row.fd, row.seconds_per_image)
    if free_text:
        result["free_text_setting"] = f"{free_text_setting[0]} {free_text_setting[1]}"
        result["free_text"] = []
        for snap in snaps:  # the same prompts and seeds, with and without pulling them toward the classes
            enc = encode_fn
            if snap > 0:  # as the app snaps: read by the model's training texts, else its class prompts
                targets = snap_targets(lm, encode_fn or encode_prompts)
                enc = snapping_encoder(encode_fn or encode_prompts, targets.keys, snap, targets.temperature,
                                       targets.values)
            rows = free_text_rows(lm, reference.clf, free_text, per_prompt=free_text_per_prompt or per_class,
                                  sampler=free_text_setting[0],
                                  steps=free_text_setting[1], guidance=guidance, seed=seed,
                                  batch_size=batch_size, device=device, encode_fn=enc, yardstick=reference.yardstick,
                                  precision=precision, guidance_interval=guidance_interval, apg=apg,
                                  second=(second[0].clf, second[0].yardstick) if second else None)
            result["free_text"] += [dict(r, snap=snap) for r in rows]
    return result


def _yardstick_reference(folder: Path, lm: Any, data_names: Sequence[str],
                         real: tuple[np.ndarray, np.ndarray, np.ndarray], per_class: int,
                         device: torch.device) -> tuple["_Reference", dict[str, Any]]:
    """One yardstick (the classifier in ``folder``) and the real photos' figures by it: ``real`` is
    (the floor's training photos, the held-out photos, their labels in the model's indices)."""
    floor_images, val_images, val_labels = real
    clf, meta = load_classifier(folder, device)
    clf_names = meta.get("classes") or (data_names if meta["num_classes"] == len(data_names) else None)
    if clf_names is None:
        raise ValueError(f"the yardstick in {folder} does not list its classes")
    yardstick = YardstickClasses.match(lm.class_names, clf_names, f"the yardstick in {folder}")
    val_logits, val_feat = predict(clf, val_images)
    val_pred = yardstick.to_model(val_logits.argmax(1))
    _, ref_feat = classify(clf, floor_images)
    reference = _Reference(clf, yardstick, val_feat, None, None, 1.0 / len(clf_names))
    figures = {
        "yardstick_classes": len(clf_names), "real_val_images": int(len(val_labels)),
        "real_val_accuracy": float((val_pred == val_labels).mean()),
        "real_val_top5": top_k_accuracy(val_logits, yardstick.of_model[val_labels], 5),
        "real_vs_real_fd": frechet_distance(ref_feat, val_feat),
        "feature_dim": clf.feature_dim,
        "classifier": {k: meta[k] for k in ("arch", "epochs", "val_accuracy", "val_top5", "width", "blocks",
                                            "mirror_average") if k in meta},
        "real_conditioning": real_conditioning(val_labels, val_feat, val_pred, len(lm.classes), per_class,
                                               reference.chance),
    }
    return reference, figures


@dataclass
class _Reference:
    """What every generated set is measured against: the yardstick and the real held-out photos' features."""
    clf: SmallResNet
    yardstick: YardstickClasses
    val_feat: np.ndarray
    inception: InceptionFeatures | None
    inception_val: np.ndarray | None
    chance: float  # 1 / the yardstick's classes


def _score_setting(lm: Any, ref: _Reference, setting: str, images: np.ndarray, labels: np.ndarray, secs: float,
                   per_class: int, seed: int) -> Row:
    """One sampler setting's row: its images (class-major, ``per_class`` each) scored against ``ref``."""
    logits, feat = predict(ref.clf, images)
    pred = ref.yardstick.to_model(logits.argmax(1))
    acc = float((pred == labels).mean())
    per_cls = per_class_accuracy(pred, labels, len(lm.classes))
    return Row(setting, len(images), acc, frechet_distance(feat, ref.val_feat), secs / len(images),
               frechet_distance(ref.inception(images), ref.inception_val) if ref.inception else None,
               accuracy_se=math.sqrt(acc * (1 - acc) / len(images)), fd_sd=fd_bootstrap_sd(feat, ref.val_feat, seed=seed),
               top5=top_k_accuracy(logits, ref.yardstick.of_model[labels], 5),
               class_accuracy={c["name"]: float(a) for c, a in zip(lm.classes, per_cls)},
               conditioning=named_pairs(conditioning_check(feat, pred, len(lm.classes), per_class, chance=ref.chance),
                                        lm.class_names)
               if per_class >= 2 else None)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _score_lines(figures: dict[str, Any], fid: bool = False) -> list[str]:
    """The Markdown table of one yardstick's rows (``figures``: the result, or its ``second_yardstick``)."""
    real1, real5, floor = figures["real_val_accuracy"], figures.get("real_val_top5"), figures["real_vs_real_fd"]
    head = ("| sampler / steps | images | top-1 | top-1 / real | top-5 | top-5 / real | FD (classifier feats) | FD / floor |"
            " classes apart (pairs) | own class above chance |" + (" FID |" if fid else "") + " s / image (this CPU) |")
    lines = [head, "|" + " --- |" * (11 + fid)]

    def ratio(x: float | None, ref: float | None) -> str:
        return "-" if x is None or not ref else f"{x / ref:.2f}"

    def cond(c: dict[str, Any] | None) -> tuple[str, str]:
        return ("-", "-") if not c else (f"{c['pairs_apart']:.1%}", f"{c['classes_above_chance']:.1%}")

    for r in figures["rows"]:
        apart, chance = cond(r.get("conditioning"))
        lines.append(f"| {r['setting']} | {r['images']} | {r['accuracy']:.1%} ± {r.get('accuracy_se', 0):.1%} |"
                     f" {ratio(r['accuracy'], real1)} | {_pct(r.get('top5'))} | {ratio(r.get('top5'), real5)} |"
                     f" {r['fd']:.2f} ± {r.get('fd_sd', 0):.2f} | {r['fd'] / floor:.1f}x | {apart} | {chance} |"
                     + (f" {r['fid']:.1f} |" if fid else "") + f" {r['seconds_per_image']:.3f} |")
    apart, chance = cond(figures.get("real_conditioning"))
    lines.append(f"| real held-out photos (reference) | {figures['real_val_images']} | {real1:.1%} | 1.00 | {_pct(real5)} |"
                 f" 1.00 | {floor:.2f} (real vs real) | 1.0x | {apart} | {chance} |"
                 + (f" {figures['real_vs_real_fid']:.1f} |" if fid else "") + " - |")
    return lines


def _yardstick_words(figures: dict[str, Any]) -> str:
    clf = figures.get("classifier", {})
    return (f"{clf.get('arch', 'resnet')}, width {clf.get('width', '?')}, blocks {clf.get('blocks', [1, 1, 1, 1])}"
            + (", each image and its mirror" if clf.get("mirror_average") else "")
            + f", feature dim {figures['feature_dim']}")


def _against_names(acc: float, prompts: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                    setting: str | None) -> str:
    """Free text's rate as a share of the class names' top-1 *on the prompts' classes* (each prompt weighs
    its class once), from the row sampled as the free text was; easy and hard classes cancel out."""
    named = [r for r in rows if r["setting"] == setting and r.get("class_accuracy")]
    if not named:
        return ""
    names = float(np.mean([named[0]["class_accuracy"][p["class"]] for p in prompts]))
    return f" ({acc / names:.0%} of the class names' {names:.1%} on the same classes)" if names > 0 else ""


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per sampler setting against the real held-out photos (top-1 and top-5 as
    a share of real, FD as a multiple of the real-vs-real floor at the same count), the
    conditioning check, and the best and worst classes; the same table by the second yardstick
    when there is one."""
    lines = _score_lines(result, fid="real_vs_real_fid" in result)
    lines.append("")
    band = (f" (only for sigma in ({result['guidance_interval'][0]:g}, {result['guidance_interval'][1]:g}])"
            if result.get("guidance_interval") else "")
    if result.get("apg"):
        apg = result["apg"]
        band += (f", adaptive projected guidance (eta {apg['eta']:g}, norm cap {apg['norm_threshold']:g}, "
                 f"momentum {apg['momentum']:g})")
    lines.append(f"{result['classes']} classes, {result['per_class']} images per class per setting (the j-th image of "
                 f"every class from seed {result.get('seed', 0)} + j), guidance {result['guidance']}{band}. Yardstick: "
                 f"{_yardstick_words(result)}. ± is one standard error: binomial for accuracy, bootstrap over the generated "
                 "images for FD. The floor is the FD between real training photos (as many as generated) and the "
                 "held-out photos.")
    second = result.get("second_yardstick")
    if second:
        lines += ["", f"The same images by the second yardstick ({_yardstick_words(second)}; "
                      f"{second['classifier_dir']}):", ""] + _score_lines(second)
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
        setting = result.get("free_text_setting")
        for snap in sorted({f.get("snap", 0.0) for f in result["free_text"]}):
            rows = [f for f in result["free_text"] if f.get("snap", 0.0) == snap]
            acc = float(np.mean([f["accuracy"] for f in rows]))
            lines.append(f"Free text, snap {snap:g}: {len(rows)} prompts land on their class {acc:.1%} of the time"
                         f"{_against_names(acc, rows, result['rows'], setting)}.")
            if second and all("accuracy2" in f for f in rows):
                acc2 = float(np.mean([f["accuracy2"] for f in rows]))
                lines.append(f"By the second yardstick: {acc2:.1%}{_against_names(acc2, rows, second['rows'], setting)}.")
    if result.get("free_text"):
        lines += ["", f"Free text ({result['free_text_setting']}, {result['free_text'][0]['images']} images per prompt):", "",
                  "| prompt | meant class | classified as that class | most often classified as |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['prompt'].replace('|', '/')}{' (snap %g)' % r['snap'] if r.get('snap') else ''} | {r['class']} |"
                  f" {r['accuracy']:.0%} | {r['most_seen']} |" for r in result["free_text"]]
    return "\n".join(lines)

