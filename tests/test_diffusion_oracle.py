"""Our schedules and samplers against diffusers' schedulers (the oracle), with a
fixed fake noise predictor so no training is needed. Tolerance 1e-4."""
from __future__ import annotations

import diffusers  # a test requirement: conftest stops the run with the fix if it is missing
import pytest
import torch

import diffusion as D

T = 1000
ATOL = 1e-4


def fake_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, fixed, t-dependent 'noise prediction'."""
    tt = t.float().reshape(-1, 1, 1, 1) if torch.is_tensor(t) and t.ndim else torch.as_tensor(float(t))
    return 0.8 * x * torch.cos(tt / 700.0) + 0.3 * torch.sin(3.0 * x + tt / 250.0)


def ours_model(x, t, cond, drop=None):
    return fake_net(x, t)


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "ours,theirs",
    [("linear", "linear"), ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")],
)
def test_schedules_match_diffusers_betas(ours, theirs):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs)
    betas = D.DiffusionConfig(beta_schedule=ours).betas()
    torch.testing.assert_close(betas.float(), sched.betas.float(), atol=1e-6, rtol=1e-5)
    terms = D.precompute_diffusion_terms(betas)
    torch.testing.assert_close(terms.alphas_cumprod.float(), sched.alphas_cumprod.float(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_ddpm_posterior_step_matches_diffusers(prediction_type, t):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", prediction_type=prediction_type,
                                    clip_sample=True)
    sched.set_timesteps(T)
    terms = D.DiffusionConfig(beta_schedule="linear", prediction_type=prediction_type).terms()
    x = start_noise(1) * 0.7
    ts = torch.full((2,), t)
    out = fake_net(x, ts)
    ref = sched.step(out, t, x, generator=torch.Generator().manual_seed(5)).prev_sample

    denoise = D.GuidedDenoiser(ours_model, terms, torch.zeros(2, 4), prediction_type)
    # One step of our sampler, starting at timestep t, with the same noise stream.
    timesteps = list(range(t, -1, -1))
    captured = {}

    def stop_after_first(info):
        captured["x"] = info.x.clone()
        raise StopIteration

    with pytest.raises(StopIteration):
        D.ddpm_sample(denoise, x, num_steps=T, generator=torch.Generator().manual_seed(5), callback=stop_after_first)\
            if t == T - 1 else _ddpm_from(denoise, x, timesteps, stop_after_first)
    torch.testing.assert_close(captured["x"], ref, atol=ATOL, rtol=0)


def _ddpm_from(denoise, x, timesteps, cb):
    """Run the ancestral update from an intermediate timestep (same code path as
    ddpm_sample: a 1-step-per-timestep schedule truncated at the start)."""
    terms = denoise.terms
    sub = D.DiffusionTerms(**{k: getattr(terms, k)[: timesteps[0] + 1] for k in terms.__dataclass_fields__})
    d = D.GuidedDenoiser(denoise.model, sub, denoise.cond, denoise.prediction_type)
    return D.ddpm_sample(d, x, num_steps=timesteps[0] + 1, generator=torch.Generator().manual_seed(5), callback=cb)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,steps", [("trailing", 50), ("leading", 20), ("trailing", 10)])
def test_ddim_trajectory_matches_diffusers(prediction_type, eta, spacing, steps):
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                    prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=True)
    sched.set_timesteps(steps)
    g_ref = torch.Generator().manual_seed(11)
    x = start_noise(2)
    for t in sched.timesteps:
        out = fake_net(x, torch.full((2,), int(t)))
        x = sched.step(out, t, x, eta=eta, use_clipped_model_output=True, generator=g_ref).prev_sample
    assert [int(t) for t in sched.timesteps] == D.make_timesteps(T, steps, spacing)

    terms = D.DiffusionConfig(beta_schedule="cosine", prediction_type=prediction_type).terms()
    denoise = D.GuidedDenoiser(ours_model, terms, torch.zeros(2, 4), prediction_type)
    ours = D.ddim_sample(denoise, start_noise(2), num_steps=steps, eta=eta, timestep_spacing=spacing,
                         generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, x, atol=ATOL, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("schedule,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_dpm_solver_pp_trajectory_matches_diffusers(prediction_type, steps, schedule, theirs):
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule=theirs, prediction_type=prediction_type, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", timestep_spacing="trailing", final_sigmas_type="zero",
    )
    sched.set_timesteps(steps)
    x = start_noise(3)
    for t in sched.timesteps:
        x = sched.step(fake_net(x, torch.full((2,), int(t))), t, x).prev_sample
    assert [int(t) for t in sched.timesteps] == D.make_timesteps(T, steps, "trailing")

    terms = D.DiffusionConfig(beta_schedule=schedule, prediction_type=prediction_type).terms()
    denoise = D.GuidedDenoiser(ours_model, terms, torch.zeros(2, 4), prediction_type, clip_denoised=False)
    ours = D.dpm_solver_pp_sample(denoise, start_noise(3), num_steps=steps, timestep_spacing="trailing")
    # Unclipped epsilon-prediction under the cosine schedule divides by
    # sqrt(alpha_bar) ~ 6e-3 at t=999, so values reach ~1e4: compare relatively
    # there (float32 has ~7 digits), absolutely everywhere else.
    torch.testing.assert_close(ours, x, atol=ATOL, rtol=1e-4)


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    from models.time_encoder import timestep_embedding

    t = torch.tensor([0, 1, 17, 500, 999])
    for flip, shift, dim in [(True, 0, 64), (False, 1, 64), (True, 0, 33)]:
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        torch.testing.assert_close(timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift), ref)
