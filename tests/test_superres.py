"""The super-resolution stage (training/superres.py, engine/upscaling.py, core.cascade): a cascade's 2x upscaler.

* the SR U-Net: six input channels, an augmentation-level input, no text; trains on crops
  and samples whole images (fully convolutional); base networks are unchanged;
* training batches: crops of the high-resolution images paired with the same window of
  their low-resolution counterparts (box-downsampled, bicubic-upsampled); conditioning
  augmentation at a random level, with the level as an input;
* sampling: ``upscale`` against an oracle written from the definitions (torch's bicubic,
  the forward process from diffusers' alpha-bar, diffusers' DPM-Solver++ scheduler) with a
  fake network, so no training is needed;
* the store: SR models are typed ``sr``, kept out of the base-model list, refused where a
  base model is expected (and the reverse), and refused when config and weights disagree;
* training end to end (resume is exact), export, ``sample --upscale`` and ``--from-png``.

Everything runs with one torch thread and tiny networks: seconds, not minutes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import diffusers  # a test requirement (the oracle's scheduler)
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import core as D
from engine import store
from training import superres
from engine import upscaling
from training import loop as T
from models import ConditionalUNet, UNetConfig
from test_training import TINY_NET, assert_bit_identical, ckpt_tensors, make_tiny_dataset, options

SR_NET = dict(in_channels=6, aug_embed=True, cond_dim=0, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
              attention_resolutions=(), middle_attention=False, head_channels=8, dropout=0.0)
SR_TRAIN = dict(task="sr", base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                middle_attention=False, head_channels=8, dropout=0.0, sr_crop=16, sr_aug_max=0.3, batch_size=8,
                lr=1e-3, warmup_steps=2, ema_decay=0.9, seed=3, log_every=1, sample_every=0, ckpt_every=100)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def sr_unet(size: int = 32, seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    model = ConditionalUNet(UNetConfig(image_size=size, **SR_NET))
    for p in model.parameters():  # zero-initialised output layers would make the net ignore its inputs
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def cosine_alpha_bar(t: int, T_: int = 1000, s: float = 0.008) -> float:
    """alpha-bar of the cosine schedule, from its betas (capped at 0.999), written out independently."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return math.prod(1 - min(1 - f((i + 1) / T_) / f(i / T_), 0.999) for i in range(t + 1))


def pil_half(images: torch.Tensor) -> torch.Tensor:
    """The oracle for the low-resolution image: PIL's 2x2 box reduce (what preprocess.py halves with) on uint8."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    half = np.stack([np.asarray(Image.fromarray(im).reduce(2)) for im in u8])
    return torch.from_numpy(half).permute(0, 3, 1, 2).float() / 127.5 - 1


# --------------------------------------------------------------------------- the network
def test_sr_unet_trains_on_crops_and_samples_whole_images():
    model = sr_unet(32)
    x6 = torch.randn(2, 6, 32, 32)
    for size in (16, 32, 48):  # a crop, the whole image, and a size it was never configured for
        out = model(torch.randn(2, 6, size, size), torch.tensor([5, 700]), None, aug_level=torch.tensor([0, 40]))
        assert out.shape == (2, 3, size, size)
    with pytest.raises(ValueError, match="aug_level is required"):
        model(x6, torch.tensor([5, 7]), None)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 6, 17, 17), torch.tensor([5]), None, aug_level=torch.tensor(3))
    # the augmentation level is an input: a different level gives a different output
    a = model(x6, torch.tensor([5, 5]), None, aug_level=torch.tensor([0, 0]))
    b = model(x6, torch.tensor([5, 5]), None, aug_level=torch.tensor([300, 300]))
    assert (a - b).abs().max() > 1e-4
    # no attention anywhere and no text: only convolutions, norms and embeddings
    names = [type(m).__name__ for m in model.modules()]
    assert "SelfAttention" not in names and not hasattr(model, "cond_embed") and not hasattr(model, "null_cond")


def test_base_unet_is_unchanged_by_the_sr_options():
    """Default options build the same tensors as before (so stored models still load), and refuse aug_level."""
    base = ConditionalUNet(UNetConfig(image_size=16, **TINY_NET))
    keys = set(base.state_dict())
    assert {"middle.1.qkv.weight", "null_cond", "cond_embed.0.weight", "input_conv.weight"} <= keys
    assert not any(k.startswith("aug_embed") for k in keys)
    assert base.input_conv.weight.shape[1] == 3
    with pytest.raises(ValueError, match="without an augmentation-level input"):
        base(torch.randn(1, 3, 16, 16), torch.tensor([3]), torch.randn(1, 384), aug_level=torch.tensor([1]))
    cfg = UNetConfig.from_dict({k: v for k, v in UNetConfig(image_size=16).to_dict().items()
                                if k not in ("middle_attention", "aug_embed")})  # an older config.json
    assert cfg.middle_attention and not cfg.aug_embed


# --------------------------------------------------------------------------- training batches
def test_low_resolution_images_are_exactly_what_preprocess_makes():
    """downsample_box = PIL's reduce(2) on uint8 (preprocess.py's halving), ties included (sums of 4 levels
    that end in .5 are common); upsample_bicubic = torch's bicubic, clamped."""
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    u8[:, :2, :2] = [[[1, 2, 3], [2, 3, 4]], [[1, 2, 3], [2, 3, 4]]]  # a tie in every channel
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(D.downsample_box(x), pil_half(x), atol=0, rtol=0)
    np.testing.assert_array_equal(D.to_uint8(D.downsample_box(x)), np.stack([np.asarray(Image.fromarray(im).reduce(2))
                                                                               for im in u8]))
    up = D.upsample_bicubic(D.downsample_box(x), 64)
    assert up.shape == (8, 3, 64, 64) and up.min() >= -1 and up.max() <= 1


