"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

Classifier-free guidance pushes the conditional prediction away from the unconditional one. Autoguidance
pushes it away from a *weaker* model's prediction under the same condition instead:

    D(x; c) = D_weak(x; c) + w * (D_main(x; c) - D_weak(x; c))

The weak model is an earlier checkpoint of the same run or a smaller, shorter-trained network; both
must share the noise schedule (the same x_t means the same noise level to both). The mix is taken on
the x_0 estimates, so the two networks may predict different things (epsilon or v). Guidance 1 is the
main model alone; the guidance interval applies as for classifier-free guidance.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.loss import eps_from_x0, predict_x0_eps
from core.sampling import GuidedDenoiser
from core.schedules import DiffusionConfig, DiffusionTerms


def check_guide_schedule(main: DiffusionConfig, guide: DiffusionConfig) -> None:
    """A guide must see x_t as the main model does: the same betas at every timestep."""
    if main.num_train_timesteps != guide.num_train_timesteps or not torch.equal(main.betas(), guide.betas()):
        raise ValueError(f"the guide model's noise schedule ({guide.beta_schedule}, {guide.num_train_timesteps} "
                         f"steps) differs from the model's ({main.beta_schedule}, {main.num_train_timesteps} steps): "
                         "autoguidance needs a model trained on the same schedule")


class AutoGuidedDenoiser(GuidedDenoiser):
    """``GuidedDenoiser`` with a weak model in place of the unconditional branch (both conditioned)."""

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        guide_model: Callable[..., torch.Tensor],
        terms: DiffusionTerms,
        cond: torch.Tensor,
        prediction_type: str,
        guide_prediction_type: str,
        guidance_scale: float = 1.0,
        clip_denoised: bool = True,
        guidance_interval: tuple[float, float] | None = None,
    ):
        super().__init__(model, terms, cond, prediction_type, guidance_scale, clip_denoised, guidance_interval)
        self.guide_model, self.guide_prediction_type = guide_model, guide_prediction_type

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, _ = predict_x0_eps(self.terms, x, tt, self.model(x, tt, self.cond, None).float(), self.prediction_type)
        if self.guided_at(t):
            weak, _ = predict_x0_eps(self.terms, x, tt, self.guide_model(x, tt, self.cond, None).float(),
                                     self.guide_prediction_type)
            x0 = weak + self.guidance_scale * (x0 - weak)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        return x0, eps_from_x0(self.terms, x, tt, x0)
