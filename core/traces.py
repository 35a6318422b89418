"""Studio traces: one image's denoising step by step, the forward process at chosen t and the
network's one-step guess of x_0 (the app's Learn tab and the README figures)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from core.cascade import UpscaleResult, upsample_bicubic, upscale
from core.generation import GenerationResult, generate_images
from core.loss import eps_from_x0, q_sample
from core.noise import starting_noise
from core.pixels import images_to_tensor, to_uint8
from core.sampling import GuidedDenoiser, StepCallback, StepInfo, randn_like_batch
from core.schedules import DiffusionConfig, DiffusionTerms


@dataclass
class StepTrace:
    """One image's denoising, step by step: what the network saw and what it predicted."""

    timesteps: list[int]
    x_t: list[np.ndarray]  # uint8 (H, W, 3): the sample the network was given at each step
    x0: list[np.ndarray]  # uint8: its estimate of the clean image
    eps: list[np.ndarray]  # uint8: its predicted noise (scaled from about [-3, 3] to [0, 255])
    result: "GenerationResult | UpscaleResult"


class _StepRecorder:
    """A sampler callback that keeps x_t (the sample each step starts from), the x_0 estimate and the
    noise they imply (``eps_from_x0``). ``offset``: what the pictures add back (a residual SR model's
    bicubic image); the callback's x_0 estimate already includes it, the samples do not."""

    def __init__(self, terms: DiffusionTerms, start: torch.Tensor, offset: torch.Tensor | float = 0.0,
                 callback: StepCallback | None = None):
        self.terms, self.current, self.offset, self.callback = terms, start, offset, callback
        self.trace = StepTrace([], [], [], [], None)  # result filled in by the caller

    def __call__(self, info: StepInfo) -> None:
        x_t = self.current.float()
        t = torch.full((x_t.shape[0],), info.timestep, dtype=torch.long, device=x_t.device)
        eps = eps_from_x0(self.terms, x_t, t, info.x0_pred.float() - self.offset)
        self.trace.x_t.append(to_uint8(x_t + self.offset)[0])
        self.trace.x0.append(to_uint8(info.x0_pred)[0])
        self.trace.eps.append(to_uint8(eps / 3.0)[0])
        self.trace.timesteps.append(info.timestep)
        self.current = info.x
        if self.callback is not None:
            self.callback(info)


def trace_denoising(model: torch.nn.Module, diffusion: DiffusionConfig, prompt: str, *,
                    callback: StepCallback | None = None, **kw: Any) -> StepTrace:
    """``generate_images`` for one image, recording x_t, the x_0 estimate and the noise the
    network implies (``eps_from_x0``) at every step."""
    seed = int(kw.get("seed", 0))
    device = torch.device(kw.get("device") or next(model.parameters()).device)
    size = kw.get("image_size") or model.config.image_size
    shape = (1, model.config.in_channels, size, size)
    start = kw.pop("noise", None)
    if start is None:
        start = starting_noise(shape, [seed], device, kw.get("variation_seed"), kw.get("variation_strength", 0.0))
    record = _StepRecorder(diffusion.terms(), start.to(device), callback=callback)
    record.trace.result = generate_images(model, diffusion, prompt, num_images=1, noise=start, callback=record, **kw)
    return record.trace


def trace_upscale(sr_model: torch.nn.Module, diffusion: DiffusionConfig, low_res_image: np.ndarray, *,
                  seed: int = 0, callback: StepCallback | None = None, **kw: Any) -> StepTrace:
    """``upscale`` for one uint8 (h, w, 3) image, recorded step by step as ``trace_denoising`` records
    the first stage. A residual SR model denoises the difference to the bicubic image; its x_t and x_0
    rows are shown with the bicubic image added back (what the result is made of), its noise row as is."""
    low = images_to_tensor(np.asarray(low_res_image)[None])
    size = low.shape[-1] * int(kw.get("scale", 2))
    device = torch.device(kw.get("device") or next(sr_model.parameters()).device)
    # upscale's first draw from the image's generator is its starting noise (its documented order)
    start = randn_like_batch((1, sr_model.config.out_channels, size, size), [torch.Generator().manual_seed(seed)],
                             device)
    residual = getattr(sr_model.config, "residual", False)
    offset = upsample_bicubic(low.to(device), size) if residual else 0.0
    record = _StepRecorder(diffusion.terms(), start, offset, callback)
    record.trace.result = upscale(sr_model, diffusion, low, seed=seed, callback=record, **kw)
    return record.trace


def noised_versions(terms: DiffusionTerms, image: np.ndarray | torch.Tensor, timesteps: Sequence[int], *,
                    seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The first image noised to each timestep by q(x_t | x_0), with the same noise at every t (so
    only the schedule differs): a (len(timesteps), C, H, W) batch in [-1, 1]. The forward strips."""
    T = int(terms.alphas_cumprod.shape[0])
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 <= t < T for t in ts):
        raise ValueError(f"timesteps must be in [0, {T})")
    x0 = images_to_tensor(image)[:1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x0s = x0.expand(len(ts), -1, -1, -1)
    return q_sample(terms, x0s, torch.tensor(ts), noise.expand_as(x0s)).to(device)


@torch.no_grad()
def one_step_x0(model: torch.nn.Module, diffusion: DiffusionConfig, image: np.ndarray | torch.Tensor,
                cond: np.ndarray | torch.Tensor, timesteps: Sequence[int], *, guidance_scale: float = 1.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` noised to each t (``noised_versions``) and the model's one-step guess of x_0 from
    each x_t, conditioned on ``cond`` (1, D): two uint8 (len(timesteps), H, W, 3) batches. What
    the forward process destroys, and how much of it the network recovers in one step."""
    device = next(model.parameters()).device
    terms = diffusion.terms()
    xt = noised_versions(terms, image, timesteps, seed=seed, device=device)
    cond = torch.as_tensor(np.asarray(cond) if not isinstance(cond, torch.Tensor) else cond,
                           dtype=torch.float32).reshape(1, -1).to(device)
    denoise = GuidedDenoiser(model, terms, cond, diffusion.prediction_type, guidance_scale)
    was_training = model.training
    model.eval()
    try:  # one t per call: the denoiser takes a single timestep for its whole batch
        guesses = np.concatenate([to_uint8(denoise(xt[i:i + 1], int(t))[0]) for i, t in enumerate(timesteps)])
    finally:
        model.train(was_training)
    return to_uint8(xt), guesses
