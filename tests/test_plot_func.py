"""drawing (and its command line, plot_func.py): sizes, frame counts, value ranges, denormalisation,
closed figures; a model's figures (engine.figures)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import drawing
import plot_func


def batch(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


# ----------------------------------------------------------------- denormalisation
def test_as_uint8_denormalises_with_clamping():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = drawing.as_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    # float arrays (N, H, W, 3) are taken as [-1, 1] too; NaN becomes mid grey
    f = np.array([[[[-1.5, 0.0, np.nan]]]], dtype=np.float32)
    assert drawing.as_uint8(f)[0, 0, 0].tolist() == [0, 128, 128]
    t = torch.full((3, 2, 2), float("nan"))
    assert (drawing.as_uint8(t) == 128).all()


def test_as_uint8_shapes():
    assert drawing.as_uint8(batch(1)[0]).shape == (1, 16, 16, 3)  # a single (H, W, 3) image
    assert drawing.as_uint8(np.zeros((2, 8, 8, 1), np.uint8)).shape == (2, 8, 8, 3)  # grey -> RGB
    assert drawing.as_uint8(np.zeros((2, 8, 8, 4), np.uint8)).shape == (2, 8, 8, 3)  # alpha dropped
    assert drawing.as_uint8(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 8, 8, 3)  # channel-first
    assert drawing.as_uint8(np.full((1, 4, 4, 3), 300, np.int32)).max() == 255  # ints clipped
    with pytest.raises(ValueError):
        drawing.as_uint8(np.zeros((2, 8, 8, 5), np.uint8))


# ----------------------------------------------------------------- pictures
def test_sample_grid_size_and_file(tmp_path):
    imgs = batch(5, 16)
    grid = drawing.sample_grid(imgs, nrow=3, path=tmp_path / "g.png", padding=2, min_cell=64)
    # 16 px cells upscaled x4 to 64: 3 columns, 2 rows
    assert grid.shape == (2 * (64 + 2) + 2, 3 * (64 + 2) + 2, 3) and grid.dtype == np.uint8
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
    # the first cell holds the first image, upscaled by nearest neighbour
    assert np.array_equal(grid[2:66:4, 2:66:4], imgs[0])
    labelled = drawing.sample_grid(imgs, nrow=3, labels=list("abcde"))
    assert labelled.shape[0] == grid.shape[0] + 2 * 14


def test_forward_strip_one_frame_per_timestep(tmp_path):
    img = batch(1, 32)[0]
    ts = [0, 100, 500, 999]
    strip = drawing.forward_diffusion_strip(img, ts, beta_schedule="linear", path=tmp_path / "f.png", min_side=96)
    frame_w = 96  # 32 px upscaled x3
    assert strip.shape == (96 + 16, len(ts) * frame_w + 2 * (len(ts) - 1), 3)
    first = strip[16:, :frame_w]
    diff = np.abs(first[::3, ::3].astype(int) - img.astype(int))
    assert diff.mean() < 2 and diff.max() <= 8  # t=0 is the image (with 1% noise: beta_0 = 1e-4)
    last = strip[16:, -frame_w:]
    assert last.std() > 30  # t=999 is noise
    # each frame is further from the image than the one before: the noise grows with t
    frames = [strip[16:, i * (frame_w + 2):i * (frame_w + 2) + frame_w][::3, ::3] for i in range(len(ts))]
    dist = [np.abs(f.astype(int) - img.astype(int)).mean() for f in frames]
    assert all(a < b for a, b in zip(dist, dist[1:])), dist
    assert (tmp_path / "f.png").is_file()
    # the same seed gives the same strip; the schedule changes it
    assert np.array_equal(strip, drawing.forward_diffusion_strip(img, ts, beta_schedule="linear", min_side=96))
    assert not np.array_equal(strip, drawing.forward_diffusion_strip(img, ts, beta_schedule="cosine", min_side=96))
    with pytest.raises(ValueError):
        drawing.forward_diffusion_strip(img, [0, 1000])


def test_denoising_gif_frames_and_timing(tmp_path):
    frames = [batch(4, 16, seed=i) for i in range(6)]
    ts = [999, 799, 599, 399, 199, 0]
    pictures = drawing.denoising_frames(frames, ts, nrow=2)
    assert len(pictures) == 6 and all(p.shape == pictures[0].shape for p in pictures)
    path = drawing.denoising_gif(frames, ts, tmp_path / "d.gif", nrow=2, fps=10, hold_last=2.0)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
            assert gif.size == (pictures[0].shape[1], pictures[0].shape[0])
        assert gif.info.get("loop") == 0
    assert durations[0] == 100 and durations[-1] == 2000
    with pytest.raises(ValueError):
        drawing.denoising_gif(frames, ts[:-1], tmp_path / "bad.gif")
    with pytest.raises(ValueError):
        drawing.denoising_gif([], [], tmp_path / "empty.gif")


def test_denoising_strip_rows_and_columns(tmp_path):
    frames = [batch(6, 16, seed=i) for i in range(20)]
    ts = list(range(950, -1, -50))
    strip = drawing.denoising_strip(frames, ts, max_frames=5, max_images=3, min_side=64, path=tmp_path / "s.png")
    # 5 columns of 64 px, 3 rows of 64 px + a 16 px label bar
    assert strip.shape == (16 + 3 * 64 + 2 * 2, 5 * 64 + 4 * 2, 3)
    assert (tmp_path / "s.png").is_file()
    # the last column is the last frame's first image
    cell = strip[16:16 + 64, -64:]
    assert np.array_equal(cell[::4, ::4], frames[-1][0])
    one = drawing.denoising_strip(frames[:1], ts[:1])
    assert one.shape[1] == 64


def test_loss_curve_and_schedule_plot(tmp_path):
    steps = np.arange(1, 201)
    losses = 1.0 / steps + 0.01
    img = drawing.loss_curve(steps, losses, tmp_path / "loss.png")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
    assert (tmp_path / "loss.png").is_file()
    drawing.loss_curve([1, 2, 3], [0.5, float("nan"), -1.0])  # odd values still plot
    with pytest.raises(ValueError):
        drawing.loss_curve([1, 2], [1.0])
    plot = drawing.schedule_plot(1000, tmp_path / "sched.png", timesteps=[0, 500])
    assert plot.shape[0] > 100 and plot.shape[1] > 200 and plot.std() > 10
    assert (tmp_path / "sched.png").is_file()


def test_denoising_gif_with_a_single_frame(tmp_path):
    import imageio.v2 as imageio

    frame = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    path = drawing.denoising_gif([frame], [0], tmp_path / "one.gif")
    assert len(imageio.mimread(path)) == 1


# ----------------------------------------------------------------- a model's figures
def _tiny_store_model(tmp_path, names=("goldfish", "pizza"), lively=False):
    import core as D
    from engine import store as ms
    from models import ConditionalUNet, UNetConfig

    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(8,), head_channels=8, dropout=0.0))
    if lively:  # zero-initialised output layers would make every prompt give the same image
        for prm in net.parameters():
            if not prm.detach().any():
                torch.nn.init.normal_(prm, std=0.05)
    classes = [{"index": i, "wnid": f"n{i}", "name": n, "prompt": f"a photo of a {n}"}
               for i, n in enumerate(names)]
    cfg = ms.model_config(net.config, D.DiffusionConfig(), classes)
    cfg["sampler_defaults"] = {"sampler": "dpm++", "steps": 3, "guidance_scale": 2.0}
    ms.save_to_store("tiny", net.state_dict(), cfg, "# tiny\n", store=tmp_path / "store", dtype=torch.float32)
    return ms.load_model("tiny", store=tmp_path / "store")


def test_one_step_x0_by_hand():
    """A fresh U-Net outputs zeros (its last conv starts at zero), so under v-prediction its x_0
    guess is sqrt(alpha_bar_t) x_t, clamped; x_t is q(x_t | x_0) with one noise draw for every t."""
    import core as D
    from models import ConditionalUNet, UNetConfig

    net = ConditionalUNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(8,), head_channels=8, dropout=0.0))
    cfg = D.DiffusionConfig(prediction_type="v_prediction")
    img = batch(1, 16)
    ts = (0, 500, 999)
    noisy, guesses = D.one_step_x0(net, cfg, img, np.zeros((1, 384), np.float32), ts, seed=3)
    ab = cfg.terms().alphas_cumprod.double()[list(ts)].numpy()[:, None, None, None]
    x0 = img[:1].astype(np.float64) / 127.5 - 1
    noise = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(3)).permute(0, 2, 3, 1).double().numpy()
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    to8 = lambda a: np.clip(np.round((a + 1) * 127.5), 0, 255).astype(np.uint8)  # noqa: E731
    assert np.abs(noisy.astype(int) - to8(xt).astype(int)).max() <= 1
    assert np.abs(guesses.astype(int) - to8(np.clip(np.sqrt(ab) * xt, -1, 1)).astype(int)).max() <= 1
    assert np.abs(noisy[0].astype(int) - img[0].astype(int)).max() <= 3  # t = 0 is (almost) the image
    assert net.training  # the network's mode comes back
    with pytest.raises(ValueError, match="timesteps must be in"):
        D.one_step_x0(net, cfg, img, np.zeros((1, 384), np.float32), (1000,))


def test_forward_and_prediction_strip_draws_two_rows(tmp_path):
    noisy, guesses = batch(3, 16, seed=1), batch(3, 16, seed=2)
    out = drawing.forward_and_prediction_strip(noisy, guesses, (0, 500, 999), min_side=32, path=tmp_path / "f.png")
    assert (tmp_path / "f.png").exists()
    single = drawing.forward_diffusion_strip(batch(1, 16), (0, 500, 999), min_side=32)
    assert out.shape[0] > 2 * single.shape[0] - 8 and out.shape[1] == single.shape[1]
    # the bottom row's last picture is the last guess, scaled 2x (nearest) to 32 px below its caption bar
    h = out.shape[0]
    np.testing.assert_array_equal(out[h - 32:h:2, -32::2], guesses[-1])
    with pytest.raises(ValueError, match="2 noisy images, 3 guesses"):
        drawing.forward_and_prediction_strip(noisy[:2], guesses, (0, 500, 999))


def test_model_figures_writes_grid_gif_and_strips(tmp_path):
    import imageio.v2 as imageio

    from engine import figures

    lm = _tiny_store_model(tmp_path)
    fake_encode = lambda texts: np.ones((len(texts), 384), np.float32) / np.sqrt(384)  # noqa: E731
    paths = figures.model_figures(lm, tmp_path / "fig", per_class=3, real_image=batch(1, 16), encode_fn=fake_encode)
    assert set(paths) == {"grid", "gif", "strip", "forward"} and all(p.exists() for p in paths.values())
    grid = np.asarray(Image.open(paths["grid"]))
    assert grid.shape[1] > grid.shape[0]  # 3 per row, 2 rows of classes
    assert len(imageio.mimread(paths["gif"])) == 3  # one frame per sampler step (the model's default: 3)
    with pytest.raises(ValueError, match="not one of the model's classes"):
        figures.model_figures(lm, tmp_path / "fig", gif_class="zebra")


def test_studio_figures_draw_what_the_core_makes(tmp_path):
    """The README's studio pictures: each picture's cells are the core's own images (variation strength 0
    is the seed's image, 1 the variation seed's; the interpolation ends are the two prompts' images)."""
    import core as D
    from engine import figures

    names = ("goldfish", "jellyfish", "ladybug", "monarch", "sports car", "coral reef", "school bus")
    lm = _tiny_store_model(tmp_path, names, lively=True)
    rng = np.random.default_rng(0)
    table = {f"a photo of a {n}": rng.standard_normal(384).astype(np.float32) for n in names}
    encode = lambda texts: np.stack([table[t] / np.linalg.norm(table[t]) for t in texts])  # noqa: E731
    paths = figures.studio_figures(lm, tmp_path / "s", init_image=batch(1, 16)[0], encode_fn=encode)
    assert set(paths) == {"variation", "blend", "img2img", "interpolation_gif", "interpolation", "grid"}
    assert all(p.exists() for p in paths.values())

    def cell(path, j, rows_above=0):  # a cell of a one-row table with a title: 16 px scaled 6x to 96
        a = np.asarray(Image.open(path).convert("RGB"))
        y = 20 + 18 + rows_above * 98
        return a[y:y + 96:6, j * 98:j * 98 + 96:6]

    def plain(prompt, seed):
        return D.generate_images(lm.model, lm.diffusion, [prompt], seed=seed, sampler="dpm++", num_steps=3,
                                 guidance_scale=2.0, encode_fn=encode).images[0]

    np.testing.assert_array_equal(cell(paths["variation"], 0), plain("a photo of a monarch", 3))
    np.testing.assert_array_equal(cell(paths["variation"], 5), plain("a photo of a monarch", 40))
    np.testing.assert_array_equal(cell(paths["interpolation"], 0), plain("a photo of a goldfish", 1))
    np.testing.assert_array_equal(cell(paths["interpolation"], 7), plain("a photo of a jellyfish", 2))
    assert not np.array_equal(cell(paths["variation"], 2), cell(paths["variation"], 0))
    np.testing.assert_array_equal(cell(paths["img2img"], 0), batch(1, 16)[0])  # the init image itself
    with pytest.raises(ValueError, match="lacks coral reef"):
        figures.studio_figures(_tiny_store_model(tmp_path / "other", ("goldfish", "monarch")), tmp_path / "t",
                               encode_fn=encode)