def test_training_crops_pair_each_window_with_its_low_resolution_counterpart():
    terms = D.DiffusionConfig().terms()
    g = torch.Generator().manual_seed(0)
    hi = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    batch = superres.sr_training_batch(hi, terms, crop=16, aug_max=0.0, generator=torch.Generator().manual_seed(1))
    assert batch.x0.shape == batch.low_res_up.shape == (6, 3, 16, 16)
    assert batch.aug_t.tolist() == [0] * 6
    # the oracle: box-average 2x2 blocks, round to uint8 levels, bicubic back up (torch), for the whole image
    low = pil_half(hi)
    up = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    ab0 = cosine_alpha_bar(0)
    offsets = set()
    for i in range(6):
        found = [(y, x) for y in range(17) for x in range(17) if torch.equal(hi[i, :, y:y + 16, x:x + 16], batch.x0[i])]
        assert len(found) == 1
        y, x = found[0]
        offsets.add((y, x))
        torch.testing.assert_close(batch.bicubic[i], up[i, :, y:y + 16, x:x + 16], atol=1e-5, rtol=0)
        # aug level 0 still adds the schedule's t=0 noise: sqrt(1 - ab_0) ~ 6e-3 per unit of noise
        err = batch.low_res_up[i] - math.sqrt(ab0) * up[i, :, y:y + 16, x:x + 16]
        assert err.abs().max() < 6 * math.sqrt(1 - ab0)
    assert len(offsets) > 1  # one random window per example, not one per batch
    whole = superres.sr_training_batch(hi, terms, crop=0, aug_max=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(whole.x0, hi) and whole.low_res_up.shape == hi.shape


def test_conditioning_augmentation_noises_the_low_resolution_input_at_its_level():
    terms = D.DiffusionConfig().terms()
    hi = torch.rand(256, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = superres.sr_training_batch(hi, terms, crop=0, aug_max=0.3, generator=torch.Generator().manual_seed(2))
    ts = batch.aug_t
    assert ts.min() >= 0 and ts.max() <= round(0.3 * 999) and ts.float().std() > 50  # spread over [0, 300]
    clean = D.upsample_bicubic(D.downsample_box(hi), 16)
    for i in range(0, 256, 32):
        ab = cosine_alpha_bar(int(ts[i]))
        noise = (batch.low_res_up[i] - math.sqrt(ab) * clean[i]) / math.sqrt(1 - ab)
        assert abs(noise.std().item() - 1) < 0.12 and abs(noise.mean().item()) < 0.12
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        D.aug_timestep(1.5, 1000)


def test_training_loss_feeds_the_network_both_images_and_the_level():
    seen = {}

    def net(x, t, cond, drop, aug_level=None):
        seen.update(x=x, cond=cond, aug=aug_level)
        return torch.zeros_like(x[:, :3])

    terms = D.DiffusionConfig().terms()
    hi = torch.rand(4, 3, 32, 32) * 2 - 1
    loss = superres.sr_training_loss(net, terms, hi, None, crop=16, aug_max=0.2, prediction_type="v_prediction",
                                     generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape == (4, 6, 16, 16) and seen["cond"] is None and seen["aug"].shape == (4,)
    assert loss.item() > 0
    # the target: at t = T-1 (alpha-bar ~ 0) v = -x0, so a network that outputs 0 scores mean(x0^2), where
    # x0 is the image, or (residual) the image minus the bicubic upsampling of its box-downsampled half
    t_last = torch.full((4,), 999, dtype=torch.long)
    low = pil_half(hi)
    detail = hi - F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    for residual, x0 in ((False, hi), (True, detail)):
        loss = superres.sr_training_loss(net, terms, hi, None, crop=0, aug_max=0.0, prediction_type="v_prediction",
                                         t=t_last, generator=torch.Generator().manual_seed(0), residual=residual)
        assert loss.item() == pytest.approx(x0.pow(2).mean().item(), rel=1e-3)


# --------------------------------------------------------------------------- sampling against an oracle
class FakeSR(torch.nn.Module):
    """A fixed function of [x_t, low], t and the augmentation level (a v-prediction); records the levels."""

    def __init__(self, residual: bool = False):
        super().__init__()
        self.config = UNetConfig(image_size=16, channel_mult=(1, 2), attention_resolutions=(), residual=residual, **{
            k: SR_NET[k] for k in ("in_channels", "aug_embed", "cond_dim")})
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.levels: list[int] = []

    def forward(self, x, t, cond, drop=None, aug_level=None):
        self.levels.append(int(aug_level))
        return fake_v(x, t.float().reshape(-1, 1, 1, 1), float(aug_level))


def fake_v(x6: torch.Tensor, t: torch.Tensor, level: float) -> torch.Tensor:
    xt, low = x6[:, :3], x6[:, 3:]
    return 0.7 * xt * torch.cos(t / 800.0) - 0.5 * low * torch.sin(t / 700.0) + 0.1 * torch.tanh(low) + level / 5000


@pytest.mark.parametrize("steps,aug_level,residual", [(10, 0.05, False), (6, 0.0, False), (4, 0.3, True),
                                                      (10, 0.05, True)])
def test_upscale_matches_an_oracle_built_from_diffusers(steps, aug_level, residual):
    """upscale = bicubic up + q(z_s|x) with seed i's second draw + diffusers' DPM-Solver++(2M) on [x, z]
    (+ the clean bicubic image at the end, for a residual model)."""
    rng = np.random.default_rng(0)
    low_u8 = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    ours = D.upscale(FakeSR(residual), D.DiffusionConfig(), low_u8, steps=steps, aug_level=aug_level, seed=11)
    assert ours.images.shape == (3, 16, 16, 3) and ours.seeds == [11, 12, 13]
    assert ours.recipe == {"upscale_steps": steps, "upscale_aug": aug_level}

    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", timestep_spacing="trailing",
        final_sigmas_type="zero", thresholding=True, sample_max_value=1.0)
    sched.set_timesteps(steps)
    s = round(aug_level * 999)
    ab = sched.alphas_cumprod[s].double()
    low = torch.from_numpy(low_u8).permute(0, 3, 1, 2).double() / 127.5 - 1
    up = F.interpolate(low.float(), size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1).double()
    xs, zs = [], []
    for i in range(3):
        g = torch.Generator().manual_seed(11 + i)
        xs.append(torch.randn(1, 3, 16, 16, generator=g))
        zs.append(torch.randn(1, 3, 16, 16, generator=g))
    x, z = torch.cat(xs), (ab.sqrt() * up + (1 - ab).sqrt() * torch.cat(zs).double()).float()
    for t in sched.timesteps:
        x = sched.step(fake_v(torch.cat([x, z], 1), torch.full((3, 1, 1, 1), float(t)), float(s)), t, x).prev_sample
    if residual:
        x = x + up.float()
    theirs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.images.astype(int) - theirs.astype(int)).max() <= 1
    assert np.mean(ours.images == theirs) > 0.97


def test_upscale_uses_its_aug_level_at_every_step_and_a_seed_is_batch_independent():
    fake = FakeSR()
    low = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    batch = D.upscale(fake, D.DiffusionConfig(), low, steps=5, aug_level=0.1, seed=4, return_frames=True)
    assert fake.levels == [round(0.1 * 999)] * 5
    assert len(batch.frames) == 5 and batch.frame_timesteps == D.make_timesteps(1000, 5, "trailing")
    one = D.upscale(FakeSR(), D.DiffusionConfig(), low[2:], steps=5, aug_level=0.1, seed=6)
    np.testing.assert_array_equal(one.images[0], batch.images[2])
    with pytest.raises(ValueError, match="super-resolution network"):
        D.upscale(ConditionalUNet(UNetConfig(image_size=16, **TINY_NET)), D.DiffusionConfig(), low)


@pytest.mark.parametrize("residual", [False, True])
def test_trace_upscale_records_the_sr_stage_step_by_step(residual):
    """The Learn tab's SR trace: the same image as ``upscale``; row 1 starts at the seed's noise (plus
    the bicubic image for a residual model) and follows the sampler; q(x_t | x_0) holds between rows."""
    model = sr_unet(16)
    model.config.residual = residual
    cfg = D.DiffusionConfig()
    low = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tr = D.trace_upscale(model, cfg, low, seed=7, steps=4, aug_level=0.05)
    plain = D.upscale(model, cfg, low[None], steps=4, aug_level=0.05, seed=7)
    np.testing.assert_array_equal(tr.result.images, plain.images)
    assert tr.timesteps == D.make_timesteps(1000, 4, "trailing") and len(tr.x_t) == len(tr.x0) == len(tr.eps) == 4
    bicubic = F.interpolate(torch.from_numpy(low).permute(2, 0, 1)[None].float() / 127.5 - 1, size=(16, 16),
                            mode="bicubic", align_corners=False).clamp(-1, 1)  # clamped, as documented
    offset = bicubic if residual else 0.0
    first = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(7)) + offset
    np.testing.assert_array_equal(tr.x_t[0], D.to_uint8(first)[0])
    for i in range(4):  # x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, in the network's own (residual) space
        ab = cosine_alpha_bar(tr.timesteps[i])
        off = offset[0].permute(1, 2, 0).numpy() if residual else 0.0
        x0 = tr.x0[i].astype(float) / 127.5 - 1 - off
        xt = tr.x_t[i].astype(float) / 127.5 - 1 - off
        eps = (tr.eps[i].astype(float) / 127.5 - 1) * 3
        recon = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        inside = (np.abs(eps) < 2.9) & (np.abs(tr.x_t[i].astype(float) / 127.5 - 1) < 0.99) \
            & (np.abs(tr.x0[i].astype(float) / 127.5 - 1) < 0.99)
        assert inside.mean() > 0.3 and np.abs(recon - xt)[inside].mean() < 0.05


