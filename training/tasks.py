"""What the training loop can train, one small object each; the loop calls them and never asks which.

* ``base``: the text-to-image diffusion model (the noise-prediction loss of ``core.loss``);
* ``sr``: the 2x super-resolution stage (``training.superres``: crops paired with their
  low-resolution counterparts, conditioning augmentation);
* ``distill``: a few-step student of a frozen teacher (``core.distill``): the teacher's network
  plus a guidance input, started from the teacher's weights.

Every task answers the same five questions: its network and noise schedule (``network``), its
starting weights (``init_weights``), the loss of one batch (``loss``), the periodic preview
(``write_preview``) and what its checkpoints' config says about it (``metadata``). The batch's random
draws common to all tasks (flips, prompt templates, condition noise and dropout, timesteps) are
made by the loop, in the same order for every task, before ``loss`` draws its own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

import drawing
from core.distill import STUDENT_SAMPLER, DistillConfig, consistency_loss, trajectory_loss
from core.generation import generate_images
from core.loss import per_sample_loss
from core.samplers import DEFAULT_SAMPLER
from core.schedules import DiffusionConfig, DiffusionTerms
from engine import store
from engine.request import GenerationRequest, resolve_sampler_settings
from models import ConditionalUNet, UNetConfig
from training import superres
from training.config import TASKS, TrainConfig


@dataclass
class Batch:
    """One step's batch as every task receives it (the loop's common draws already made)."""

    x: torch.Tensor  # (B, 3, H, W) images in [-1, 1], flipped at random
    cond: torch.Tensor  # (B, D) text embeddings (a random template each, noised if cond_noise)
    drop: torch.Tensor  # (B,) bool: trained with the null condition
    t: torch.Tensor  # (B,) long: the noise level of each image


class BaseTask:
    """Text-to-image diffusion: the U-Net of ``cfg``, the v/eps loss, a grid of the first classes."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def network(self, image_size: int, classes: list[dict], device: torch.device) -> tuple[UNetConfig, DiffusionConfig]:
        """The network to train and its noise schedule."""
        return self.cfg.unet_config(image_size), self.cfg.diffusion_config()

    def init_weights(self, model: ConditionalUNet) -> None:
        """Starting weights beyond the network's own initialisation: none."""

    def loss(self, net: torch.nn.Module, model: torch.nn.Module, terms: DiffusionTerms, batch: Batch,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's mean loss, and each image's loss at ``batch.t`` (None where there is none:
        the loop splits it into noise-level bands). ``net`` is ``model`` as trained (DDP, compiled)."""
        cfg = self.cfg
        per_image = per_sample_loss(net, terms, batch.x, batch.cond, prediction_type=cfg.prediction_type,
                                    drop_cond=batch.drop, min_snr_gamma=cfg.min_snr_gamma or None, t=batch.t,
                                    generator=generator)
        return per_image.mean(), per_image

    def write_preview(self, ema: ConditionalUNet, diffusion: DiffusionConfig, classes: list[dict],
                      class_emb: torch.Tensor, step: int, device: torch.device) -> None:
        """A grid (fixed seeds, a few classes, EMA weights) and a denoising GIF."""
        write_class_samples(self.cfg, ema, diffusion, classes, class_emb, step, device, sampler=self.preview_sampler())

    def preview_sampler(self) -> str:
        return DEFAULT_SAMPLER

    def metadata(self, image_size: int) -> dict[str, Any]:
        """What the checkpoints' config says about this kind of model, beyond the network and data."""
        return {}


class SuperResTask(BaseTask):
    """The 2x super-resolution stage (``training.superres``); the data is at the high resolution."""

    def loss(self, net: torch.nn.Module, model: torch.nn.Module, terms: DiffusionTerms, batch: Batch,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        # crops of x paired with their low-resolution counterparts (training/superres.py)
        cfg = self.cfg
        loss = superres.sr_training_loss(
            net, terms, batch.x, batch.cond if cfg.sr_text else None, crop=cfg.sr_crop, aug_max=cfg.sr_aug_max,
            prediction_type=cfg.prediction_type, drop_cond=batch.drop if cfg.sr_text else None,
            min_snr_gamma=cfg.min_snr_gamma or None, t=batch.t, generator=generator,
            channels_last=cfg.channels_last, residual=cfg.sr_residual)
        return loss, None

    def write_preview(self, ema: ConditionalUNet, diffusion: DiffusionConfig, classes: list[dict],
                      class_emb: torch.Tensor, step: int, device: torch.device) -> None:
        """Held-out images: low res, bicubic, upscaled, truth."""
        cfg = self.cfg
        superres.write_sr_samples(cfg.run_dir, ema, diffusion, cfg.data_dir, step, device, n=cfg.sample_classes)

    def metadata(self, image_size: int) -> dict[str, Any]:
        return {"model_type": "sr", "sr": {"scale": 2, "low_res_size": image_size // 2, "crop": self.cfg.sr_crop,
                                           "aug_max": self.cfg.sr_aug_max}}


class DistillTask(BaseTask):
    """A few-step student (``core.distill``): the teacher's network with a guidance input, learning
    at guidance w ~ U[guidance_min, guidance_max] per image. ``network`` loads the teacher."""

    teacher: store.LoadedModel
    distill: DistillConfig

    def preview_sampler(self) -> str:
        return STUDENT_SAMPLER[self.cfg.distill_method]

    def network(self, image_size: int, classes: list[dict], device: torch.device) -> tuple[UNetConfig, DiffusionConfig]:
        self.teacher = load_teacher(self.cfg, classes, device)
        self.distill = self.cfg.distill_config(self.teacher.guidance_interval)
        return replace(self.teacher.model.config, guidance_embed=True), self.teacher.diffusion

    def init_weights(self, model: ConditionalUNet) -> None:
        """Every weight but the (zero) guidance embedder's: the student starts as the teacher."""
        missing, unexpected = model.load_state_dict(self.teacher.model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
            raise ValueError(f"teacher {self.cfg.teacher}: weights do not fit its own network ({missing}, {unexpected})")

    def loss(self, net: torch.nn.Module, model: torch.nn.Module, terms: DiffusionTerms, batch: Batch,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, teacher, distill = self.cfg, self.teacher, self.distill
        b = batch.x.shape[0]
        w = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(
            b, device=batch.x.device, generator=generator)
        common = dict(prediction_type=teacher.diffusion.prediction_type,  # the student's schedule is its teacher's
                      teacher_prediction_type=teacher.diffusion.prediction_type, generator=generator)
        if distill.method == "consistency":
            per_image = consistency_loss(net, model, teacher.model, terms, batch.x, batch.cond, w, distill, **common)
        else:
            per_image = trajectory_loss(net, teacher.model, terms, batch.x, batch.cond, w, distill, **common)
        return per_image.mean(), None  # its t is the student's, not a noise level drawn for the loss bands

    def metadata(self, image_size: int) -> dict[str, Any]:
        return student_description(self.cfg, self.teacher, self.distill)


TASK_TYPES: dict[str, type[BaseTask]] = {"base": BaseTask, "sr": SuperResTask, "distill": DistillTask}
assert tuple(TASK_TYPES) == TASKS, "training.config.TASKS names the tasks defined here"


def make_task(cfg: TrainConfig) -> BaseTask:
    """The task object of ``cfg.task`` (checked by ``TrainConfig``)."""
    return TASK_TYPES[cfg.task](cfg)


# --------------------------------------------------------------------------- the pieces
def write_class_samples(cfg: TrainConfig, ema: ConditionalUNet, diffusion: DiffusionConfig, classes: list[dict],
                        class_emb: torch.Tensor, step: int, device: torch.device, *, sampler: str) -> None:
    """A grid (fixed seeds, the first ``sample_classes`` classes, EMA weights) and a denoising GIF."""
    by_prompt = {c["prompt"]: class_emb[i].cpu().numpy() for i, c in enumerate(classes)}
    encode = lambda prompts: np.stack([by_prompt[p] for p in prompts])  # noqa: E731 - no text encoder in training
    chosen = classes[: cfg.sample_classes]
    prompts = [c["prompt"] for c in chosen]
    # the run's preview settings, completed by the one resolver the CLI and the app use
    settings = resolve_sampler_settings({}, diffusion.num_train_timesteps, GenerationRequest(
        sampler=sampler, steps=cfg.sample_steps, guidance=cfg.sample_guidance))
    res = generate_images(ema, diffusion, prompts, num_images=len(prompts), sampler=settings.sampler,
                          num_steps=settings.steps, guidance_scale=settings.guidance,
                          guidance_interval=settings.guidance_interval, seed=1234, encode_fn=encode,
                          return_frames=True, device=device)
    out = cfg.run_dir / "samples"
    drawing.sample_grid(res.images, nrow=min(8, len(prompts)), labels=[c["name"] for c in chosen],
                        path=out / f"grid_{step:07d}.png")
    drawing.denoising_gif(res.frames, res.frame_timesteps, out / f"denoise_{step:07d}.gif",
                          nrow=min(8, len(prompts)))


def load_teacher(cfg: TrainConfig, classes: list[dict], device: torch.device) -> store.LoadedModel:
    """The frozen teacher of a distillation run; it must have been trained on this data's classes."""
    teacher = store.load_model(cfg.teacher, device=device)
    if teacher.model.config.guidance_embed:
        raise ValueError(f"teacher {cfg.teacher} is itself a few-step student: distil from its teacher")
    if [c.get("prompt") for c in teacher.classes] != [c.get("prompt") for c in classes]:
        raise ValueError(f"teacher {cfg.teacher}: its classes are not those of the data in {cfg.data_dir} "
                         f"(give --data_dir the folder it was trained on)")
    teacher.model.eval().requires_grad_(False)
    return teacher


def student_description(cfg: TrainConfig, teacher: store.LoadedModel, distill: DistillConfig) -> dict[str, Any]:
    """What a student's config says about it: its teacher, how it was taught, and how it samples."""
    teacher_defaults = teacher.sampler_defaults
    return {
        "distill": {"teacher": teacher.name or str(teacher.path), "teacher_images_seen": teacher.config.get("images_seen"),
                    "teacher_train_seconds": teacher.config.get("train_seconds"), **distill.to_dict()},
        "sampler_defaults": {"sampler": STUDENT_SAMPLER[distill.method], "steps": cfg.student_steps,
                             "guidance_scale": float(teacher_defaults.get("guidance_scale", cfg.sample_guidance))},
    }
