"""Training the conditional U-Net: one loop, CPU to many GPUs (torchrun + DDP).

Read ``train()`` top to bottom: setup, data, model, optimizer, resume, loop.
Configuration is a plain dataclass; presets are dicts of overrides; every
field is a ``--flag`` of ``python diffusion.py train``.

Reproducibility: the batch and every random draw of step ``s`` (data order,
flips, condition dropout, prompt templates, timesteps, noise, dropout) are
seeded from ``(seed, step, rank)`` alone, so resuming from a checkpoint
continues exactly as if the run had never stopped.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import platform
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import drawing
from core.generation import generate_images
from core.distill import STUDENT_SAMPLER, DistillConfig, consistency_loss, trajectory_loss
from core.loss import TIMESTEP_SAMPLINGS, per_sample_loss, sample_timesteps
from core.precision import fast_bf16
from core.schedules import DiffusionConfig
from dataprep.dataset import PreprocessedDataset
from engine import store
from engine.store import latest_checkpoint_usable  # noqa: F401 - also used as training.latest_checkpoint_usable
from fileio import atomic_write_text, exclusive_lock
from models import ConditionalUNet, UNetConfig, count_parameters
from models.text_encoder import DEFAULT_PROMPT_TEMPLATE, TEXT_EMBED_DIM
from training import superres
from training.tensorboard import EventWriter

log = logging.getLogger("train")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = "data/preprocessed"


TASKS = ("base", "sr", "distill")


@dataclass
class TrainConfig:
    # run and data
    run_name: str = "default"
    data_dir: str = DEFAULT_DATA_DIR
    out_dir: str = "output_ImageNet"  # the run writes to out_dir/run_name/
    # network
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8,)
    head_channels: int = 32
    dropout: float = 0.1
    emb_dim: int = 0  # time + text embedding width; 0 = 4 x base_channels
    cond_scale: float = 1.0  # text embedding x this before its MLP (sqrt(384) = unit-variance entries)
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"
    prediction_type: str = "v_prediction"
    min_snr_gamma: float = 5.0  # 0 disables Min-SNR weighting
    timestep_sampling: str = "uniform"  # uniform | logit_normal (see diffusion.sample_timesteps)
    logit_mean: float = 0.0  # logit_normal: t/T = sigmoid(N(logit_mean, logit_std))
    logit_std: float = 1.0
    # conditioning
    cond_drop_prob: float = 0.15  # fraction of examples trained with the null condition (for CFG)
    random_templates: bool = True  # pick a random prompt template per example (free text generalises)
    # Gaussian noise of this norm added to each example's unit text embedding, then renormalised (0.75:
    # cosine about 0.8 to the text): nearby embeddings learn to mean the same class, as input noise acts
    # like weight decay on the condition's first layer, the regulariser that best reads unseen wordings
    # of a class (benchmarks/bench_text_ceiling.py). 0: off (and no extra random draw).
    cond_noise: float = 0.0
    # optimisation
    batch_size: int = 64  # global, across all processes
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at max_steps
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_steps: int = 20_000
    max_minutes: float = 0.0  # stop (and save) after this much wall time; 0 = no limit
    stop_at_step: int = 0  # stop (and save) at this step, 0 = max_steps; the LR schedule still follows max_steps
    stop_at_minutes: float = 0.0  # stop (and save) when the run's total training time reaches this; 0 = no limit
    # systems
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast where the device has fast bf16: CUDA, AVX512-BF16/AMX CPUs) | bf16 | fp32
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    # logging, samples, checkpoints
    log_every: int = 25
    sample_every: int = 1000  # 0 disables periodic samples
    report_to: str = "tensorboard"  # tensorboard (event files in <run>/tensorboard, as diffusers' scripts) | none
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    sample_classes: int = 8
    sample_steps: int = 20
    sample_guidance: float = 3.0
    resume: str = "auto"  # auto (latest checkpoint of this run, if any) | never | path to a ckpt folder
    # A store model or checkpoint folder to start a *new* run from (its EMA weights into the model and
    # its EMA; a fresh optimizer). Continues a shipped model across machines where the run folder is
    # gone. Ignored when the run already has a checkpoint to resume.
    init_from: str = ""
    # super-resolution stage (training/superres.py): task sr trains a 2x upscaler on the data's images
    task: str = "base"  # base (text-to-image) | sr (super-resolution: data at the high resolution)
    middle_attention: bool = True  # self-attention in the U-Net's middle block (sr64: off, fully convolutional)
    sr_crop: int = 0  # sr: train on random crops of this size (0 = whole images); samples whole images
    sr_aug_max: float = 0.3  # sr: conditioning-augmentation levels drawn uniformly from [0, sr_aug_max]
    sr_text: bool = False  # sr: condition on the text embedding too
    sr_residual: bool = True  # sr: diffuse the residual x - bicubic(low) (starts at bicubic quality), not x
    # few-step students (task distill, core/distill.py; `python diffusion.py distill TEACHER`): the network
    # is the teacher's plus a guidance input, started from the teacher's weights
    teacher: str = ""  # a store model name or a model/checkpoint folder
    # trajectory (the default: it won the side-by-side in BENCHMARKS.md) | consistency (collapsed there)
    distill_method: str = "trajectory"
    guidance_min: float = 1.0  # the guidance scales the student learns, drawn uniformly per image
    guidance_max: float = 8.0
    distill_skip: int = 25  # consistency: timesteps between grid neighbours
    student_steps: int = 4  # trajectory: the student's steps
    teacher_substeps: int = 5  # trajectory: teacher DDIM steps per student step

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {self.timestep_sampling!r}")
        if self.report_to not in ("tensorboard", "none"):
            raise ValueError(f"report_to must be tensorboard or none, got {self.report_to!r}")
        if not self.cond_noise >= 0:
            raise ValueError(f"cond_noise must be >= 0, got {self.cond_noise}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "distill":
            if not self.teacher:
                raise ValueError("task distill needs a teacher (a store model name or a model folder)")
            self.distill_config(None)  # checks the method and the guidance range now, not after loading
        if self.task == "sr" and (self.sr_crop % 2 ** (len(self.channel_mult) - 1) or not 0 <= self.sr_aug_max <= 1):
            raise ValueError(f"sr_crop ({self.sr_crop}) must be divisible by 2^(levels-1) and sr_aug_max in [0, 1]")

    def unet_config(self, image_size: int) -> UNetConfig:
        sr = dict(in_channels=6, aug_embed=True, cond_dim=TEXT_EMBED_DIM if self.sr_text else 0,
                  residual=self.sr_residual)
        return UNetConfig(
            image_size=image_size, base_channels=self.base_channels, channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks, attention_resolutions=self.attention_resolutions,
            head_channels=self.head_channels, dropout=self.dropout, middle_attention=self.middle_attention,
            emb_dim=self.emb_dim, cond_scale=self.cond_scale, **(sr if self.task == "sr" else {}),
        )

    def distill_config(self, guidance_interval: tuple[float, float] | None) -> DistillConfig:
        return DistillConfig(method=self.distill_method, guidance_min=self.guidance_min,
                             guidance_max=self.guidance_max, skip=self.distill_skip,
                             student_steps=self.student_steps, teacher_substeps=self.teacher_substeps,
                             guidance_interval=guidance_interval)

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                                 prediction_type=self.prediction_type)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name


PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a laptop CPU: proves the pipeline end to end, not the quality.
    "smoke": dict(run_name="smoke", base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), dropout=0.0, batch_size=16, lr=1e-3, warmup_steps=20,
                  max_steps=200, ema_decay=0.99, log_every=10, sample_every=100, ckpt_every=100,
                  sample_classes=4, sample_steps=10),
    # The CPU recipe, 32 px: the winner of the speedrun benchmark (benchmarks/bench_speedrun.py,
    # BENCHMARKS.md). A slim U-Net (32/64/128 channels, 4.2M parameters: 2.5x the images/s of the
    # 64/128/128 net default_model has), lr 1e-3 without dropout, bf16 autocast where the CPU has
    # AVX512-BF16/AMX (precision auto). Stop it with --max_minutes; the LR is constant until late.
    # Data: `python preprocess.py --src tiny-imagenet-200.zip --size 32 --classes assets/default_classes.txt
    #        --out data/default32 --val-fraction 0.04` (add --text-variants basic for the benchmark's data)
    # cond_scale sqrt(384): the text embedding enters at unit-variance entries; on 200 classes it took
    # 15 CPU-minutes from 7.2% to 13.7% top-1 (BENCHMARKS.md, "The 200-class speedrun").
    "default": dict(run_name="default", data_dir="data/default32", base_channels=32, channel_mult=(1, 2, 4),
                    num_res_blocks=2, attention_resolutions=(8,), dropout=0.0, batch_size=32, lr=1e-3,
                    warmup_steps=200, max_steps=100_000, ema_decay=0.999, sample_every=1000, ckpt_every=250,
                    cond_scale=384 ** 0.5),
    # In the spirit of guided-diffusion's ImageNet-64 model (~300M params), for GPUs.
    "imagenet64": dict(run_name="imagenet64", base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                       attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1, batch_size=2048,
                       lr=3e-4, warmup_steps=2000, max_steps=400_000, ema_decay=0.9999, weight_decay=0.0,
                       sample_every=5000, ckpt_every=2500, compile=True),
    # The 64 px super-resolution stage for the 32 px models (training/superres.py): a fully convolutional
    # slim U-Net (no attention, no text) trained on 32 px crops of 64 px images, with conditioning
    # augmentation. Data: `python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 64
    #        --val-fraction 0.02 --out data/tiny200_64`; then `export sr64 --name sr64`. 8000 steps = 256k crops
    # (2.6 epochs); the stage samples a 64 px image in ~0.4-0.7 s (10 DPM-Solver++ steps, 1 thread).
    "sr64": dict(run_name="sr64", task="sr", data_dir="data/tiny200_64", base_channels=32, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(), middle_attention=False, dropout=0.0, sr_crop=32,
                 sr_aug_max=0.3, cond_drop_prob=0.0, batch_size=32, lr=1e-3, warmup_steps=200, max_steps=8000,
                 ema_decay=0.999, sample_every=1000, ckpt_every=250),
    # A few-step student of a store model (`python diffusion.py distill TEACHER`): its network and data are
    # the teacher's; no condition dropout (the student never needs the null branch: guidance is an input).
    "distill": dict(run_name="", task="distill", dropout=0.0, cond_drop_prob=0.0, batch_size=32, lr=2e-4,
                    warmup_steps=100, max_steps=20_000, ema_decay=0.998, sample_every=1000, ckpt_every=250,
                    sample_steps=4, sample_guidance=6.0, min_snr_gamma=0.0),
}


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    return TrainConfig(**values)


# --------------------------------------------------------------------------- small pieces
def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step) * 4099 + rank & ((1 << 63) - 1)


def batch_indices(n: int, step: int, batch: int, rank: int, world: int, seed: int) -> np.ndarray:
    """The dataset indices rank ``rank`` trains on at ``step``.

    Each epoch is a seeded permutation; rank r takes every world-th index of
    it (a shard) and consecutive slices of that. Pure function of its
    arguments: no sampler state to save or restore.
    """
    per_rank = n // world
    steps_per_epoch = per_rank // batch
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset ({n} images) is smaller than one batch per process ({batch} x {world})")
    epoch, b = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    shard = perm[rank: per_rank * world: world]
    return np.sort(shard[b * batch:(b + 1) * batch])  # sorted: faster reads from the memory map


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of the weights; the decay ramps up early so short runs still get a useful EMA."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return dev


def hardware_description(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"{world} process(es) on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


class Batches:
    """Reads batch ``step`` from the memory-mapped arrays, one step ahead in a thread."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch: int, rank: int, world: int, seed: int):
        self.images, self.labels = images, labels
        self.args = (batch, rank, world, seed)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[int, Any] = {}

    def _load(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(len(self.labels), step, *self.args)
        return torch.from_numpy(np.ascontiguousarray(self.images[idx])), torch.from_numpy(self.labels[idx].astype(np.int64))

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        fut = self.pending.pop(step, None)
        out = fut.result() if fut is not None else self._load(step)
        self.pending[step + 1] = self.pool.submit(self._load, step + 1)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def classes_template(data_dir: str) -> str:
    try:
        return json.loads((Path(data_dir) / "classes.json").read_text()).get("prompt_template", DEFAULT_PROMPT_TEMPLATE)
    except (OSError, json.JSONDecodeError):
        return DEFAULT_PROMPT_TEMPLATE


def data_summary(data_dir: str, data: Any) -> dict[str, Any]:
    manifest = getattr(data, "manifest", None) or {}
    keep = ("source", "layout", "size", "counts", "num_skipped")
    return {"dir": str(data_dir), "num_images": len(data), **{k: manifest[k] for k in keep if k in manifest}}


# --------------------------------------------------------------------------- periodic outputs
def write_samples(cfg: TrainConfig, ema: ConditionalUNet, diffusion: DiffusionConfig, classes: list[dict],
                  class_emb: torch.Tensor, step: int, device: torch.device) -> None:
    """A grid (fixed seeds, a few classes, EMA weights) and a denoising GIF."""

    if cfg.task == "sr":  # held-out images: low res, bicubic, upscaled, truth

        superres.write_sr_samples(cfg.run_dir, ema, diffusion, cfg.data_dir, step, device, n=cfg.sample_classes)
        return

    by_prompt = {c["prompt"]: class_emb[i].cpu().numpy() for i, c in enumerate(classes)}
    encode = lambda prompts: np.stack([by_prompt[p] for p in prompts])  # noqa: E731 - no text encoder in training
    chosen = classes[: cfg.sample_classes]
    prompts = [c["prompt"] for c in chosen]
    sampler = STUDENT_SAMPLER[cfg.distill_method] if cfg.task == "distill" else "dpm++"
    res = generate_images(ema, diffusion, prompts, num_images=len(prompts), sampler=sampler,
                            num_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance, seed=1234,
                            encode_fn=encode, return_frames=True, device=device)
    out = cfg.run_dir / "samples"
    drawing.sample_grid(res.images, nrow=min(8, len(prompts)), labels=[c["name"] for c in chosen],
                        path=out / f"grid_{step:07d}.png")
    drawing.denoising_gif(res.frames, res.frame_timesteps, out / f"denoise_{step:07d}.gif",
                          nrow=min(8, len(prompts)))


def write_loss_curve(cfg: TrainConfig) -> None:
    path = cfg.run_dir / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    if rows:
        drawing.loss_curve([float(r["step"]) for r in rows], [float(r["loss"]) for r in rows],
                           cfg.run_dir / "loss_curve.png")


# --------------------------------------------------------------------------- disk space
class DiskSpaceError(RuntimeError):
    """Too little free disk space for the next checkpoint (the previous one is kept)."""


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """What one checkpoint takes: the weights, their EMA and AdamW's two moments, in fp32."""
    return 4 * 4 * count_parameters(model)


def check_disk_space(folder: Path, need: int) -> None:
    """Refuse to start a checkpoint that cannot fit (twice its size: it is written beside the old
    ones, then renamed), rather than die half-way through writing it."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < 2 * need:
        raise DiskSpaceError(f"only {free / 2**20:.0f} MB free in {folder}: a checkpoint needs {2 * need / 2**20:.0f} MB. "
                             "Free some space (or lower --keep_checkpoints) and run the same command to resume "
                             "from the last checkpoint")


# --------------------------------------------------------------------------- one writer per run
class RunLockedError(RuntimeError):
    """Another training process is already writing this run folder."""


def run_lock(run_dir: Path) -> Any:
    """Hold ``<run_dir>/.train.lock`` for the whole run, so a run folder never has two writers.

    Two processes on one run would write the same ``ckpt-NNNNNNN`` folders and replace each
    other's ``metrics.csv``. The lock is the project's file lock (``engine.files.exclusive_lock``).
    """
    return exclusive_lock(run_dir / ".train.lock", busy=lambda pid: RunLockedError(
        f"another training process (pid {pid}) is already writing {run_dir}: wait for it to finish, "
        "stop it, or give this run another --run_name"))


def noisy_condition(cond: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Unit text embeddings (batch, dim) plus Gaussian noise of norm about ``noise``, renormalised: the
    cosine to the text is about 1 / sqrt(1 + noise^2) (``TrainConfig.cond_noise``)."""
    eps = torch.randn(cond.shape, device=cond.device, generator=generator, dtype=cond.dtype)
    return F.normalize(cond + eps * (noise / cond.shape[1] ** 0.5), dim=1)


def rescale_cond_input(state: dict[str, torch.Tensor], old_scale: float, new_scale: float) -> dict[str, torch.Tensor]:
    """The same network's weights for another ``cond_scale``: the text embedding's first linear
    layer sees ``cond * scale``, so its weight times ``old / new`` computes the same function
    (null condition included: it is scaled with the text). What changes is how fast that layer
    learns: at a larger scale its weights are smaller, and Adam's steps of a fixed size move
    them relatively more; that is why a larger scale lets the condition in sooner."""
    if old_scale == new_scale:
        return state
    key = "cond_embed.0.weight"
    if key not in state:
        raise ValueError("cond_scale differs but the network has no text-embedding layer to rescale")
    return {**state, key: state[key] * (old_scale / new_scale)}


def init_weights_from(source: str, model: torch.nn.Module, ema: torch.nn.Module,
                      config_json: dict[str, Any]) -> tuple[int, float]:
    """Load the EMA weights of a store model or checkpoint folder into ``model`` and ``ema``.

    The source must have this run's network and classes (checked before anything is
    loaded); returns its (images seen, training seconds) so the new run's totals go on
    from there."""
    lm = store.load_model(source, model_type=None)
    # compared as networks, not as JSON: a model saved before a field existed has that field's default.
    # cond_scale may differ: it is a reparameterisation (rescale_cond_input keeps the function).
    source_cfg = lm.model.config
    if replace(source_cfg, cond_scale=model.config.cond_scale) != model.config:
        raise ValueError(f"--init_from {source}: its network {source_cfg} is not this run's {model.config}")
    if [c.get("prompt") for c in lm.classes] != [c.get("prompt") for c in config_json.get("classes", [])]:
        raise ValueError(f"--init_from {source}: its classes are not this run's data's classes")
    state = rescale_cond_input(lm.model.state_dict(), source_cfg.cond_scale, model.config.cond_scale)
    model.load_state_dict(state)
    ema.load_state_dict(state)
    return int(lm.config.get("images_seen", 0)), float(lm.config.get("train_seconds", 0.0))


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


# --------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> Path:
    """Train until ``max_steps`` (or ``max_minutes``, or Ctrl-C); return the last checkpoint folder.

    Only one process may train a run folder at a time (``run_lock``); in a
    torchrun job that is rank 0, which does all the writing.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg)
    with run_lock(cfg.run_dir):
        return _train(cfg)


def _train(cfg: TrainConfig) -> Path:
    # ---- processes and device
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp:
        local_rank = int(os.environ["LOCAL_RANK"])
        device = pick_device(cfg.device, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world, local_rank = 0, 1, 0
        device = pick_device(cfg.device, 0)
    master = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})")
    per_rank = cfg.batch_size // world
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and fast_bf16(device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data (embeddings come from the preprocessed folder: no text encoder here)
    data = PreprocessedDataset(cfg.data_dir, split="train")
    classes = data.classes
    class_emb = data.class_embeddings.to(device)
    templ_emb = data.template_embeddings.to(device) if (cfg.random_templates and data.template_embeddings is not None) else None
    batches = Batches(data.images, np.asarray(data.labels), per_rank, rank, world, cfg.seed)

    # ---- model, EMA, optimizer (a student: the teacher's network with a guidance input)
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg, classes, device) if cfg.task == "distill" else None
    unet_cfg = cfg.unet_config(data.image_size) if teacher is None else replace(teacher.model.config, guidance_embed=True)
    diffusion = cfg.diffusion_config() if teacher is None else teacher.diffusion
    terms = diffusion.terms()
    model = ConditionalUNet(unet_cfg).to(device)
    if teacher is not None:  # every weight but the (zero) guidance embedder's: the student starts as the teacher
        missing, unexpected = model.load_state_dict(teacher.model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
            raise ValueError(f"teacher {cfg.teacher}: weights do not fit its own network ({missing}, {unexpected})")
    ema = ConditionalUNet(unet_cfg).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    distill = cfg.distill_config(teacher.guidance_interval) if teacher is not None else None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel: CUDA, and CPU since torch 2.4 (~2.5x faster optimizer step on CPU than the loop)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, ValueError, TypeError):
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    run_dir = cfg.run_dir
    ckpt_root = run_dir / "checkpoints"
    config_json = store.model_config(
        unet_cfg, diffusion, classes, prompt_template=classes_template(cfg.data_dir),
        train=asdict(cfg), data=data_summary(cfg.data_dir, data),
        **({"model_type": "sr", "sr": {"scale": 2, "low_res_size": data.image_size // 2, "crop": cfg.sr_crop,
                                       "aug_max": cfg.sr_aug_max}} if cfg.task == "sr" else {}),
        **(student_description(cfg, teacher, distill) if teacher is not None else {}),
    )

    # ---- resume
    step, images_seen, train_seconds = 0, 0, 0.0
    if cfg.resume == "auto":
        # Rank 0 picks and tells the others, so every process resumes from the same step.
        resume_from = latest_checkpoint_usable(ckpt_root) if master else None
        if ddp:
            box = [str(resume_from) if resume_from is not None else None]
            dist.broadcast_object_list(box, src=0)
            resume_from = Path(box[0]) if box[0] is not None else None
        if master:
            set_aside_unusable(ckpt_root, resume_from)
    else:
        resume_from = None if cfg.resume in ("never", "") else Path(cfg.resume)
    if resume_from is None and cfg.init_from:
        images_seen, train_seconds = init_weights_from(cfg.init_from, model, ema, config_json)
        if master:
            log.info("starting from the weights of %s (%d images seen, %.0f min of training before)",
                     cfg.init_from, images_seen, train_seconds / 60)
    if resume_from is not None:
        state = store.load_checkpoint(resume_from, model, ema, optimizer)
        step = state.step
        images_seen = int(state.config.get("images_seen", step * cfg.batch_size))
        train_seconds = float(state.config.get("train_seconds", 0.0))
        if "torch" in state.rng:
            torch.set_rng_state(state.rng["torch"])
        if master:
            log.info("resumed from %s at step %d", resume_from, step)

    fwd_model: torch.nn.Module = model
    if ddp:
        fwd_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        fwd_model = torch.compile(fwd_model)
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        log.info("model: %.2fM parameters, %d px, %d classes, %d training images; %s; %s",
                 count_parameters(model) / 1e6, data.image_size, len(classes), len(data),
                 hardware_description(device, world), "bf16 autocast" if use_bf16 else "fp32")

    def save(at_step: int) -> Path:
        check_disk_space(ckpt_root, checkpoint_bytes(model))
        meta = dict(config_json, images_seen=images_seen, train_seconds=round(train_seconds, 1),
                    hardware=hardware_description(device, world), parameters=count_parameters(model),
                    rng={"scheme": "per-step seeds from (seed, step, rank)", "seed": cfg.seed})
        return store.save_checkpoint(ckpt_root, at_step, model, ema, optimizer, meta,
                                     rng={"torch": torch.get_rng_state()}, keep=cfg.keep_checkpoints)

    # Ctrl-C and SIGTERM both end the loop cleanly: the current step finishes, then a
    # checkpoint is written. A second Ctrl-C stops at once (saving only a consistent state).
    stop = {"flag": False}

    def request_stop(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        if master:
            log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
                        signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)

    if master:
        remove_stale_temp(ckpt_root)
    metrics_path = run_dir / "metrics.csv"
    metrics = None
    header = metrics_header(cfg.num_train_timesteps)
    band_sum, band_n = torch.zeros(NOISE_BANDS), torch.zeros(NOISE_BANDS)
    board = EventWriter(run_dir / "tensorboard") if master and cfg.report_to == "tensorboard" else None
    if master:
        new = not metrics_path.exists() or step == 0
        if not new:
            truncate_metrics(metrics_path, step, header)  # rows past the checkpoint were lost with the steps
        metrics = metrics_path.open("w" if new else "a", newline="")
        writer = csv.writer(metrics)
        if new:
            writer.writerow(header)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not master, desc=cfg.run_name, dynamic_ncols=True)
    last_ckpt = None
    end_step = min(cfg.max_steps, cfg.stop_at_step) if cfg.stop_at_step > 0 else cfg.max_steps
    consistent = True  # False while the weights, EMA and optimizer are half-way through an update
    started = loop_start = time.time()
    window_loss, window_n, window_t = 0.0, 0, time.time()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext())
    model.train()
    try:
        while step < end_step and not stop["flag"]:
            # ---- one step; every random draw comes from this step's seed
            s = step_seed(cfg.seed, step, rank)
            torch.manual_seed(s)  # dropout
            g = torch.Generator(device=device).manual_seed(s)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            imgs, labels = batches.get(step)
            x = imgs.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
            labels = labels.to(device)
            b = x.shape[0]
            flip = torch.rand(b, device=device, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if templ_emb is not None:
                which = torch.randint(0, templ_emb.shape[1], (b,), device=device, generator=g)
                cond = templ_emb[labels, which]
            else:
                cond = class_emb[labels]
            if cfg.cond_noise > 0:
                cond = noisy_condition(cond, cfg.cond_noise, g)
            drop = torch.rand(b, device=device, generator=g) < cfg.cond_drop_prob
            t = sample_timesteps(cfg.num_train_timesteps, b, method=cfg.timestep_sampling, logit_mean=cfg.logit_mean,
                                   logit_std=cfg.logit_std, device=device, generator=g)
            with autocast:
                if cfg.task == "sr":  # crops of x paired with their low-resolution counterparts (training/superres.py)

                    loss = superres.sr_training_loss(
                        fwd_model, terms, x, cond if cfg.sr_text else None, crop=cfg.sr_crop, aug_max=cfg.sr_aug_max,
                        prediction_type=cfg.prediction_type, drop_cond=drop if cfg.sr_text else None,
                        min_snr_gamma=cfg.min_snr_gamma or None, t=t, generator=g, channels_last=cfg.channels_last,
                        residual=cfg.sr_residual)
                    per_image = None
                elif distill is not None:  # a few-step student (core/distill.py), at w ~ U[min, max] per image
                    w = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(
                        b, device=device, generator=g)
                    common = dict(prediction_type=diffusion.prediction_type,
                                  teacher_prediction_type=teacher.diffusion.prediction_type, generator=g)
                    if distill.method == "consistency":
                        per_image = consistency_loss(fwd_model, model, teacher.model, terms, x, cond, w, distill,
                                                     **common)
                    else:
                        per_image = trajectory_loss(fwd_model, teacher.model, terms, x, cond, w, distill, **common)
                    loss = per_image.mean()
                    per_image = None  # its t is the student's, not a noise level drawn for the loss bands
                else:
                    per_image = per_sample_loss(fwd_model, terms, x, cond, prediction_type=cfg.prediction_type,
                                                drop_cond=drop, min_snr_gamma=cfg.min_snr_gamma or None, t=t,
                                                generator=g)
                    loss = per_image.mean()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            consistent = False
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, model, step, cfg.ema_decay)
            step += 1
            images_seen += cfg.batch_size
            consistent = True

            # ---- bookkeeping
            window_loss += loss.item()
            window_n += 1
            if per_image is not None:  # the loss by noise level (this process's images): what is learnt when
                band = (t * NOISE_BANDS // cfg.num_train_timesteps).clamp(max=NOISE_BANDS - 1).cpu()
                band_sum.index_add_(0, band, per_image.detach().float().cpu())
                band_n.index_add_(0, band, torch.ones_like(band, dtype=torch.float32))
            now = time.time()
            train_seconds += now - started
            started = now
            if cfg.max_minutes and now - loop_start > cfg.max_minutes * 60:
                stop["flag"] = True
            if cfg.stop_at_minutes and train_seconds >= cfg.stop_at_minutes * 60:
                stop["flag"] = True
            if ddp:  # all processes stop at the same step, whichever of them was told to
                flag = torch.tensor([1.0 if stop["flag"] else 0.0], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop["flag"] = bool(flag.item())
            # a row at every log_every steps, at the end, and at a stop (the checkpoint's step, so
            # whoever reads metrics.csv sees where a resume will start)
            if step % cfg.log_every == 0 or step == end_step or stop["flag"]:
                ips = window_n * cfg.batch_size / max(1e-9, now - window_t)
                mean_loss = window_loss / window_n
                if ddp:
                    t = torch.tensor([mean_loss], device=device)
                    dist.all_reduce(t)
                    mean_loss = t.item() / world
                if master:
                    bands = [f"{v:.6f}" if n > 0 else "" for v, n in zip((band_sum / band_n.clamp(min=1)).tolist(),
                                                                         band_n.tolist())]
                    writer.writerow([step, f"{mean_loss:.6f}", f"{lr_at(cfg, step - 1):.3e}", f"{ips:.1f}",
                                     f"{train_seconds:.1f}", *bands])
                    metrics.flush()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                    if board:
                        board.scalars(step, {"train/loss": mean_loss, "train/lr": lr_at(cfg, step - 1),
                                             "train/images_per_s": ips,
                                             **{f"train/{name}": float(v) for name, v in zip(header[5:], bands) if v}})
                window_loss, window_n, window_t = 0.0, 0, now
                band_sum.zero_()
                band_n.zero_()
            bar.update(1)
            pause = time.time()
            if master and step % cfg.ckpt_every == 0:
                last_ckpt = save(step)
            if master and cfg.sample_every and step % cfg.sample_every == 0:
                write_samples(cfg, ema, diffusion, classes, class_emb, step, device)
                write_loss_curve(cfg)
                grid = run_dir / "samples" / f"grid_{step:07d}.png"
                if board and grid.exists():
                    board.image(step, "samples/grid", np.asarray(Image.open(grid).convert("RGB")))
            paused = time.time() - pause  # checkpoints and samples are neither training time nor images/s
            started += paused
            window_t += paused
    except KeyboardInterrupt:
        if master:
            log.warning("interrupted at step %d", step)
        stop["flag"] = True
    finally:
        bar.close()
        batches.close()
        no_room = None  # a full disk at the last checkpoint: reported after the files are closed
        if master:
            if step > 0 and (last_ckpt is None or last_ckpt.name != f"ckpt-{step:07d}"):
                if consistent:
                    try:
                        last_ckpt = save(step)
                    except DiskSpaceError as e:
                        no_room = e
                else:  # stopped inside an optimizer/EMA update: that state must not be saved
                    log.warning("stopped in the middle of an update at step %d: not saving it; the last "
                                "checkpoint is %s", step, last_ckpt or store.latest_checkpoint(ckpt_root))
            if metrics:
                metrics.close()
            if board:
                board.close()
            write_loss_curve(cfg)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ddp:
            dist.barrier()
            dist.destroy_process_group()
        if no_room is not None:
            raise no_room
    if master:
        log.info("finished at step %d (%d images seen, %.1f min of training); checkpoint: %s",
                 step, images_seen, train_seconds / 60, last_ckpt)
    return last_ckpt if last_ckpt is not None else ckpt_root


NOISE_BANDS = 4  # metrics.csv splits the loss over this many equal ranges of t


def metrics_header(num_train_timesteps: int) -> list[str]:
    """``metrics.csv``'s columns: the loss, then the loss in each band of t (``loss_t0_250`` ...)."""
    edges = [round(k * num_train_timesteps / NOISE_BANDS) for k in range(NOISE_BANDS + 1)]
    return ["step", "loss", "lr", "images_per_s", "elapsed_s",
            *(f"loss_t{lo}_{hi}" for lo, hi in zip(edges, edges[1:]))]


def truncate_metrics(path: Path, step: int, header: list[str] | None = None) -> None:
    """Drop the rows of ``metrics.csv`` after ``step`` (written by steps a crash took back); with
    ``header``, a file written before a column existed gets today's header, its old rows empty there."""
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1]
    for line in lines[1:]:
        try:
            if int(line.split(",", 1)[0]) <= step:
                keep.append(line)
        except ValueError:  # a half-written last line
            continue
    if header and lines and lines[0].strip().split(",") != header:
        old_width = len(lines[0].strip().split(","))
        keep = [",".join(header) + "\n"] + [line.rstrip("\r\n") + "," * (len(header) - old_width) + "\n"
                                            for line in keep[1:]]
    if keep != lines:
        atomic_write_text(path, "".join(keep))


def remove_stale_temp(ckpt_root: Path) -> None:
    """Delete checkpoint folders a killed run left half-written (the run's only writer is this process)."""
    root = Path(ckpt_root)
    if root.is_dir():
        for tmp in root.glob(".tmp-ckpt-*"):
            log.warning("removing an unfinished checkpoint left by an earlier run: %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def set_aside_unusable(ckpt_root: Path, resume_from: Path | None) -> None:
    """Rename checkpoints newer than ``resume_from`` (so unusable) to ``.unusable-ckpt-...``.

    Otherwise a damaged checkpoint with a higher step could survive keep-last-K
    pruning while good ones are deleted. Kept, not deleted, for inspection.
    """
    last = -1 if resume_from is None else store.checkpoint_step(resume_from)
    for path in store.checkpoint_dirs(ckpt_root):
        if store.checkpoint_step(path) > last:
            aside = path.with_name(f".unusable-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("setting aside unusable checkpoint %s as %s", path, aside.name)
            os.replace(path, aside)