def test_figures_command_and_plot_func_only_draws(tmp_path, capsys):
    import diffusion as cli

    _tiny_store_model(tmp_path)
    src = tmp_path / "fish.png"
    Image.fromarray(batch(1, 40)[0]).save(src)
    assert cli.main(["figures", "--model", "tiny", "--store", str(tmp_path / "store"), "--image", str(src),
                     "--per-class", "2", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "goldfish_forward_strip.png").exists()
    assert "goldfish_denoising.gif" in capsys.readouterr().out
    assert cli.main(["figures", "--model", "nope", "--store", str(tmp_path / "store")]) == 2
    assert "nope" in capsys.readouterr().err
    assert plot_func.main(["--model", "tiny", "--out", str(tmp_path / "p")]) == 2  # moved: a clear pointer
    assert "python diffusion.py figures" in capsys.readouterr().err
    drawn_by = (plot_func, drawing.pictures, drawing.process, drawing.charts)
    src_text = "".join(Path(m.__file__).read_text() for m in drawn_by)
    assert "model_store" not in src_text and "text_encoder" not in src_text and "generate_images" not in src_text


def test_plot_func_command_draws_the_schedules_and_a_forward_strip(tmp_path, capsys):
    """The command line is a thin shell over ``drawing``: the files it writes are drawing's pictures."""
    src = tmp_path / "in.png"
    Image.fromarray(batch(1, 40)[0]).save(src)
    out = tmp_path / "plots"
    assert plot_func.main(["--image", str(src), "--schedule", "linear", "--timesteps", "0,500,999",
                           "--seed", "3", "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "schedules.png"), str(out / "forward_linear.png")]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "schedules.png").convert("RGB")),
                                  drawing.schedule_plot())
    np.testing.assert_array_equal(np.asarray(Image.open(out / "forward_linear.png")),
                                  drawing.forward_diffusion_strip(batch(1, 40)[0], [0, 500, 999],
                                                                  beta_schedule="linear", seed=3))


def test_pick_classes_spreads_or_names():
    from engine import figures

    classes = [{"index": i, "name": f"c{i}"} for i in range(10)]
    assert [c["index"] for c in figures.pick_classes(classes, 4)] == [0, 3, 6, 9]
    assert [c["index"] for c in figures.pick_classes(classes, 1)] == [0]
    assert len(figures.pick_classes(classes, 50)) == 10 and figures.pick_classes(classes, None) == classes
    assert [c["index"] for c in figures.pick_classes(classes, ["C7", "c2"])] == [7, 2]
    with pytest.raises(ValueError, match="not classes of the model: zebra"):
        figures.pick_classes(classes, ["c1", "zebra"])
    with pytest.raises(ValueError, match="at least 1"):
        figures.pick_classes(classes, 0)


def test_gif_frames_keep_their_pictures(tmp_path):
    """Each GIF frame decodes back to its picture up to palette error: a quantizer that mixed up
    frames, dropped colours or reordered them goes red here."""
    rng = np.random.default_rng(0)
    # smooth, image-like pictures with distinct colours per frame
    pictures = [np.clip(rng.normal(40 + 40 * i, 50, (8, 8, 3)), 0, 255).astype(np.uint8).repeat(12, 0).repeat(12, 1)
                for i in range(4)]
    path = drawing.write_gif(tmp_path / "g.gif", pictures, [100, 100, 100, 500])
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        for i, want in enumerate(pictures):
            gif.seek(i)
            got = np.asarray(gif.convert("RGB"), dtype=np.int16)
            assert np.abs(got - want).mean() < 4, i
            assert gif.info["duration"] == (500 if i == 3 else 100)
    with pytest.raises(ValueError):
        drawing.write_gif(tmp_path / "bad.gif", pictures, [100])
