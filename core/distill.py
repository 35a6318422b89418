"""Few-step students with guidance folded in: the losses that distil a guided teacher.

A student is the teacher's network with one more input, the guidance scale w (``UNetConfig.guidance_embed``,
initialised to zero so the student starts as the teacher's conditional branch). One forward of the student
stands for the teacher's two (conditional and unconditional) at that w (guided distillation, Meng et al.
2023), and a few of its steps stand for the teacher's twenty. Two ways to teach it, both reading the teacher
through ``guided_teacher``, the same classifier-free guidance (interval included) its sampler uses:

* ``consistency`` (consistency distillation, Song et al. 2023, guided as in LCM, Luo et al. 2023): the
  student learns f(x_t, t) = the clean image at the end of the teacher's ODE path through x_t. Training
  pairs neighbours on a grid of timesteps ``skip`` apart: the teacher takes x_t one DDIM step down to x_s,
  and the student's answer at x_t must match its own (gradient-stopped) answer at x_s; at the lowest grid
  point the target is the teacher's clean estimate, which anchors the chain. One network samples in any
  number of steps (``consistency_sample``: denoise, re-noise to the next level, denoise).
* ``trajectory`` (single-phase multi-step distillation, as TRACT/progressive distillation with one
  phase): the student's own steps are fixed (``make_timesteps(T, student_steps)``); for each it learns the
  x_0 that makes one DDIM step land where ``teacher_substeps`` guided DDIM steps of the teacher land.

At equal CPU-minutes on tiny200 the trajectory student drew recognisable pictures in four steps and the
consistency student collapsed to noise (BENCHMARKS.md, "Few-step students"), so ``trajectory`` is the
default; ``consistency`` stays for that comparison (its bootstrapped target, the student's own answer one
grid step down, let it drift toward the identity map, a near-fixed point of the loss on a fine grid).

Both compare clean-image estimates with the pseudo-Huber distance (Song & Dhariwal 2023, "Improved
techniques for training consistency models"), which is less swayed by outliers than the squared error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from core.loss import eps_from_x0, predict_x0_eps, q_sample
from core.sampling import make_timesteps
from core.schedules import DiffusionTerms, at_t

DISTILL_METHODS = ("consistency", "trajectory")
# the sampler each method's student is made for (``core.samplers``)
STUDENT_SAMPLER = {"consistency": "lcm", "trajectory": "ddim"}
Network = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class DistillConfig:
    """How a student is taught (stored in its config as ``distill``)."""

    method: str = "trajectory"
    guidance_min: float = 1.0  # each training image gets w ~ U[guidance_min, guidance_max]
    guidance_max: float = 8.0
    skip: int = 25  # consistency: timesteps between the grid's neighbours (25 of 1000: 40 teacher steps)
    student_steps: int = 4  # trajectory: the student's steps
    teacher_substeps: int = 5  # trajectory: teacher DDIM steps per student step
    # the teacher's guidance interval (EDM sigma): guidance only where its sampler guides
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.method not in DISTILL_METHODS:
            raise ValueError(f"distillation method must be one of {DISTILL_METHODS}, got {self.method!r}")
        if not 0 <= self.guidance_min <= self.guidance_max <= 10:
            raise ValueError(f"need 0 <= guidance_min <= guidance_max <= 10, got {self.guidance_min}, {self.guidance_max}")
        if self.skip < 1 or self.student_steps < 1 or self.teacher_substeps < 1:
            raise ValueError("skip, student_steps and teacher_substeps must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guidance_interval"] = list(self.guidance_interval) if self.guidance_interval else None
        return d


def _alpha_sigma(terms: DiffusionTerms, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha-bar) and sqrt(1 - alpha-bar) at t, with t = -1 meaning the clean image (1, 0)."""
    clean = (t < 0).reshape(-1, *([1] * (like.ndim - 1)))
    tc = t.clamp(min=0)
    a = at_t(terms.sqrt_alphas_cumprod, tc, like)
    s = at_t(terms.sqrt_one_minus_alphas_cumprod, tc, like)
    return torch.where(clean, torch.ones_like(a), a), torch.where(clean, torch.zeros_like(s), s)


