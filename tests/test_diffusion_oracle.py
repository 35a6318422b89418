"""Our schedules and samplers against diffusers' schedulers (the oracle), with a
fixed fake noise predictor so no training is needed. Tolerance 1e-4."""
from __future__ import annotations

import math

import diffusers  # a test requirement: conftest stops the run with the fix if it is missing
import numpy as np
import pytest
import torch

import core as D
import core.sampling

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


# --------------------------------------------------------------------------- classifier-free guidance above 1
COND = torch.tensor([[1.0, -0.6, 0.4, 0.0], [-0.8, 0.9, 0.3, 0.0]])


def fake_cfg_net(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """fake_net plus a condition-dependent term that the null branch (drop=True) lacks,
    so the conditional and unconditional outputs differ at every pixel and step."""
    tt = t.float().reshape(-1, 1, 1, 1)
    c = cond[:, :3].reshape(-1, 3, 1, 1)
    shift = 0.15 * c * torch.cos(2.0 * x + tt / 400.0)
    keep = torch.ones(x.shape[0]) if drop is None else (~drop).float()
    return fake_net(x, t) + keep.reshape(-1, 1, 1, 1) * shift


def guided_reference(x: torch.Tensor, t: int, w: float) -> torch.Tensor:
    """The CFG combination written from the paper (Ho & Salimans 2022), two separate calls."""
    ts = torch.full((x.shape[0],), int(t))
    cond_out = fake_cfg_net(x, ts, COND, torch.zeros(x.shape[0], dtype=torch.bool))
    uncond = fake_cfg_net(x, ts, COND, torch.ones(x.shape[0], dtype=torch.bool))
    return uncond + w * (cond_out - uncond)


class NoiseFeed:
    """Pre-drawn noise handed out in order: diffusers' DDPMScheduler.step (which has no
    ``variance_noise`` argument) and our ddpm_sample get exactly the same draws."""

    def __init__(self, noise: list[torch.Tensor]):
        self.noise, self.used = list(noise), 0

    def __call__(self, shape, *args, **kwargs) -> torch.Tensor:
        out = self.noise[self.used]
        assert tuple(shape) == tuple(out.shape), (shape, out.shape)
        self.used += 1
        return out.clone()


def ddpm_noise(n: int, seed: int = 21) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def run_diffusers_ddpm(sched, x, net, monkeypatch, noise):
    """Drive DDPMScheduler by hand over its whole set_timesteps trajectory with the given noise."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    feed = NoiseFeed(noise)
    with monkeypatch.context() as m:
        m.setattr(ddpm_mod, "randn_tensor", feed)
        for t in sched.timesteps:
            x = sched.step(net(x, int(t)), t, x).prev_sample
    return x, feed.used


def run_ours_ddpm(denoise, x, steps, monkeypatch, noise):
    feed = NoiseFeed(noise)
    with monkeypatch.context() as m:
        m.setattr(core.sampling, "randn_like_batch", lambda shape, generator, device: feed(shape))
        out = D.ddpm_sample(denoise, x, num_steps=steps, timestep_spacing="leading",
                            generator=[torch.Generator().manual_seed(i) for i in range(2)])
    return out, feed.used


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("w", [3.0, 7.5])
@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_cfg_guidance_above_one_matches_diffusers(sampler, w, prediction_type, clip, monkeypatch):
    """Guided sampling (w > 1) through GuidedDenoiser + our sampler equals diffusers'
    scheduler driven by hand with ``uncond + w * (cond - uncond)``, whole trajectory.

    Clipping: ``clip`` builds ours with ``clip_denoised=clip`` and configures diffusers
    to do the same thing: DDIM ``clip_sample`` + ``use_clipped_model_output`` (x_0 clamped
    to [-1, 1], eps recomputed from it, as GuidedDenoiser does), DDPM ``clip_sample``
    (the posterior mean uses the clamped x_0), DPM-Solver++ ``thresholding`` with
    ``sample_max_value=1.0`` (the dynamic threshold s is clamped to [1, 1], so it is a
    plain clamp to [-1, 1] of the data prediction)."""
    schedule, theirs = "cosine", "squaredcos_cap_v2"
    net = lambda x, t: guided_reference(x, t, w)  # noqa: E731
    x = start_noise(4)
    if sampler == "ddim":
        steps = 20
        sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=theirs, prediction_type=prediction_type,
                                        timestep_spacing="trailing", clip_sample=clip, clip_sample_range=1.0,
                                        set_alpha_to_one=True, thresholding=False)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            x = sched.step(net(x, t), t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    elif sampler == "dpm++":
        steps = 20
        sched = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=T, beta_schedule=theirs, prediction_type=prediction_type,
            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", timestep_spacing="trailing",
            final_sigmas_type="zero", thresholding=clip, sample_max_value=1.0)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            x = sched.step(net(x, t), t, x).prev_sample
    else:
        steps = 50
        sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, prediction_type=prediction_type,
                                        timestep_spacing="leading", clip_sample=clip, clip_sample_range=1.0,
                                        variance_type="fixed_small")
        sched.set_timesteps(steps)
        x, used = run_diffusers_ddpm(sched, x, net, monkeypatch, ddpm_noise(steps - 1))
        assert used == steps - 1
    spacing = "leading" if sampler == "ddpm" else "trailing"
    assert [int(t) for t in sched.timesteps] == D.make_timesteps(T, steps, spacing)

    terms = D.DiffusionConfig(beta_schedule=schedule, prediction_type=prediction_type).terms()

    def run_ours(guidance: float) -> torch.Tensor:
        denoise = D.GuidedDenoiser(fake_cfg_net, terms, COND, prediction_type, guidance_scale=guidance,
                                   clip_denoised=clip)
        if sampler == "ddim":
            return D.ddim_sample(denoise, start_noise(4), num_steps=steps, eta=0.0, timestep_spacing="trailing")
        if sampler == "dpm++":
            return D.dpm_solver_pp_sample(denoise, start_noise(4), num_steps=steps, timestep_spacing="trailing")
        out, used = run_ours_ddpm(denoise, start_noise(4), steps, monkeypatch, ddpm_noise(steps - 1))
        assert used == steps - 1
        return out

    ours = run_ours(w)
    assert torch.isfinite(x).all()
    # Unclipped epsilon under the cosine schedule divides by sqrt(alpha_bar) ~ 1e-3 near
    # t=999: values reach ~1e3-1e4, so compare relatively there (float32), absolutely elsewhere.
    torch.testing.assert_close(ours, x, atol=ATOL, rtol=1e-4)
    # The guidance really mattered: w=1 (plain conditional) ends somewhere else.
    assert (run_ours(1.0) - x).abs().max() > 100 * ATOL


# --------------------------------------------------------------------------- DDPM with fewer steps than T
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("steps", [50, 10])
def test_ddpm_strided_trajectory_matches_diffusers(steps, schedule, theirs, prediction_type, clip, monkeypatch):
    """ddpm_sample with num_steps < T ('leading') against DDPMScheduler.set_timesteps(n):
    the posterior between visited timesteps t -> prev (beta = 1 - ab_t / ab_prev) and
    its variance, fed the same pre-drawn noise at every step."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, prediction_type=prediction_type,
                                    timestep_spacing="leading", clip_sample=clip, variance_type="fixed_small")
    sched.set_timesteps(steps)
    assert [int(t) for t in sched.timesteps] == D.make_timesteps(T, steps, "leading")
    net = lambda x, t: fake_net(x, torch.full((x.shape[0],), int(t)))  # noqa: E731
    noise = ddpm_noise(steps - 1, seed=steps)
    ref, used_ref = run_diffusers_ddpm(sched, start_noise(5), net, monkeypatch, noise)

    terms = D.DiffusionConfig(beta_schedule=schedule, prediction_type=prediction_type).terms()
    denoise = D.GuidedDenoiser(ours_model, terms, torch.zeros(2, 4), prediction_type, clip_denoised=clip)
    ours, used_ours = run_ours_ddpm(denoise, start_noise(5), steps, monkeypatch, noise)
    assert used_ref == used_ours == steps - 1  # noise at every step but the last (t = 0)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- posterior q(x_{t-1} | x_t, x_0)
