"""Diffusion math, the U-Net and the text encoder: properties that must hold."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import core as D
from models import ConditionalUNet, UNetConfig

TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=8,
            dropout=0.0)


def tiny_unet(size: int = 16, seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    model = ConditionalUNet(UNetConfig(image_size=size, **TINY))
    # Zero-initialised output layers make an untrained net ignore its inputs;
    # give them small random weights so the tests see real behaviour.
    for p in model.parameters():
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def fake_encode(prompts):
    """A deterministic stand-in for the text encoder: a unit vector per prompt."""
    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(map(ord, p)) % (2**31))
        v = torch.randn(384, generator=g)
        out.append((v / v.norm()).numpy())
    return np.stack(out)


# ----------------------------------------------------------------- forward process
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_statistics(schedule):
    terms = D.DiffusionConfig(beta_schedule=schedule).terms()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.5)
    for t in [0, 250, 999]:
        tt = torch.full((x0.shape[0],), t)
        xt = D.q_sample(terms, x0, tt, torch.randn(x0.shape, generator=g))
        ab = terms.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(0.5 * ab**0.5, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.03 + 0.02 * (1 - ab))


def test_schedule_terms_are_consistent():
    terms = D.DiffusionConfig(beta_schedule="cosine").terms()
    ac = terms.alphas_cumprod
    assert torch.all(ac[1:] < ac[:-1]) and ac[0] < 1 and ac[-1] > 0
    torch.testing.assert_close(terms.sqrt_alphas_cumprod**2 + terms.sqrt_one_minus_alphas_cumprod**2,
                               torch.ones_like(ac))
    # The posterior mean of x_{t-1} given x_t = q_sample(x0, eps) with eps = 0 must be q-consistent.
    t = 400
    post_var = terms.posterior_variance[t]
    assert 0 < post_var < terms.betas[t]
    assert torch.isfinite(terms.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_v_and_epsilon_conversions_round_trip(prediction_type):
    terms = D.DiffusionConfig().terms()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 990])
    xt = D.q_sample(terms, x0, t, eps)
    target = eps if prediction_type == "epsilon" else D.velocity(terms, x0, eps, t)
    x0_hat, eps_hat = D.predict_x0_eps(terms, xt, t, target, prediction_type)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(D.eps_from_x0(terms, xt[1:3], t[1:3], x0[1:3]), eps[1:3], atol=1e-4, rtol=1e-4)


def test_min_snr_weighting_changes_loss_only_where_snr_exceeds_gamma():
    terms = D.DiffusionConfig(prediction_type="epsilon").terms()
    model = lambda x, t, c, d: torch.zeros_like(x)  # noqa: E731
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    low_snr_t = torch.tensor([900, 950])
    plain = D.training_loss(model, terms, x0, None, prediction_type="epsilon", t=low_snr_t, noise=noise)
    weighted = D.training_loss(model, terms, x0, None, prediction_type="epsilon", t=low_snr_t, noise=noise,
                               min_snr_gamma=5.0)
    torch.testing.assert_close(plain, weighted)  # snr < 5 there: weight 1
    high_snr_t = torch.tensor([1, 2])
    plain = D.training_loss(model, terms, x0, None, prediction_type="epsilon", t=high_snr_t, noise=noise)
    weighted = D.training_loss(model, terms, x0, None, prediction_type="epsilon", t=high_snr_t, noise=noise,
                               min_snr_gamma=5.0)
    assert weighted < plain * 0.01


# ----------------------------------------------------------------- U-Net
@pytest.mark.parametrize("size", [32, 64])
def test_default_unet_output_shape(size):
    model = ConditionalUNet(UNetConfig(image_size=size, base_channels=32, channel_mult=(1, 2, 2, 2))).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(x, torch.tensor([3, 999]), torch.randn(2, 384))
    assert out.shape == x.shape


def test_unet_rejects_bad_sizes_and_configs():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=30, channel_mult=(1, 2, 2))
    model = tiny_unet(16)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 15, 15), torch.tensor([1]), torch.randn(1, 384))


def test_embedding_width_is_a_config_choice_and_old_configs_keep_four_times_base():
    wide = ConditionalUNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), head_channels=8, emb_dim=96))
    assert wide.cond_embed[-1].out_features == 96 and wide.time_embed(torch.tensor([5])).shape == (1, 96)
    assert wide(torch.randn(1, 3, 16, 16), torch.tensor([5]), torch.randn(1, 384)).shape == (1, 3, 16, 16)
    old = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), head_channels=8).to_dict()
    del old["emb_dim"]  # a config written before the option existed
    assert ConditionalUNet(UNetConfig.from_dict(old)).cond_embed[-1].out_features == 64
    with pytest.raises(ValueError, match="emb_dim"):
        UNetConfig(image_size=16, emb_dim=-1)


def test_cond_scale_multiplies_the_text_embedding_and_the_null_stays_the_null():
    """cond_scale s on the network is the same network fed s x the embedding; old configs mean 1."""
    cfg = dict(image_size=16, base_channels=16, channel_mult=(1, 2), head_channels=8)
    torch.manual_seed(0)
    scaled = ConditionalUNet(UNetConfig(**cfg, cond_scale=19.6)).eval()
    plain = ConditionalUNet(UNetConfig(**cfg)).eval()
    with torch.no_grad():  # no zero-initialised layers (they would hide the condition), a non-zero null
        for q in scaled.parameters():
            q.add_(0.05 * torch.randn_like(q))
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():  # the null goes through the same scaling as any row the MLP sees
        plain.null_cond.copy_(scaled.null_cond * 19.6)
    x, t, c = torch.randn(3, 3, 16, 16), torch.tensor([5, 500, 900]), torch.randn(3, 384)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        got = scaled(x, t, c, drop)
        want = plain(x, t, c * 19.6, drop)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain(x, t, c, drop).detach())
    old = UNetConfig(**cfg).to_dict()
    del old["cond_scale"]  # a config written before the option existed
    assert UNetConfig.from_dict(old).cond_scale == 1.0
    with pytest.raises(ValueError, match="cond_scale"):
        UNetConfig(image_size=16, cond_scale=0.0)


def test_group_norm_is_torchs_in_fp32_and_takes_bf16_statistics_in_fp32():
    """models.modules.GroupNorm32: an fp32 input gets nn.GroupNorm's own result, bit for bit (the app's
    fp32 pixels do not move); a bf16 channels-last input (what a CPU convolution hands back under
    autocast) is normalised in fp32 and handed back in bf16, in the same layout, at least as close to
    the exact answer as torch's bf16 kernel (which also takes its statistics in fp32)."""
    from torch import nn

    from models.modules import GroupNorm32

    g = torch.Generator().manual_seed(0)
    ours, theirs = GroupNorm32(32, 64, eps=1e-6), nn.GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64, generator=g))
        ours.bias.copy_(torch.randn(64, generator=g))
    theirs.load_state_dict(ours.state_dict())  # the same parameters, the same names
    x = 3 + 2 * torch.randn(4, 64, 16, 16, generator=g)
    assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours(x.contiguous(memory_format=torch.channels_last)),
                       theirs(x.contiguous(memory_format=torch.channels_last)))
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    exact = theirs(xb.double().contiguous().float())  # the bf16 values, normalised in fp32
    y = ours(xb)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    ours_err, torch_err = (y.float() - exact).abs().max(), (theirs(xb).float() - exact).abs().max()
    assert ours_err <= torch_err and ours_err < 0.05
    assert len([m for m in ConditionalUNet(UNetConfig(image_size=16, base_channels=32)).modules()
                if isinstance(m, GroupNorm32)]) > 0  # the network uses it


