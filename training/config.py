"""What a training run is told: ``TrainConfig`` (every field a ``--flag`` of ``python diffusion.py
train``), the presets (dicts of overrides) and ``make_config``, which joins the two.

The run's code is ``training.loop`` (which re-exports these names for its callers); what differs
between its tasks (base, sr, distill) is ``training.tasks``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.distill import DistillConfig
from core.loss import TIMESTEP_SAMPLINGS
from core.samplers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SAMPLER_DEFAULTS
from core.schedules import DiffusionConfig
from models import UNetConfig
from models.text_encoder import TEXT_EMBED_DIM

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
    text_film: bool = False  # the text scales and shifts every block through its own projection (UNetConfig)
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
    sample_steps: int = SAMPLER_DEFAULTS[DEFAULT_SAMPLER].steps  # the preview grids' steps and guidance
    sample_guidance: float = DEFAULT_GUIDANCE
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
            emb_dim=self.emb_dim, cond_scale=self.cond_scale, text_film=self.text_film, **(sr if self.task == "sr" else {}),
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
    # The 200-class long run (issue 34, BENCHMARKS.md "tiny200, round two"): the default recipe at width 48
    # (48/96/192 channels, 2.25x the FLOPs: the slim net's quality flattened near 0.9M images) with the text
    # scaling and shifting every block (text_film: FD 33.5 against 36.6 at 60 CPU-minutes), trained from
    # its first step with one learning-rate schedule for the whole budget: warm-up, then cosine decay to
    # 0.1x at step 30,000 (960k images, about 8 CPU-hours on 2 EPYC cores). Stop and resume it at will
    # (--max_minutes); the schedule follows max_steps. Data: `python preprocess.py --src
    # ../shared/data/tiny-imagenet-200.zip --size 32 --val-fraction 0.02 --out data/tiny200_32`.
    "tiny200": dict(run_name="tiny200_w48tf", data_dir="data/tiny200_32", base_channels=48, channel_mult=(1, 2, 4),
                    num_res_blocks=2, attention_resolutions=(8,), dropout=0.0, batch_size=32, lr=1e-3,
                    warmup_steps=200, max_steps=30_000, ema_decay=0.999, sample_every=2500, ckpt_every=500,
                    cond_scale=384 ** 0.5, text_film=True),
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
