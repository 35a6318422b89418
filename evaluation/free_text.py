"""Free text: do prompts worded near a class name land on that class? The prompts' TSV and the scoring."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from evaluation.classifier import SmallResNet, classify
from evaluation.generation import generate_per_class
from evaluation.yardstick import YardstickClasses


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


def free_text_rows(lm: Any, clf: SmallResNet, pairs: Sequence[tuple[str, int]], *, per_prompt: int, sampler: str,
                   steps: int, guidance: float, seed: int, batch_size: int, device: torch.device,
                   encode_fn: Callable[[list[str]], np.ndarray] | None = None,
                   yardstick: YardstickClasses | None = None, precision: str = "fp32",
                   guidance_interval: tuple[float, float] | None = None, apg: Any = None,
                   second: tuple[SmallResNet, YardstickClasses] | None = None) -> list[dict[str, Any]]:
    """Do free-text prompts near a class name land on that class? One row per prompt, sampled as the
    class-name rows are (precision, guidance band, APG). ``second``: a second yardstick (classifier and
    its classes) that judges the same images too (``accuracy2`` in each row)."""
    yardstick = yardstick or YardstickClasses.identity(lm.class_names)
    images, idx, _ = generate_per_class(lm, sampler, steps, per_prompt, guidance, seed, batch_size, device, encode_fn,
                                        prompts=[p for p, _ in pairs], precision=precision,
                                        guidance_interval=guidance_interval, apg=apg)
    pred, _ = classify(clf, images)
    pred2 = classify(second[0], images)[0] if second else None
    rows = []
    for k, (prompt, cls) in enumerate(pairs):
        got = pred[idx == k]
        top = np.bincount(got, minlength=len(yardstick.names)).argmax()
        rows.append({"prompt": prompt, "class": lm.classes[cls]["name"], "images": int(len(got)),
                     "accuracy": float((got == yardstick.of_model[cls]).mean()), "most_seen": yardstick.names[int(top)]})
        if second:
            rows[-1]["accuracy2"] = float((pred2[idx == k] == second[1].of_model[cls]).mean())
    return rows