def test_gradients_reach_every_parameter():
    model = tiny_unet(16).train()
    x = torch.randn(4, 3, 16, 16)
    drop = torch.tensor([False, True, False, True])  # the null condition must learn too
    loss = D.training_loss(model, D.DiffusionConfig().terms(), x, torch.randn(4, 384), drop_cond=drop)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"


def test_conditioning_and_timestep_change_the_output():
    model = tiny_unet(16)
    x = torch.randn(2, 3, 16, 16)
    c1, c2 = torch.randn(2, 384), torch.randn(2, 384)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        a, b = model(x, t, c1), model(x, t, c2)
        c = model(x, torch.tensor([800, 800]), c1)
        null = model(x, t, c1, torch.tensor([True, True]))
        null2 = model(x, t, c2, torch.tensor([True, True]))
    assert (a - b).abs().mean() > 1e-3
    assert (a - c).abs().mean() > 1e-3
    torch.testing.assert_close(null, null2)  # the null branch ignores the text


# ----------------------------------------------------------------- sampling
def cosine_alphas_cumprod(T: int = 1000) -> np.ndarray:
    """alpha-bar of Nichol & Dhariwal's cosine schedule (betas capped at 0.999), written from the paper."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1.0 - betas)


def test_guidance_one_equals_plain_conditional_sampling():
    """generate_images at guidance 1 is plain conditional DDIM: one conditional call per
    step, no null branch. The reference is DDIM (Song et al., eq. 12, eta = 0) written out
    here with the bare network: no GuidedDenoiser, no diffusion.py sampler or schedule."""
    model = tiny_unet(16)
    cfg = D.DiffusionConfig()
    assert (cfg.beta_schedule, cfg.prediction_type, cfg.num_train_timesteps) == ("cosine", "v_prediction", 1000)
    calls = []
    forward = model.forward

    def spy(x, t, c, drop=None):
        calls.append((x.shape[0], drop))
        return forward(x, t, c, drop)

    model.forward = spy
    guided = D.generate_images(model, cfg, "a photo of a goldfish", num_images=2, sampler="ddim", num_steps=5,
                               guidance_scale=1.0, seed=3, encode_fn=fake_encode)
    assert calls == [(2, None)] * 5  # one plain conditional forward per step: no null branch at all
    model.forward = forward

    cond = torch.as_tensor(fake_encode(["a photo of a goldfish"] * 2))
    ab = cosine_alphas_cumprod()
    timesteps = [999, 799, 599, 399, 199]  # "trailing", 5 of 1000: round(arange(1000, 0, -200)) - 1
    x = torch.cat([torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            v = model(x, torch.full((2,), t), cond)
            a, s = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
            x0 = (a * x - s * v).clamp(-1, 1)  # v-prediction -> x_0, clipped to the data range
            eps = (x - a * x0) / s  # the noise consistent with the clipped x_0
            ab_prev = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    plain = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    diff = np.abs(guided.images.astype(int) - plain.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())  # float rounding only


def test_guidance_mixes_conditional_and_null_predictions():
    model = tiny_unet(16)
    terms = D.DiffusionConfig().terms()
    cond = torch.randn(2, 384)
    x = torch.randn(2, 3, 16, 16)
    den = D.GuidedDenoiser(model, terms, cond, "v_prediction", guidance_scale=4.0)
    with torch.no_grad():
        c = model(x, torch.tensor([500, 500]), cond)
        u = model(x, torch.tensor([500, 500]), cond, torch.tensor([True, True]))
        torch.testing.assert_close(den.model_output(x, 500), u + 4.0 * (c - u), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 8), ("ddim", 6), ("dpm++", 6)])
def test_same_seed_same_images_other_seed_different(sampler, steps):
    model = tiny_unet(16)
    cfg = D.DiffusionConfig()
    kw = dict(class_names=["goldfish"], num_images=2, sampler=sampler, num_steps=steps, guidance_scale=2.5,
              encode_fn=fake_encode)
    a = D.generate_images(model, cfg, seed=7, **kw)
    b = D.generate_images(model, cfg, seed=7, **kw)
    c = D.generate_images(model, cfg, seed=8, **kw)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (2, 16, 16, 3)
    assert np.abs(a.images.astype(int) - c.images.astype(int)).mean() > 1
    # image i uses seed + i: the second image of seed 7 is the first of seed 8
    np.testing.assert_allclose(a.images[1].astype(int), c.images[0].astype(int), atol=1)
    assert a.prompts == ["a photo of a goldfish"] * 2 and a.seeds == [7, 8]


def test_generate_images_frames_and_callback():
    model = tiny_unet(16)
    seen = []
    res = D.generate_images(model, D.DiffusionConfig(), "a red car", num_images=3, sampler="dpm++", num_steps=10,
                            encode_fn=fake_encode, return_frames=True, frame_every=3, callback=seen.append)
    assert [s.step for s in seen] == list(range(10))
    assert res.frame_timesteps == [seen[i].timestep for i in (0, 3, 6, 9)]
    assert len(res.frames) == 4 and res.frames[0].shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(res.frames[-1], res.images)


def test_generate_images_rejects_bad_requests():
    model = tiny_unet(16)
    cfg = D.DiffusionConfig()
    with pytest.raises(ValueError, match="empty"):
        D.generate_images(model, cfg, "   ", encode_fn=fake_encode)
    with pytest.raises(ValueError, match="sampler"):
        D.generate_images(model, cfg, "x", sampler="euler", encode_fn=fake_encode)
    with pytest.raises(ValueError, match="num_steps"):
        D.generate_images(model, cfg, "x", sampler="ddim", num_steps=0, encode_fn=fake_encode)
    with pytest.raises(ValueError, match="finite"):
        D.generate_images(model, cfg, "x", guidance_scale=float("nan"), encode_fn=fake_encode)


# ----------------------------------------------------------------- the sampler registry
SAMPLER_FUNCTIONS = {"ddpm": "ddpm_sample", "ddim": "ddim_sample", "dpm++": "dpm_solver_pp_sample",
                     "lcm": "consistency_sample"}  # written here, not read from the code under test


def test_run_sampler_runs_the_named_samplers_own_function(monkeypatch):
    """Each name dispatches to its own sampler function (spied on where the runners look them up)."""
    from core import sampling

    assert set(SAMPLER_FUNCTIONS) == set(D.SAMPLER_DEFAULTS) == set(D.SAMPLER_REGISTRY)
    ran = []
    for fn in SAMPLER_FUNCTIONS.values():
        monkeypatch.setattr(sampling, fn, lambda *a, _fn=fn, **kw: ran.append(_fn) or a[1])
    x = torch.zeros(1)
    for name, fn in SAMPLER_FUNCTIONS.items():
        ran.clear()
        assert D.run_sampler(name, None, x, [999, 0], 0.0, None, None) is x
        assert ran == [fn], name
        assert D.SAMPLER_REGISTRY[name].name == name and D.SAMPLER_REGISTRY[name].spec is D.SAMPLER_DEFAULTS[name]


def test_an_unknown_sampler_is_an_error_that_names_the_choices():
    choices = "choose one of dpm\\+\\+, ddim, ddpm, lcm"
    for bad in ("euler", "DDIM", "", None):
        with pytest.raises(ValueError, match=choices):
            D.check_sampler(bad)
    x = torch.zeros(1)
    with pytest.raises(ValueError, match=choices):  # even with no step to run (img2img at a tiny strength)
        D.run_sampler("euler", None, x, [], 0.0, None, None)
    with pytest.raises(ValueError, match=choices):
        D.sampler_timesteps(D.DiffusionConfig(), "euler")
    with pytest.raises(ValueError, match=choices):
        D.default_steps("euler", 1000)


def test_a_sampler_in_the_table_without_a_runner_is_refused_at_import():
    """A table entry with no runner (or a runner with no entry) is an error, not another sampler run in its place."""
    import subprocess
    import sys
    from pathlib import Path

    from core.sampling import SAMPLER_RUNNERS, build_registry

    with pytest.raises(RuntimeError, match=r"no runner for \['euler'\]"):
        build_registry({**D.SAMPLER_DEFAULTS, "euler": D.SAMPLER_DEFAULTS["ddim"]}, SAMPLER_RUNNERS)
    with pytest.raises(RuntimeError, match=r"no table entry for \['euler'\]"):
        build_registry(D.SAMPLER_DEFAULTS, {**SAMPLER_RUNNERS, "euler": SAMPLER_RUNNERS["ddim"]})
    code = ("import core.samplers as S; S.SAMPLER_DEFAULTS['euler'] = S.SAMPLER_DEFAULTS['ddim']; "
            "import core.sampling")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode != 0 and "no runner for ['euler']" in run.stderr, run.stderr[-500:]


def test_make_timesteps_spacings():
    assert D.make_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert D.make_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert D.make_timesteps(1000, 4, "linspace") == [999, 666, 333, 0]
    assert D.make_timesteps(10, 10, "leading") == list(range(9, -1, -1))


# ----------------------------------------------------------------- text encoder (real, offline)
def test_text_encoder_loads_offline_and_is_semantic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from models.text_encoder import TextEncoder, class_prompt

    enc = TextEncoder()
    prompts = [class_prompt("goldfish, Carassius auratus"), "a small orange fish in a bowl", "a red sports car"]
    assert prompts[0] == "a photo of a goldfish"
    e = enc.encode(prompts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    again = enc.encode(prompts[:1])  # served from the cache, identical
    np.testing.assert_array_equal(again[0], e[0])


def test_training_timestep_sampling():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    # uniform is exactly torch.randint (so runs that predate the option resume bit-identically)
    assert torch.equal(D.sample_timesteps(1000, 64, generator=g()), torch.randint(0, 1000, (64,), generator=g()))
    t = D.sample_timesteps(1000, 200_000, method="logit_normal", generator=g())
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= 999
    # t/T = sigmoid(N(0, 1)): median at T/2; P(t/T < 0.1) = Phi(logit(0.1)) = Phi(-2.197) = 0.0140
    assert abs(float(t.float().median()) - 500) < 5
    assert abs(float((t < 100).float().mean()) - 0.0140) < 0.002
    shifted = D.sample_timesteps(1000, 200_000, method="logit_normal", logit_mean=1.0, generator=g())
    assert abs(float(shifted.float().median()) - 1000 * (1 / (1 + math.exp(-1)))) < 5  # sigmoid(1) = 0.731
    with pytest.raises(ValueError, match="timestep sampling"):
        D.sample_timesteps(1000, 4, method="lognormal")
