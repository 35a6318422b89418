"""Variations, blended prompts and img2img (SDEdit) in the generation core; the CLI's --from-png.

Oracles are independent of the code under test: slerp against its closed
form on orthonormal vectors, the img2img start against diffusers'
``DDPMScheduler.add_noise``, blended embeddings against a weighted sum
written here, and regeneration against the pixels of the first run.
"""
from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

import core as D
from core.prompting import encode_weighted, parse_weighted_prompt
from test_core import fake_encode, tiny_unet

CFG = D.DiffusionConfig()


def gen(model, **kw):
    kw.setdefault("encode_fn", fake_encode)
    return D.generate_images(model, CFG, kw.pop("prompt", "a photo of a goldfish"), **kw)


# --------------------------------------------------------------------------- variations
def test_slerp_follows_the_arc():
    a = torch.zeros(1, 4)
    b = torch.zeros(1, 4)
    a[0, 0], b[0, 1] = 2.0, 2.0  # orthogonal, radius 2: the arc is (2 cos(t pi/2), 2 sin(t pi/2))
    for t in (0.0, 0.25, 0.5, 1.0):
        expected = torch.tensor([[2 * math.cos(t * math.pi / 2), 2 * math.sin(t * math.pi / 2), 0, 0]])
        torch.testing.assert_close(D.slerp(a, b, t), expected, atol=1e-6, rtol=0)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(D.slerp(x, x, 0.3), x)  # parallel: no 0/0


def test_variation_strength_runs_from_the_seed_to_the_variation_seed():
    model = tiny_unet()
    kw = dict(num_images=2, num_steps=4, seed=10)
    plain = gen(model, **kw).images
    np.testing.assert_array_equal(gen(model, variation_seed=50, variation_strength=0.0, **kw).images, plain)
    # strength 1: each image is the variation seed's own image (variation_seed + i)
    np.testing.assert_array_equal(gen(model, variation_seed=50, variation_strength=1.0, **kw).images,
                                  gen(model, num_images=2, num_steps=4, seed=50).images)
    mid = gen(model, variation_seed=50, variation_strength=0.3, **kw)
    assert not np.array_equal(mid.images, plain)
    assert mid.recipe["variation_seed"] == 50 and mid.recipe["variation_strength"] == 0.3
    # a small strength is a small change: closer to the original than the variation seed's image is
    far = gen(model, num_images=2, num_steps=4, seed=50).images.astype(float)
    near = gen(model, variation_seed=50, variation_strength=0.1, **kw).images.astype(float)
    assert np.abs(near - plain).mean() < np.abs(far - plain).mean()
    with pytest.raises(ValueError, match="variation strength"):
        gen(model, variation_seed=1, variation_strength=1.5, **kw)


# --------------------------------------------------------------------------- blended prompts
def test_parse_weighted_prompt():
    assert parse_weighted_prompt("goldfish:0.7 | coral reef:0.3") == [("goldfish", 0.7), ("coral reef", 0.3)]
    assert parse_weighted_prompt("goldfish | coral reef") == [("goldfish", 0.5), ("coral reef", 0.5)]
    assert parse_weighted_prompt("goldfish:3|alp:1") == [("goldfish", 0.75), ("alp", 0.25)]
    assert parse_weighted_prompt("note: a fish") == [("note: a fish", 1.0)]  # a colon before words is text
    for bad, msg in (("goldfish:abc", "bad weight 'abc'"), ("goldfish:-1 | alp", "finite numbers >= 0"),
                     ("goldfish | ", "empty part"), (":0.5 | alp", "empty part"), ("a:0 | b:0", "all 0"),
                     ("a:inf", "finite")):
        with pytest.raises(ValueError, match=msg):
            parse_weighted_prompt(bad)


def test_blended_embeddings_are_the_normalised_weighted_sum():
    a, b = fake_encode(["goldfish"])[0].astype(np.float64), fake_encode(["coral reef"])[0].astype(np.float64)
    mix = 0.7 * a + 0.3 * b
    got = encode_weighted(["goldfish:0.7 | coral reef:0.3", "alp"], fake_encode)
    np.testing.assert_allclose(got[0], mix / np.linalg.norm(mix), atol=1e-6)
    np.testing.assert_allclose(got[1], fake_encode(["alp"])[0], atol=0)  # plain prompts untouched
    # and generation uses it: the blend differs from either part, weight 1:0 is the part itself
    model = tiny_unet()
    kw = dict(num_steps=3, seed=1)
    blend = gen(model, prompt="goldfish:0.7 | coral reef:0.3", **kw).images
    assert not np.array_equal(blend, gen(model, prompt="goldfish", **kw).images)
    np.testing.assert_array_equal(gen(model, prompt="goldfish:1 | coral reef:0", **kw).images,
                                  gen(model, prompt="goldfish", **kw).images)


