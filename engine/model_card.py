"""A model's card (its README.md in the store), written from its checkpoint's config at export."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _source_text(data: dict[str, Any]) -> str:
    """Where the training data came from, as one short string."""
    src = data.get("source", data.get("dir", "n/a"))
    if isinstance(src, dict):
        src = src.get("given_as") or src.get("path") or "n/a"
    return f"`{Path(str(src)).name}` via `{data.get('dir', '?')}`" if data.get("dir") else f"`{src}`"


def model_card(name: str, config: dict[str, Any], evaluation: str | None = None, notes: str | None = None) -> str:
    """A Markdown model card from a checkpoint's config."""
    train = config.get("train", {})
    data = config.get("data", {})
    unet = config.get("unet", {})
    classes = config.get("classes", [])
    hours = float(config.get("train_seconds", 0)) / 3600
    defaults = config.get("sampler_defaults", {})
    lines = [
        f"# {name}",
        "",
        "A class- and text-conditional diffusion U-Net trained with this project's `diffusion.py`."
        if config.get("model_type") != "sr" else
        "A super-resolution diffusion U-Net (a cascade's second stage, `training/superres.py`): it upscales "
        f"{config.get('sr', {}).get('low_res_size', '?')} px images 2x (`python diffusion.py sample ... --upscale {name}`).",
        "",
        "| | |", "| --- | --- |",
        f"| image size | {config.get('image_size')} px |",
        f"| parameters | {config.get('parameters', 'n/a'):,} |" if isinstance(config.get("parameters"), int)
        else f"| parameters | {config.get('parameters', 'n/a')} |",
        f"| network | base {unet.get('base_channels')}, mult {unet.get('channel_mult')}, "
        f"{unet.get('num_res_blocks')} res blocks/level, attention at {unet.get('attention_resolutions')} px |",
        f"| diffusion | {config.get('diffusion', {}).get('beta_schedule')} schedule, "
        f"{config.get('diffusion', {}).get('num_train_timesteps')} steps, "
        f"{config.get('diffusion', {}).get('prediction_type')} |",
        f"| text encoder | {config.get('text_model')} (prompt template `{config.get('prompt_template')}`) |"
        if unet.get("cond_dim", 1) else "| text encoder | none (the SR stage sees only the low-resolution image) |",
        f"| data | {_source_text(data)} ({data.get('num_images', 'n/a')} training images, {len(classes)} classes) |",
        f"| training steps | {config.get('step', 'n/a')} (batch {train.get('batch_size')}, "
        f"lr {train.get('lr')}, EMA {train.get('ema_decay')}) |",
        f"| images seen | {config.get('images_seen', 'n/a')} |",
        f"| hardware | {config.get('hardware', 'n/a')} |",
        f"| training wall time | {hours:.2f} h |",
    ]
    distill = config.get("distill")
    if isinstance(distill, dict):  # a few-step student (core/distill.py)
        taught = (f"{distill.get('student_steps')} steps" if distill.get("method") == "trajectory"
                  else f"a grid {distill.get('skip')} timesteps apart")
        lines.append(f"| distilled from | {distill.get('teacher')} ({distill.get('method')} distillation, {taught}; "
                     f"guidance {distill.get('guidance_min')}-{distill.get('guidance_max')} is an input) |")
    texts = [len(c["texts"]) for c in classes if isinstance(c.get("texts"), list)]
    if texts:  # engine/class_texts.py
        lines.append(f"| training texts | {sum(texts)} ({sum(texts) / len(texts):.0f} a class on average), kept with "
                     "the model: *Snap to classes* reads free text by them |")
    if defaults:
        lines.append(f"| sampler defaults | {', '.join(f'{k}={v}' for k, v in defaults.items())} |")
    lines += ["", f"## Classes ({len(classes)})", "",
              ", ".join(f"{c.get('name')} (`{c.get('wnid', '')}`)" for c in classes) or "none", ""]
    if evaluation:
        lines += ["## Evaluation", "", evaluation, ""]
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)


# Files beside a model that survive a re-export: the evaluation's yardstick classifier
# depends on the training data, not on the weights, and takes minutes to retrain.
COMPANION_FILES = ("classifier.safetensors", "classifier.json")
