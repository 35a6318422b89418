"""Autoguidance (core/autoguidance.py): D = D_weak + w (D_main - D_weak), both conditioned.

The oracle is the formula itself, computed here from the two networks' raw outputs with the
v-prediction identity x_0 = sqrt(ab) x_t - sqrt(1 - ab) v (not through the core's helpers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.autoguidance import AutoGuidedDenoiser, check_guide_schedule
from core.generation import generate_images
from core.schedules import DiffusionConfig
from models import ConditionalUNet, UNetConfig


def tiny_unet(seed: int, base: int = 16) -> ConditionalUNet:
    torch.manual_seed(seed)
    net = ConditionalUNet(UNetConfig(image_size=16, base_channels=base, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(8,), head_channels=8, dropout=0.0)).eval()
    for p in net.parameters():  # zero-initialised output layers would predict nothing
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    return net


def fake_encode(prompts: list[str]) -> np.ndarray:
    rng = np.random.default_rng(len(prompts[0]))
    e = rng.normal(size=(len(prompts), 384)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


class Counting(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *a, **k):
        self.calls += 1
        return self.net(*a, **k)


def x0_from_v(cfg: DiffusionConfig, x: torch.Tensor, t: int, v: torch.Tensor) -> torch.Tensor:
    ab = float(cfg.terms().alphas_cumprod[t])
    return ab ** 0.5 * x - (1 - ab) ** 0.5 * v


@torch.no_grad()
def test_the_mix_is_the_weak_estimate_plus_w_times_the_difference():
    cfg = DiffusionConfig()
    main, weak = tiny_unet(0), tiny_unet(1, base=8)
    cond = torch.as_tensor(fake_encode(["a photo of a goldfish", "a photo of a goldfish"]))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t, w = 600, 2.5
    den = AutoGuidedDenoiser(main, weak, cfg.terms(), cond, "v_prediction", "v_prediction", w, clip_denoised=False)
    x0, eps = den(x, t)
    tt = torch.full((2,), t)
    m, g = x0_from_v(cfg, x, t, main(x, tt, cond)), x0_from_v(cfg, x, t, weak(x, tt, cond))
    torch.testing.assert_close(x0, g + w * (m - g), atol=1e-5, rtol=1e-5)
    ab = float(cfg.terms().alphas_cumprod[t])  # and eps is the noise that x_0 implies
    torch.testing.assert_close(eps, (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_guide_equal_to_the_model_is_no_guidance_at_all():
    cfg = DiffusionConfig()
    main = tiny_unet(0)
    kw = dict(num_images=2, sampler="dpm++", num_steps=6, seed=4, encode_fn=fake_encode)
    plain = generate_images(main, cfg, "a photo of a goldfish", guidance_scale=1.0, **kw)
    guided = generate_images(main, cfg, "a photo of a goldfish", guidance_scale=4.0, guide_model=main,
                             guide_diffusion=cfg, **kw)
    np.testing.assert_allclose(guided.images.astype(int), plain.images.astype(int), atol=1)
    cfg_guided = generate_images(main, cfg, "a photo of a goldfish", guidance_scale=4.0, **kw)
    assert np.abs(cfg_guided.images.astype(int) - plain.images.astype(int)).mean() > 1  # CFG is not that


@torch.no_grad()
def test_outside_the_interval_only_the_model_runs():
    cfg = DiffusionConfig()
    main, weak = Counting(tiny_unet(0)), Counting(tiny_unet(1, base=8))
    main.config = main.net.config
    res = generate_images(main, cfg, "a photo of a goldfish", num_images=1, sampler="ddim", num_steps=10,
                          guidance_scale=3.0, encode_fn=fake_encode, guide_model=weak, guide_diffusion=cfg,
                          guidance_interval=(0.5, 3.0))
    sigmas = [float(((1 - a) / a) ** 0.5) for a in cfg.terms().alphas_cumprod[[999 - 100 * i for i in range(10)]]]
    inside = sum(0.5 < s <= 3.0 for s in sigmas)
    assert main.calls == 10 and weak.calls == inside and 0 < inside < 10
    assert res.recipe["guidance_interval"] == "0.5-3"


def test_a_guide_on_another_schedule_is_refused():
    check_guide_schedule(DiffusionConfig(), DiffusionConfig(prediction_type="epsilon"))  # same x_t: fine
    with pytest.raises(ValueError, match="noise schedule"):
        check_guide_schedule(DiffusionConfig(), DiffusionConfig(beta_schedule="linear"))
    with pytest.raises(ValueError, match="noise schedule"):
        check_guide_schedule(DiffusionConfig(), DiffusionConfig(num_train_timesteps=500))


def test_cli_guides_with_a_store_model_records_it_and_regenerates_it(tmp_path, capsys):
    """`sample --guide MODEL`: the recipe names the guide, --from-png makes the same pixels again, and
    'unconditional' (classifier-free guidance) gives other ones; a guide that cannot be one is refused."""
    import diffusion as cli
    from benchmarks.app_server import make_tiny_sr_store, make_tiny_store
    from engine.recipe import read_png_recipe
    from PIL import Image

    store = tmp_path / "store"
    make_tiny_store(store, "tiny")
    make_tiny_store(store, "weak", seed=1)
    make_tiny_sr_store(store)

    def sample(out: str, *flags: str) -> tuple[np.ndarray, dict]:
        assert cli.main(["sample", "--model", "tiny", "--store", str(store), "--class", "goldfish", "--n", "1",
                         "--seed", "3", "--steps", "6", "--guidance", "3", "--precision", "fp32",
                         "--out", str(tmp_path / out), *flags]) == 0
        png = next(p for p in (tmp_path / out).glob("*.png") if "_grid" not in p.name)
        return np.asarray(Image.open(png).convert("RGB")), read_png_recipe(png) | {"path": str(png)}

    guided, recipe = sample("auto", "--guide", "weak")
    assert recipe["guide"] == "weak"
    cfg, cfg_recipe = sample("cfg", "--guide", "unconditional")
    assert "guide" not in cfg_recipe and np.abs(guided.astype(int) - cfg.astype(int)).mean() > 1
    assert cli.main(["sample", "--store", str(store), "--from-png", recipe["path"],
                     "--out", str(tmp_path / "again")]) == 0
    again = next(p for p in (tmp_path / "again").glob("*.png") if "_grid" not in p.name)
    np.testing.assert_array_equal(np.asarray(Image.open(again).convert("RGB")), guided)
    for bad, words in (("tiny_sr", "super-resolution"), ("nope", "nope")):
        assert cli.main(["sample", "--model", "tiny", "--store", str(store), "--class", "goldfish", "--n", "1",
                         "--guide", bad, "--out", str(tmp_path / "bad")]) == 2
        assert words in capsys.readouterr().err


def test_evaluate_samples_with_the_guide_it_is_given():
    """evaluate.py --guide: its per-class generation passes the guide on (a guide equal to the model
    is no guidance at all, so guidance 4 with it is guidance 1 without)."""
    from types import SimpleNamespace

    from evaluation import generate_per_class

    main = tiny_unet(0)
    lm = SimpleNamespace(model=main, diffusion=DiffusionConfig(),
                         classes=[{"prompt": "a photo of a goldfish"}, {"prompt": "a photo of a ladybug"}])
    kw = dict(sampler="dpm++", steps=5, per_class=2, seed=0, batch_size=4, device=torch.device("cpu"),
              encode_fn=fake_encode)
    guided, labels, _ = generate_per_class(lm, guidance=4.0, guide=SimpleNamespace(model=main,
                                                                                   diffusion=lm.diffusion), **kw)
    plain, _, _ = generate_per_class(lm, guidance=1.0, **kw)
    cfg, _, _ = generate_per_class(lm, guidance=12.0, **kw)  # without the guide: classifier-free guidance
    np.testing.assert_allclose(guided.astype(int), plain.astype(int), atol=1)
    assert labels.tolist() == [0, 0, 1, 1] and np.abs(cfg.astype(int) - plain.astype(int)).max() > 10