def test_upscale_takes_uint8_or_tensor_images_and_repeats_with_a_seed():
    """A real (untrained) SR net: uint8 and [-1, 1] tensor inputs give the same images of the right size."""
    model = sr_unet(16)
    low = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    a = D.upscale(model, D.DiffusionConfig(), low, steps=3, seed=1)
    b = D.upscale(model, D.DiffusionConfig(), torch.from_numpy(low).permute(0, 3, 1, 2).float() / 127.5 - 1,
                  steps=3, seed=1)
    assert a.images.shape == (2, 16, 16, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)


# --------------------------------------------------------------------------- training, the store and the CLI
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base model (16 px) and a tiny SR model (16 -> 32 px, trained on 16 px crops), exported."""
    root = tmp_path_factory.mktemp("sr")
    base_data = make_tiny_dataset(root / "data16", size=16)
    sr_data = make_tiny_dataset(root / "data32", size=32)
    base_ckpt = T.train(T.make_config("smoke", **options(base_data, root / "runs", "base", **TINY_NET, dropout=0.0,
                                                         batch_size=8, max_steps=4, sample_every=0)))
    sr_ckpt = T.train(T.make_config("sr64", **options(sr_data, root / "runs", "sr", **dict(SR_TRAIN, max_steps=4,
                                                      sample_every=4, sample_classes=2))))
    import diffusion as cli

    st = root / "store"
    assert cli.main(["export", str(base_ckpt.parents[1]), "--name", "tiny", "--store", str(st)]) == 0
    assert cli.main(["export", str(sr_ckpt.parents[1]), "--name", "sr32", "--store", str(st)]) == 0
    return dict(root=root, store=st, sr_data=sr_data, sr_ckpt=sr_ckpt)


def test_sr_training_writes_a_typed_checkpoint_and_sample_grid(trained):
    cfg = json.loads((trained["sr_ckpt"] / store.CONFIG_FILE).read_text())
    assert cfg["model_type"] == "sr" and cfg["sr"] == {"scale": 2, "low_res_size": 16, "crop": 16, "aug_max": 0.3}
    assert cfg["unet"]["in_channels"] == 6 and cfg["unet"]["aug_embed"] and cfg["unet"]["cond_dim"] == 0
    grid = Image.open(trained["sr_ckpt"].parents[1] / "samples" / "grid_0000004.png")
    assert grid.size[0] > 2 * 32 and grid.size[1] > 4 * 32  # 2 images x 4 rows (low, bicubic, SR, truth)


def test_sr_training_resumes_exactly(trained, tmp_path):
    """4 steps + resume for 4 = 8 steps, bit for bit: crops and augmentation draws are per-step seeded."""
    opts = options(trained["sr_data"], tmp_path, "r", **SR_TRAIN, max_steps=8)
    straight = T.train(T.make_config("sr64", **dict(opts, run_name="straight")))
    T.train(T.make_config("sr64", **dict(opts, stop_at_step=4)))
    resumed = T.train(T.make_config("sr64", **opts))
    assert resumed.name == straight.name == "ckpt-0000008"
    assert_bit_identical(ckpt_tensors(straight), ckpt_tensors(resumed))


def test_store_keeps_sr_models_apart_from_base_models(trained):
    st = trained["store"]
    assert store.list_models(st) == ["tiny"]
    assert store.list_models(st, model_type="sr") == ["sr32"]
    assert store.list_models(st, model_type=None) == ["sr32", "tiny"]
    sr = store.load_sr_model("sr32", store=st)
    assert sr.model.config.in_channels == 6 and store.model_type_of(sr.config) == "sr"
    with pytest.raises(store.CheckpointError, match="is a super-resolution model, not a base"):
        store.load_model("sr32", store=st)
    with pytest.raises(store.CheckpointError, match="is a base .* not a super-resolution model"):
        store.load_sr_model("tiny", store=st)
    folder = st / "sr32"
    assert all(v.dtype == torch.float16 for v in store.load_tensors(folder / store.WEIGHTS_FILE).values())
    card = (folder / store.CARD_FILE).read_text()
    assert "super-resolution" in card and "--upscale sr32" in card and "| text encoder | none" in card


@pytest.mark.parametrize("change,message", [
    (lambda c: c["unet"].update(in_channels=3), "in_channels = 2 x out_channels"),
    (lambda c: c["unet"].update(aug_embed=False), "aug_embed"),
    (lambda c: c["unet"].update(base_channels=32), "do not match its config"),
    (lambda c: c["unet"].update(middle_attention=True), "do not match its config"),
    (lambda c: c.update(model_type="upscaler"), "unknown model_type"),
])
def test_store_refuses_an_sr_config_that_does_not_match(trained, tmp_path, change, message):
    import shutil

    folder = tmp_path / "sr_bad"
    shutil.copytree(trained["store"] / "sr32", folder)
    cfg = json.loads((folder / store.CONFIG_FILE).read_text())
    change(cfg)
    (folder / store.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(store.CheckpointError, match=message):
        store.load_sr_model(str(folder))


def test_cli_upscale_round_trip_with_from_png(trained, tmp_path, capsys):
    import diffusion as cli

    from engine.recipe import read_png_recipe

    st = str(trained["store"])
    out = tmp_path / "up"
    assert cli.main(["sample", "--model", "tiny", "--store", st, "--class", "goldfish", "--n", "2", "--seed", "5",
                     "--steps", "4", "--upscale", "sr32", "--upscale-steps", "3", "--upscale-aug", "0.1",
                     "--precision", "fp32", "--gif", "--out", str(out)]) == 0
    pngs = sorted(p for p in out.glob("*.png") if not p.name.endswith("_grid.png"))
    assert len(pngs) == 2 and len(list(out.glob("*_denoise.gif"))) == 1
    recipes = [read_png_recipe(p) for p in pngs]
    assert [(r["seed"], r["model"], r["upscaler"], r["upscale_steps"], r["upscale_aug"], r["size"]) for r in recipes] \
        == [(5, "tiny", "sr32", 3, 0.1, "16x16"), (6, "tiny", "sr32", 3, 0.1, "16x16")]
    pixels = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    assert pixels(pngs[1]).shape == (32, 32, 3)
    # the second image from its PNG alone: both stages regenerate bit for bit
    assert cli.main(["sample", "--from-png", str(pngs[1]), "--store", st, "--out", str(tmp_path / "re")]) == 0
    again = sorted(p for p in (tmp_path / "re").glob("*.png") if not p.name.endswith("_grid.png"))
    assert len(again) == 1
    np.testing.assert_array_equal(pixels(again[0]), pixels(pngs[1]))
    assert read_png_recipe(again[0]) == recipes[1]
    # the same image without the second stage is the 16 px base image
    assert cli.main(["sample", "--model", "tiny", "--store", st, "--class", "goldfish", "--n", "1", "--seed", "6",
                     "--steps", "4", "--precision", "fp32", "--out", str(tmp_path / "base")]) == 0
    base = next(p for p in (tmp_path / "base").glob("*.png") if not p.name.endswith("_grid.png"))
    assert pixels(base).shape == (16, 16, 3) and "upscaler" not in read_png_recipe(base)
    # clear errors: an SR model as the base model, a base model as the upscaler
    capsys.readouterr()
    assert cli.main(["sample", "--model", "sr32", "--store", st, "--class", "goldfish", "--out", str(tmp_path)]) == 2
    assert "super-resolution model, not a base" in capsys.readouterr().err
    assert cli.main(["sample", "--model", "tiny", "--store", st, "--class", "goldfish", "--n", "1", "--steps", "2",
                     "--upscale", "tiny", "--out", str(tmp_path / "e")]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err
    assert cli.main(["list", "--store", st]) == 0
    listing = capsys.readouterr().out
    assert "sr32" in listing and "(super-resolution)" in listing and "tiny" in listing


def test_sr_training_learns_the_residual_when_asked(trained, tmp_path):
    """The first step's loss (a zero-initialised output layer predicts v = 0) is the size of the target:
    the detail bicubic misses is far smaller than the image itself."""
    first = {}
    for residual in (False, True):
        opts = options(trained["sr_data"], tmp_path, f"res{residual}", **dict(SR_TRAIN, max_steps=1, sr_residual=residual))
        ckpt = T.train(T.make_config("sr64", **opts))
        assert json.loads((ckpt / store.CONFIG_FILE).read_text())["unet"]["residual"] is residual
        first[residual] = float((tmp_path / f"res{residual}" / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    assert first[True] < 0.9 * first[False]  # (the same seeds: equal losses if the flag were ignored)


def test_a_text_conditioned_sr_run_draws_its_preview_grid(trained, tmp_path):
    """An SR run conditioned on the text (sr_text) previews with each held-out image's class embedding
    (it crashed at its first preview: the grid's upscale was given no condition)."""
    opts = options(trained["sr_data"], tmp_path, "srtext", **dict(SR_TRAIN, max_steps=2, sr_text=True,
                                                                  sample_every=2, sample_classes=2))
    ckpt = T.train(T.make_config("sr64", **opts))
    assert json.loads((ckpt / store.CONFIG_FILE).read_text())["unet"]["cond_dim"] == 384
    grid = Image.open(tmp_path / "srtext" / "samples" / "grid_0000002.png")
    assert grid.size[1] > 4 * 32  # low, bicubic, SR, truth


@pytest.mark.slow
def test_bench_sr_scores_bicubic_and_the_sr_model_on_held_out_images_and_samples(trained, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from benchmarks import bench_sr
    from dataprep.dataset import PreprocessedDataset
    from evaluation import save_classifier, train_classifier

    data = PreprocessedDataset(trained["sr_data"])
    clf = train_classifier(np.asarray(data.images), np.asarray(data.labels), data.num_classes, epochs=1, batch_size=32)
    save_classifier(clf, tmp_path / "clf", {"image_size": 32})
    out = tmp_path / "bench"
    assert bench_sr.main(["--sr", "sr32", "--store", str(trained["store"]), "--data", str(trained["sr_data"]),
                          "--classifier", str(tmp_path / "clf"), "--n", "4", "--batch", "4", "--steps", "2",
                          "--aug-levels", "0,0.1", "--bootstrap", "2", "--threads", "1", "--figure", "3",
                          "--base", "tiny", "--per-class", "1", "--base-steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "bench_sr.json").read_text())
    settings = [r["setting"] for r in result["rows"]]
    assert settings == ["true 64 px (reference)", "bicubic", "sr32 aug 0", "sr32 aug 0.1", "samples: tiny + bicubic",
                        "samples: tiny + sr32 aug 0", "samples: tiny + sr32 aug 0.1"]
    rows = {r["setting"]: r for r in result["rows"]}
    assert rows["true 64 px (reference)"]["fd"] == pytest.approx(0, abs=1e-6)
    # the bicubic baseline's PSNR, recomputed here from the definitions
    val = np.asarray(PreprocessedDataset(trained["sr_data"], split="val").images)
    idx = np.sort(np.random.default_rng(0).choice(len(val), size=4, replace=False))
    truth = torch.from_numpy(val[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = pil_half(truth)
    up = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    up8 = ((up + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    mse = ((up8 - val[idx].astype(np.float64)) ** 2).reshape(4, -1).mean(1)
    assert rows["bicubic"]["psnr"] == pytest.approx(np.mean(10 * np.log10(255 ** 2 / mse)), rel=1e-9)
    assert rows["sr32 aug 0.1"]["seconds_per_image"] > 0 and rows["samples: tiny + bicubic"]["psnr"] is None
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])
    assert (out / "bench_sr.md").read_text().count("\n|") >= 8
    assert Image.open(out / "bench_sr_examples.png").size[0] > 3 * 32
    assert (out / "bench_sr_samples.png").is_file()


def test_a_text_conditioned_sr_model_takes_the_prompt_embedding_and_guidance():
    torch.manual_seed(0)
    model = ConditionalUNet(UNetConfig(image_size=16, **dict(SR_NET, cond_dim=384))).eval()
    for p in model.parameters():
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    low = np.random.default_rng(4).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    cond = torch.randn(2, 384)
    with pytest.raises(ValueError, match="text-conditioned"):
        D.upscale(model, D.DiffusionConfig(), low, steps=2)
    plain = D.upscale(model, D.DiffusionConfig(), low, steps=3, cond=cond, seed=1)
    guided = D.upscale(model, D.DiffusionConfig(), low, steps=3, cond=cond, seed=1, guidance_scale=3.0)
    assert plain.images.shape == guided.images.shape == (2, 16, 16, 3)
    assert not np.array_equal(plain.images, guided.images)  # the null branch ran (with the low-res images repeated)


def test_upscale_images_uses_the_stored_model_with_its_defaults(trained):
    """What the app calls for "Upscale to 64 px": the same images as the core with the same settings."""
    low = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    got = upscaling.upscale_images(low, "sr32", seed=7, store=str(trained["store"]))
    sr = store.load_sr_model("sr32", store=trained["store"])
    ref = D.upscale(sr.model, sr.diffusion, low, steps=D.SR_DEFAULT_STEPS, aug_level=D.SR_DEFAULT_AUG_LEVEL, seed=7)
    np.testing.assert_array_equal(got.images, ref.images)
    assert got.recipe == {"upscaler": "sr32", "upscale_steps": 10, "upscale_aug": 0.05}
    assert upscaling.load_upscaler("sr32", store=str(trained["store"])) is upscaling.load_upscaler(
        "sr32", store=str(trained["store"]))  # loaded once
    previews = []
    upscaling.upscale_images(low, "sr32", seed=7, store=str(trained["store"]), steps=3, aug_level=0.2,
                            callback=lambda info: previews.append(info.x0_pred.shape))
    assert previews == [(2, 3, 32, 32)] * 3