def paper_betas(schedule: str) -> np.ndarray:
    """Betas written from the papers: DDPM's linear 1e-4..0.02, Nichol & Dhariwal's cosine (capped 0.999)."""
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, T, dtype=np.float64)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)


@pytest.mark.parametrize("schedule,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_posterior_terms_closed_form_and_diffusers(schedule, theirs, monkeypatch):
    terms = D.DiffusionConfig(beta_schedule=schedule).terms()
    betas = paper_betas(schedule)
    alphas = 1.0 - betas
    ab = np.cumprod(alphas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    # Ho et al. 2020, eq. 7: mu~ = sqrt(ab_{t-1}) b_t / (1 - ab_t) x_0 + sqrt(a_t) (1 - ab_{t-1}) / (1 - ab_t) x_t,
    # beta~_t = (1 - ab_{t-1}) / (1 - ab_t) b_t
    coef1 = np.sqrt(ab_prev) * betas / (1 - ab)
    coef2 = np.sqrt(alphas) * (1 - ab_prev) / (1 - ab)
    var = (1 - ab_prev) / (1 - ab) * betas
    # The same posterior derived another way, by conditioning the Gaussian pair
    # x_{t-1} = sqrt(ab_{t-1}) x_0 + sqrt(1 - ab_{t-1}) e1, x_t = sqrt(a_t) x_{t-1} + sqrt(b_t) e2 on x_t:
    k = np.sqrt(alphas) * (1 - ab_prev) / (1 - ab)  # cov(x_{t-1}, x_t) / var(x_t)
    np.testing.assert_allclose(np.sqrt(ab_prev) - k * np.sqrt(ab), coef1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((1 - ab_prev) - k * np.sqrt(alphas) * (1 - ab_prev), var, rtol=1e-7, atol=1e-12)

    ours = {n: getattr(terms, n).numpy() for n in ("posterior_mean_coef1", "posterior_mean_coef2",
                                                    "posterior_variance", "posterior_log_variance_clipped")}
    np.testing.assert_allclose(ours["posterior_mean_coef1"], coef1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours["posterior_mean_coef2"], coef2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours["posterior_variance"], var, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours["posterior_log_variance_clipped"], np.log(np.concatenate([var[1:2], var[1:]])),
                               rtol=1e-10)

    # diffusers: the variance from _get_variance, the mean coefficients by reading step()
    # off on unit inputs (prediction_type="sample" makes the model output x_0 itself;
    # the noise is zeroed so prev_sample = coeff_x0 * x_0 + coeff_xt * x_t).
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, prediction_type="sample",
                                    clip_sample=False, variance_type="fixed_small")
    # diffusers keeps its table in float32, where 1 - ab_t / ab_{t-1} keeps only ~3 digits
    # of a 1e-4 beta: give its formulas the float64 cumprod of its own betas, so the test
    # compares the formulas rather than float32 rounding.
    sched.alphas_cumprod = torch.cumprod(1.0 - sched.betas.double(), dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda shape, **kw: torch.zeros(shape, dtype=torch.float64))
    x0_unit = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    xt_unit = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    d_coef1, d_coef2, d_var = [], [], []
    for t in range(T):
        out = sched.step(x0_unit, t, xt_unit).prev_sample
        d_coef1.append(float(out[0, 0]))
        d_coef2.append(float(out[1, 0]))
        d_var.append(float(sched._get_variance(t)))
    # (its betas are float32: ~1e-7 relative)
    np.testing.assert_allclose(ours["posterior_mean_coef1"], d_coef1, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(ours["posterior_mean_coef2"], d_coef2, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(ours["posterior_variance"], d_var, rtol=2e-5, atol=1e-15)


@pytest.mark.parametrize("model_name", ["default_model", "tiny200"])
def test_benchmark_peer_has_the_models_size_and_layout(model_name):
    """bench_sample's speed-ups are only fair if its diffusers peer is the same network: same
    parameter count (within 3%), same channels per level, same output shape."""
    import sys
    from pathlib import Path

    from engine import store as model_store

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from benchmarks import bench_sample
    finally:
        sys.path.remove(str(bench))
    ours, _ = bench_sample.ours(32, model_name)
    peer = bench_sample.peer(32, ours.config)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    assert abs(n_peer / n_ours - 1) < 0.03, (n_ours, n_peer)
    u = model_store.load_model(model_name).config["unet"]
    assert list(peer.config.block_out_channels) == [u["base_channels"] * m for m in u["channel_mult"]]
    x = torch.zeros(2, 3, 32, 32)
    assert peer(x, torch.tensor([10, 10]), class_labels=torch.tensor([0, 10])).sample.shape == x.shape