# --------------------------------------------------------------------------- img2img (SDEdit)
def test_img2img_starts_from_q_sample_of_the_image_at_strength_t():
    model = tiny_unet()
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    seen = []
    orig_call = D.GuidedDenoiser.__call__

    def spy(self, x, t):
        seen.append((t, x.clone()))
        return orig_call(self, x, t)

    D.GuidedDenoiser.__call__ = spy
    try:
        res = gen(model, num_images=2, sampler="ddim", num_steps=10, seed=5, init_images=init, strength=0.5)
    finally:
        D.GuidedDenoiser.__call__ = orig_call
    # trailing 10 steps: 999, 899, ..., 99; strength 0.5 keeps those <= 499
    assert [t for t, _ in seen] == [499, 399, 299, 199, 99] and res.recipe["strength"] == 0.5
    x0 = torch.from_numpy(init).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.cat([torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    expected = sched.add_noise(x0, noise, torch.tensor([499, 499]))
    torch.testing.assert_close(seen[0][1], expected, atol=1e-5, rtol=1e-5)


def test_img2img_strength_ends():
    model = tiny_unet()
    init = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    # strength 0: nothing to do, the image comes back as it was
    np.testing.assert_array_equal(gen(model, num_steps=5, init_images=init, strength=0.0).images, init)
    # strength 1: pure noise at t = T-1, so the image is ignored exactly as in plain generation
    np.testing.assert_array_equal(gen(model, num_steps=5, seed=2, init_images=init, strength=1.0).images,
                                  gen(model, num_steps=5, seed=2).images)
    # one init image serves a batch
    assert gen(model, num_images=3, num_steps=5, init_images=init, strength=0.6).images.shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="resize them to 16 px"):
        gen(model, num_steps=5, init_images=np.zeros((1, 8, 8, 3), np.uint8), strength=0.5)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        gen(model, num_steps=5, init_images=init, strength=1.2)
    with pytest.raises(ValueError, match="init images only"):
        gen(model, num_steps=5, strength=0.5)


# --------------------------------------------------------------------------- precision
def test_bf16_sampling_is_close_to_fp32_and_recorded():
    model = tiny_unet().to(memory_format=torch.channels_last)
    kw = dict(num_images=4, num_steps=8, seed=0, guidance_scale=3.0)
    fp32 = gen(model, precision="fp32", **kw)
    bf16 = gen(model, precision="bf16", **kw)
    assert fp32.recipe["precision"] == "fp32" and bf16.recipe["precision"] == "bf16"
    diff = np.abs(fp32.images.astype(int) - bf16.images.astype(int))
    assert 0 < diff.mean() < 3.0, diff.mean()  # bf16 really ran, and stayed close (uint8 levels)
    assert D.resolve_precision("auto", "cpu") == ("bf16" if D.fast_bf16("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        gen(model, precision="fp16", **kw)


# --------------------------------------------------------------------------- guidance interval
def test_guidance_interval_guides_only_inside_the_band():
    model = tiny_unet()
    terms = CFG.terms()
    calls = []
    orig = model.forward

    def spy(x, t, cond, drop=None):
        calls.append((int(t[0]), x.shape[0]))
        return orig(x, t, cond, drop)

    model.forward = spy
    kw = dict(num_images=1, num_steps=10, seed=4, sampler="ddim")
    full = gen(model, guidance_scale=4.0, **kw)
    nothing = gen(model, guidance_scale=4.0, guidance_interval=(1e6, 2e6), **kw)  # no step has sigma that high
    plain = gen(model, guidance_scale=1.0, **kw)
    calls.clear()
    band = gen(model, guidance_scale=4.0, guidance_interval="0.28,2.9", **kw)
    np.testing.assert_array_equal(nothing.images, plain.images)
    assert not np.array_equal(band.images, full.images) and not np.array_equal(band.images, plain.images)
    # the doubled batch (both branches) runs exactly at the steps whose sigma is in (0.28, 2.9]
    ab = terms.alphas_cumprod
    inside = {t for t, _ in calls if 0.28 < math.sqrt((1 - float(ab[t])) / float(ab[t])) <= 2.9}
    assert inside and len(inside) < len(calls)
    assert all((b == 2) == (t in inside) for t, b in calls)
    assert band.recipe["guidance_interval"] == "0.28-2.9"
    for bad in ("3,1", "x,y", "1"):
        with pytest.raises(ValueError, match="guidance interval"):
            gen(model, guidance_scale=4.0, guidance_interval=bad, **kw)


# --------------------------------------------------------------------------- Live's interpolation position
def test_the_live_frame_at_a_position_is_the_interpolations_frame_there():
    """``interpolation_at(p)`` (the Interpolate tab's Live position) gives the same conditioning and
    starting noise as the frame of ``interpolation`` at that fraction, so it draws the same picture."""
    from types import SimpleNamespace

    from engine.request import interpolation, interpolation_at

    lm = SimpleNamespace(model=tiny_unet(), image_size=16)
    req, fractions = interpolation(lm, "a photo of a goldfish", "a photo of a ladybug", 3, 9, 5, encode_fn=fake_encode)
    for i in (0, 2, 4):
        one = interpolation_at(lm, "a photo of a goldfish", "a photo of a ladybug", 3, 9, fractions[i],
                               encode_fn=fake_encode)
        torch.testing.assert_close(torch.as_tensor(one.cond)[0], torch.as_tensor(req.cond)[i])
        torch.testing.assert_close(one.noise[0], req.noise[i])
    with pytest.raises(ValueError, match="position"):
        interpolation_at(lm, "a", "b", 0, 1, 1.5, encode_fn=fake_encode)