def ddim_step(terms: DiffusionTerms, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
              s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from x_t (given its x_0, eps) to timestep s (per row; -1 = the clean image)."""
    a_s, sig_s = _alpha_sigma(terms, s, x)
    return a_s * x0 + sig_s * eps


def guided_teacher(teacher: Network, terms: DiffusionTerms, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                   guidance: torch.Tensor, prediction_type: str,
                   guidance_interval: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's classifier-free-guided (x_0, eps) at per-row t and w, clipped as its sampler clips.

    Rows whose noise level is outside ``guidance_interval`` get w = 1, as ``GuidedDenoiser`` does."""
    b = x.shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
    out = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop).float()
    cond_out, null_out = out.chunk(2)
    w = guidance.float()
    if guidance_interval is not None:
        lo, hi = guidance_interval
        ab = terms.alphas_cumprod.to(x.device)[t]
        sigma = ((1 - ab) / ab).sqrt()
        w = torch.where((sigma > lo) & (sigma <= hi), w, torch.ones_like(w))
    guided = null_out + w.reshape(-1, 1, 1, 1) * (cond_out - null_out)
    x0, _ = predict_x0_eps(terms, x, t, guided, prediction_type)
    x0 = x0.clamp(-1, 1)
    return x0, eps_from_x0(terms, x, t, x0)


def student_x0(student: Network, terms: DiffusionTerms, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               guidance: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The student's clean-image estimate (unclipped: the loss sees what the network says)."""
    out = student(x, t, cond, None, guidance=guidance).float()
    return predict_x0_eps(terms, x, t, out, prediction_type)[0]


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image sqrt(|a - b|^2 + c^2) - c, with c = 0.00054 sqrt(d) as in improved consistency training."""
    d = a[0].numel()
    c = 0.00054 * math.sqrt(d)
    sq = (a - b).pow(2).flatten(1).sum(1)
    return (sq + c * c).sqrt() - c


def consistency_grid(num_train_timesteps: int, skip: int) -> torch.Tensor:
    """The consistency grid: skip-1, 2 skip-1, ..., ending at T-1 (so 1, 2 and 4 trailing steps lie on it
    whenever skip divides T/4)."""
    if num_train_timesteps % skip:
        raise ValueError(f"skip {skip} must divide the {num_train_timesteps} training timesteps")
    return torch.arange(skip - 1, num_train_timesteps, skip)


def consistency_loss(student: Network, target_net: Network, teacher: Network, terms: DiffusionTerms,
                     x0: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor, cfg: DistillConfig, *,
                     prediction_type: str, teacher_prediction_type: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image consistency-distillation loss (see the module's docstring)."""
    b, device = x0.shape[0], x0.device
    grid = consistency_grid(terms.num_train_timesteps, cfg.skip).to(device)
    j = torch.randint(0, len(grid), (b,), device=device, generator=generator)
    t, s = grid[j], torch.where(j > 0, grid[(j - 1).clamp(min=0)], torch.full_like(j, -1))
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(terms, x0, t, noise)
    with torch.no_grad():
        t_x0, t_eps = guided_teacher(teacher, terms, x_t, t, cond, guidance, teacher_prediction_type,
                                     cfg.guidance_interval)
        x_s = ddim_step(terms, x_t, t_x0, t_eps, s)
        target = t_x0.clone()  # at the lowest grid point: the teacher's clean estimate
        inner = s >= 0
        if inner.any():
            target[inner] = student_x0(target_net, terms, x_s[inner], s[inner], cond[inner], guidance[inner],
                                       prediction_type)
    return pseudo_huber(student_x0(student, terms, x_t, t, cond, guidance, prediction_type), target)


def trajectory_loss(student: Network, teacher: Network, terms: DiffusionTerms, x0: torch.Tensor,
                    cond: torch.Tensor, guidance: torch.Tensor, cfg: DistillConfig, *, prediction_type: str,
                    teacher_prediction_type: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image single-phase multi-step distillation loss (see the module's docstring)."""
    b, device = x0.shape[0], x0.device
    steps = make_timesteps(terms.num_train_timesteps, cfg.student_steps, "trailing") + [-1]
    bounds = torch.tensor(steps, device=device)
    i = torch.randint(0, cfg.student_steps, (b,), device=device, generator=generator)
    t, s = bounds[i], bounds[i + 1]
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(terms, x0, t, noise)
    with torch.no_grad():
        x, u = x_t, t
        for k in range(1, cfg.teacher_substeps + 1):  # the teacher's DDIM steps from t down to s
            nxt = t + torch.div((s - t) * k, cfg.teacher_substeps, rounding_mode="floor")
            if k == cfg.teacher_substeps:
                nxt = s
            u_x0, u_eps = guided_teacher(teacher, terms, x, u, cond, guidance, teacher_prediction_type,
                                         cfg.guidance_interval)
            x, u = ddim_step(terms, x, u_x0, u_eps, nxt), nxt
        # the x_0 whose DDIM step from x_t lands on the teacher's x_s: x_s = a_s x0 + sig_s (x_t - a_t x0) / sig_t
        a_t, sig_t = _alpha_sigma(terms, t, x_t)
        a_s, sig_s = _alpha_sigma(terms, s, x_t)
        ratio = sig_s / sig_t
        target = (x - ratio * x_t) / (a_s - ratio * a_t)
    return pseudo_huber(student_x0(student, terms, x_t, t, cond, guidance, prediction_type), target)
