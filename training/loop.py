"""Training the conditional U-Net: one loop, CPU to many GPUs (torchrun + DDP).

Read ``_train()`` top to bottom: processes, data, model + EMA + optimizer, resume, the step
loop with its checkpoints, previews and log, and the end. What differs between the tasks
(base text-to-image, sr super-resolution, distill few-step students) is a task object
(``training.tasks``) the loop calls; the configuration is ``training.config`` (every field a
``--flag`` of ``python diffusion.py train``); the run folder's files are ``training.run_folder``.

Reproducibility: the batch and every random draw of step ``s`` (data order,
flips, condition dropout, prompt templates, timesteps, noise, dropout) are
seeded from ``(seed, step, rank)`` alone, so resuming from a checkpoint
continues exactly as if the run had never stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.loss import sample_timesteps
from core.precision import fast_bf16
from core.schedules import DiffusionConfig
from dataprep.dataset import PreprocessedDataset
from engine import store
from engine.store import latest_checkpoint_usable  # noqa: F401 - also used as training.latest_checkpoint_usable
from models import ConditionalUNet, count_parameters
from models.text_encoder import DEFAULT_PROMPT_TEMPLATE
# training.loop is the training package's public face: callers (diffusion.py, benchmarks, tests) take
# the configuration and the errors train() raises from here
from training.config import PRESETS, TrainConfig, make_config  # noqa: F401 - re-exported
from training.run_folder import (  # noqa: F401 - DiskSpaceError and RunLockedError re-exported
    DiskSpaceError,
    MetricsLog,
    RunLockedError,
    check_disk_space,
    checkpoint_bytes,
    remove_stale_temp,
    run_lock,
    set_aside_unusable,
    write_loss_curve,
)
from training.tasks import Batch, BaseTask, make_task

log = logging.getLogger("train")


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
    # cond_scale may differ: it is a reparameterisation (rescale_cond_input keeps the function). So may
    # dropout: it holds no weights, and a long run may add it to fine-tune a network trained without.
    source_cfg = lm.model.config
    if replace(source_cfg, cond_scale=model.config.cond_scale, dropout=model.config.dropout) != model.config:
        raise ValueError(f"--init_from {source}: its network {source_cfg} is not this run's {model.config}")
    if [c.get("prompt") for c in lm.classes] != [c.get("prompt") for c in config_json.get("classes", [])]:
        raise ValueError(f"--init_from {source}: its classes are not this run's data's classes")
    state = rescale_cond_input(lm.model.state_dict(), source_cfg.cond_scale, model.config.cond_scale)
    model.load_state_dict(state)
    ema.load_state_dict(state)
    return int(lm.config.get("images_seen", 0)), float(lm.config.get("train_seconds", 0.0))


# --------------------------------------------------------------------------- setup
@dataclass
class Processes:
    """This process's place in the job: rank ``rank`` of ``world`` (a torchrun job: DDP), and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:  # rank 0: the one that writes files
        return self.rank == 0

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes."""
        if not self.ddp:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any (so all of them stop at the same step)."""
        if not self.ddp:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def wrap(self, model: torch.nn.Module, compiled: bool) -> torch.nn.Module:
        """``model`` as the training steps call it: in DDP (which averages the gradients), compiled."""
        net: torch.nn.Module = model
        if self.ddp:
            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if compiled:
            net = torch.compile(net)
        return net

    def end(self) -> None:
        """Leave the process group (after every process has got here)."""
        if self.ddp:
            dist.barrier()
            dist.destroy_process_group()

    def from_master(self, path: Path | None) -> Path | None:
        """Rank 0's ``path``, on every process."""
        if not self.ddp:
            return path
        box = [str(path) if path is not None else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0]) if box[0] is not None else None


def start_processes(cfg: TrainConfig) -> Processes:
    """One process, or (under torchrun: WORLD_SIZE > 1) this one's process group, on its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = pick_device(cfg.device, int(os.environ["LOCAL_RANK"]))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        procs = Processes(dist.get_rank(), dist.get_world_size(), device)
    else:
        procs = Processes(0, 1, pick_device(cfg.device, 0))
    if cfg.batch_size % procs.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({procs.world})")
    if procs.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return procs


def build_model(cfg: TrainConfig, task: BaseTask, image_size: int, classes: list[dict],
                device: torch.device) -> tuple[ConditionalUNet, ConditionalUNet, DiffusionConfig]:
    """The network (from ``cfg.seed``, then the task's starting weights), its EMA and its noise schedule."""
    torch.manual_seed(cfg.seed)
    unet_cfg, diffusion = task.network(image_size, classes, device)
    model = ConditionalUNet(unet_cfg).to(device)
    task.init_weights(model)
    ema = ConditionalUNet(unet_cfg).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, ema, diffusion


def announce(cfg: TrainConfig, procs: Processes, model: torch.nn.Module, data: PreprocessedDataset,
             use_bf16: bool) -> None:
    """The run folder's ``train_config.json``, and a log line of what trains where."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log.info("model: %.2fM parameters, %d px, %d classes, %d training images; %s; %s",
             count_parameters(model) / 1e6, data.image_size, len(data.classes), len(data),
             hardware_description(procs.device, procs.world), "bf16 autocast" if use_bf16 else "fp32")


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, with weight decay on the weight matrices and convolutions only (not biases and norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel: CUDA, and CPU since torch 2.4 (~2.5x faster optimizer step on CPU than the loop)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def restore(cfg: TrainConfig, procs: Processes, model: torch.nn.Module, ema: torch.nn.Module,
            optimizer: torch.optim.Optimizer, config_json: dict[str, Any]) -> tuple[int, int, float]:
    """Resume the run from its checkpoint (``--resume``), or start it from another model's weights
    (``--init_from``), or neither; returns (step, images seen, training seconds) to go on from."""
    ckpt_root = cfg.run_dir / "checkpoints"
    if cfg.resume == "auto":
        # Rank 0 picks and tells the others, so every process resumes from the same step.
        resume_from = procs.from_master(latest_checkpoint_usable(ckpt_root) if procs.master else None)
        if procs.master:
            set_aside_unusable(ckpt_root, resume_from)
    else:
        resume_from = None if cfg.resume in ("never", "") else Path(cfg.resume)
    if resume_from is None:
        if not cfg.init_from:
            return 0, 0, 0.0
        images_seen, train_seconds = init_weights_from(cfg.init_from, model, ema, config_json)
        if procs.master:
            log.info("starting from the weights of %s (%d images seen, %.0f min of training before)",
                     cfg.init_from, images_seen, train_seconds / 60)
        return 0, images_seen, train_seconds
    state = store.load_checkpoint(resume_from, model, ema, optimizer)
    if "torch" in state.rng:
        torch.set_rng_state(state.rng["torch"])
    if procs.master:
        log.info("resumed from %s at step %d", resume_from, state.step)
    return (state.step, int(state.config.get("images_seen", state.step * cfg.batch_size)),
            float(state.config.get("train_seconds", 0.0)))


class Checkpoints:
    """Rank 0's checkpoints of the run: weights, EMA, optimizer and torch RNG, with ``config_json``
    and the run's totals so far; ``last`` is the newest this process wrote."""

    def __init__(self, cfg: TrainConfig, procs: Processes, model: torch.nn.Module, ema: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, config_json: dict[str, Any]):
        self.cfg, self.procs, self.model, self.ema, self.optimizer = cfg, procs, model, ema, optimizer
        self.config_json = config_json
        self.root = cfg.run_dir / "checkpoints"
        self.last: Path | None = None

    def save(self, step: int, images_seen: int, train_seconds: float) -> Path:
        check_disk_space(self.root, checkpoint_bytes(self.model))
        meta = dict(self.config_json, images_seen=images_seen, train_seconds=round(train_seconds, 1),
                    hardware=hardware_description(self.procs.device, self.procs.world),
                    parameters=count_parameters(self.model),
                    rng={"scheme": "per-step seeds from (seed, step, rank)", "seed": self.cfg.seed})
        self.last = store.save_checkpoint(self.root, step, self.model, self.ema, self.optimizer, meta,
                                          rng={"torch": torch.get_rng_state()}, keep=self.cfg.keep_checkpoints)
        return self.last

    def save_last(self, step: int, images_seen: int, train_seconds: float,
                  consistent: bool) -> DiskSpaceError | None:
        """At the end: a checkpoint of ``step`` unless there is one already, or the run stopped inside an
        optimizer/EMA update (that state must not be saved). Returns a full disk's error, to raise later."""
        if step == 0 or (self.last is not None and self.last.name == f"ckpt-{step:07d}"):
            return None
        if not consistent:
            log.warning("stopped in the middle of an update at step %d: not saving it; the last "
                        "checkpoint is %s", step, self.last or store.latest_checkpoint(self.root))
            return None
        try:
            self.save(step, images_seen, train_seconds)
        except DiskSpaceError as e:
            return e
        return None


class StopSignals:
    """Ctrl-C and SIGTERM end the loop cleanly: the current step finishes, then a checkpoint is
    written. A second Ctrl-C stops at once (saving only a consistent state). ``flag`` is also
    how the loop itself asks to stop (time limits, another process stopping)."""

    def __init__(self, verbose: bool):
        self.flag, self.verbose = False, verbose
        self.previous: dict[int, Any] = {}

    def _request(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.flag:
            raise KeyboardInterrupt
        self.flag = True
        if self.verbose:
            log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
                        signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def after_step(self, cfg: TrainConfig, procs: Processes, wall_seconds: float, train_seconds: float) -> None:
        """Stop at the time limits; all processes stop at the same step, whichever of them was told to."""
        if cfg.max_minutes and wall_seconds > cfg.max_minutes * 60:
            self.flag = True
        if cfg.stop_at_minutes and train_seconds >= cfg.stop_at_minutes * 60:
            self.flag = True
        if procs.ddp:
            self.flag = procs.any(self.flag)


def draw_batch(cfg: TrainConfig, imgs: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor,
               templ_emb: torch.Tensor | None, generator: torch.Generator, device: torch.device) -> Batch:
    """The step's batch on ``device``, with the random draws every task makes, in this order: flips,
    prompt templates, condition noise, condition dropout, timesteps."""
    g = generator
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
    return Batch(x, cond, drop, t)


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


def _train(cfg: TrainConfig) -> Path:  # over 100 lines: the whole run, read top to bottom (see the module doc)
    task = make_task(cfg)  # base | sr | distill: the one place the loop tells them apart
    # ---- processes and device
    procs = start_processes(cfg)
    device, master = procs.device, procs.master
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and fast_bf16(device))

    # ---- data (embeddings come from the preprocessed folder: no text encoder here)
    data = PreprocessedDataset(cfg.data_dir, split="train")
    classes = data.classes
    class_emb = data.class_embeddings.to(device)
    templ_emb = data.template_embeddings.to(device) if (cfg.random_templates and data.template_embeddings is not None) else None
    batches = Batches(data.images, np.asarray(data.labels), cfg.batch_size // procs.world, procs.rank, procs.world,
                      cfg.seed)

    # ---- model, EMA, optimizer (a student: its teacher's network with a guidance input)
    model, ema, diffusion = build_model(cfg, task, data.image_size, classes, device)
    terms = diffusion.terms()
    optimizer = make_optimizer(cfg, model, device)
    config_json = store.model_config(model.config, diffusion, classes, prompt_template=classes_template(cfg.data_dir),
                                     train=asdict(cfg), data=data_summary(cfg.data_dir, data),
                                     **task.metadata(data.image_size))

    # ---- resume
    step, images_seen, train_seconds = restore(cfg, procs, model, ema, optimizer, config_json)
    fwd_model = procs.wrap(model, compiled=cfg.compile)  # what the steps call: DDP averages its gradients
    if master:
        announce(cfg, procs, model, data, use_bf16)
    checkpoints = Checkpoints(cfg, procs, model, ema, optimizer, config_json)

    # ---- the steps (Ctrl-C and SIGTERM: finish this step, then save)
    with StopSignals(verbose=master) as stop:
        if master:
            remove_stale_temp(checkpoints.root)
        metrics = MetricsLog(cfg, step, master)
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not master, desc=cfg.run_name, dynamic_ncols=True)
        end_step = min(cfg.max_steps, cfg.stop_at_step) if cfg.stop_at_step > 0 else cfg.max_steps
        consistent = True  # False while the weights, EMA and optimizer are half-way through an update
        started = loop_start = time.time()
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext())
        model.train()
        try:
            while step < end_step and not stop.flag:
                # ---- one step; every random draw comes from this step's seed
                s = step_seed(cfg.seed, step, procs.rank)
                torch.manual_seed(s)  # dropout
                g = torch.Generator(device=device).manual_seed(s)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, step)
                imgs, labels = batches.get(step)
                batch = draw_batch(cfg, imgs, labels, class_emb, templ_emb, g, device)
                with autocast:
                    loss, per_image = task.loss(fwd_model, model, terms, batch, g)
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

                # ---- bookkeeping: time, stopping, the log (a row also at a stop: where a resume will start)
                metrics.add(loss.item(), batch.t, per_image)
                now = time.time()
                train_seconds += now - started
                started = now
                stop.after_step(cfg, procs, now - loop_start, train_seconds)
                if step % cfg.log_every == 0 or step == end_step or stop.flag:
                    mean_loss, ips = metrics.write(step, now, lr_at(cfg, step - 1), train_seconds, procs.mean)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                bar.update(1)
                pause = time.time()
                if master and step % cfg.ckpt_every == 0:
                    checkpoints.save(step, images_seen, train_seconds)
                if master and cfg.sample_every and step % cfg.sample_every == 0:
                    task.write_preview(ema, diffusion, classes, class_emb, step, device)
                    write_loss_curve(cfg)
                    metrics.image(step, cfg.run_dir / "samples" / f"grid_{step:07d}.png")
                paused = time.time() - pause  # checkpoints and samples are neither training time nor images/s
                started += paused
                metrics.pause(paused)
        except KeyboardInterrupt:
            if master:
                log.warning("interrupted at step %d", step)
            stop.flag = True
        finally:
            # ---- the end: the last checkpoint (a full disk is reported after the files are closed)
            bar.close()
            batches.close()
            no_room = None
            if master:
                no_room = checkpoints.save_last(step, images_seen, train_seconds, consistent)
                metrics.close()
                write_loss_curve(cfg)
            procs.end()
            if no_room is not None:
                raise no_room
    if master:
        log.info("finished at step %d (%d images seen, %.1f min of training); checkpoint: %s",
                 step, images_seen, train_seconds / 60, checkpoints.last)
    return checkpoints.last if checkpoints.last is not None else checkpoints.root
