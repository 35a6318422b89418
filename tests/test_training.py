"""Training end to end on a tiny synthetic preprocessed set (no text encoder): the loop.

The loop's pure pieces (batch sharding, the LR schedule, presets, condition noise);
a real tiny run (loss falls, metrics by noise level, TensorBoard, samples);
checkpoints hold what they promise and round-trip; the CLI exports, lists and
samples (same seed, same PNGs), regenerates from a PNG's recipe, and starts a
run from a stored model. The run folder under interruption (exact resume,
Ctrl-C, SIGKILL, a full disk, locks) is in test_training_runs.py, DDP in
test_training_ddp.py; both, and other test files, take their helpers and
fixtures from here.

Everything runs with one torch thread: on a shared 2-core machine this is
several times faster than oversubscribing.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
import torch

from engine import store
from training import loop as T


ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("goldfish", "tabby cat", "school bus", "lemon")
TINY_NET = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=8)


# --------------------------------------------------------------------------- fixtures and helpers
def make_tiny_dataset(root: Path, n_per_class: int = 16, size: int = 16, num_templates: int = 3,
                      seed: int = 0) -> Path:
    """A preprocessed folder as preprocess.py writes it: coloured discs and squares,
    random unit-norm class and template embeddings (no text encoder needed)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 120, 20], [128, 128, 128], [240, 200, 0], [250, 240, 60]], np.uint8)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for c in range(len(CLASSES)):
        for _ in range(n_per_class):
            img = (20 + rng.integers(0, 12, (size, size, 3))).astype(np.uint8)
            r = int(rng.integers(3, 6))
            cy, cx = rng.integers(r, size - r, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if c % 2 == 0 else (
                (abs(yy - cy) <= r) & (abs(xx - cx) <= r))
            img[mask] = colours[c]
            images.append(img)
            labels.append(c)
    images_arr, labels_arr = np.stack(images), np.array(labels, np.int64)
    np.save(root / "train_images.npy", images_arr)
    np.save(root / "train_labels.npy", labels_arr)
    val = np.arange(0, len(labels), n_per_class)  # one image per class
    np.save(root / "val_images.npy", images_arr[val])
    np.save(root / "val_labels.npy", labels_arr[val])
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": n, "names": [n], "prompt": f"a photo of a {n}",
                "count": n_per_class} for i, n in enumerate(CLASSES)]
    (root / "classes.json").write_text(json.dumps({"prompt_template": "a photo of a {}", "classes": classes}))
    emb = rng.standard_normal((len(CLASSES), 384)).astype(np.float32)
    np.save(root / "class_embeddings.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    templ = rng.standard_normal((len(CLASSES), num_templates, 384)).astype(np.float32)
    np.save(root / "template_embeddings.npy", templ / np.linalg.norm(templ, axis=2, keepdims=True))
    (root / "manifest.json").write_text(json.dumps({
        "source": "synthetic test shapes", "layout": "synthetic", "size": size,
        "counts": {"train": len(labels), "val": len(val)}, "num_skipped": 0}))
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def options(data: Path, out: Path, run: str, **kw: Any) -> dict[str, Any]:
    # fp32 unless a test asks otherwise: "auto" means bf16 on CPUs with AVX512-BF16, so the same
    # test would take different numeric paths on different machines.
    kw.setdefault("precision", "fp32")
    return dict(data_dir=str(data), out_dir=str(out), run_name=run, device="cpu", **kw)


def cli_flags(opts: dict[str, Any]) -> list[str]:
    flags = []
    for k, v in opts.items():
        if isinstance(v, bool):
            flags.append(f"--{k}" if v else f"--no-{k}")
        elif isinstance(v, tuple):
            flags += [f"--{k}", ",".join(map(str, v))]
        else:
            flags += [f"--{k}", str(v)]
    return flags


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))


def ckpt_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Weights (model + EMA) and training state (optimizer + RNG) of a checkpoint, in one dict."""
    return {**store.load_tensors(ckpt / store.WEIGHTS_FILE), **store.load_tensors(ckpt / store.STATE_FILE)}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A 60-step run that logs every step and writes samples, a GIF and the loss curve at the end."""
    out = tmp_path_factory.mktemp("runs")
    cfg = T.make_config("smoke", **options(
        tiny_data, out, "tiny", **TINY_NET, dropout=0.0, batch_size=16, lr=2e-3, warmup_steps=5, max_steps=60,
        log_every=1, ckpt_every=20, keep_checkpoints=2, sample_every=60, sample_classes=4, sample_steps=4))
    T.train(cfg)
    return cfg.run_dir


# --------------------------------------------------------------------------- pure pieces
def test_metrics_split_the_loss_by_noise_level(trained):
    """metrics.csv: the loss in four bands of t beside the total; the total (a mean over the same
    images) lies between the bands' means, and uniform t fills every band over a 16-image row."""
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert list(rows[0]) == ["step", "loss", "lr", "images_per_s", "elapsed_s",
                             "loss_t0_250", "loss_t250_500", "loss_t500_750", "loss_t750_1000"]
    filled = 0
    for r in rows:
        bands = [float(r[k]) for k in r if k.startswith("loss_t") and r[k]]
        assert bands, r
        assert min(bands) - 1e-5 <= float(r["loss"]) <= max(bands) + 1e-5, r
        filled += len(bands) == 4
    assert filled >= len(rows) // 2  # 16 uniform draws miss a band now and then, not usually


def test_a_training_run_writes_its_loss_and_samples_for_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the oracle

    acc = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    assert np.allclose([e.value for e in loss], [float(r["loss"]) for r in rows], rtol=1e-5)
    assert {"train/lr", "train/images_per_s", "train/loss_t750_1000"} <= set(acc.Tags()["scalars"])
    assert [i.step for i in acc.Images("samples/grid")] == [60]  # sample_every=60 in the fixture run


def test_batch_indices_shard_the_data_disjointly_and_deterministically():
    n, batch, world, seed = 70, 4, 3, 5
    per_rank = n // world
    steps_per_epoch = per_rank // batch
    for epoch in (0, 1):
        seen = [np.concatenate([T.batch_indices(n, epoch * steps_per_epoch + s, batch, r, world, seed)
                                for s in range(steps_per_epoch)]) for r in range(world)]
        every = np.concatenate(seen)
        assert len(every) == len(set(every.tolist())) == world * steps_per_epoch * batch  # no image twice an epoch
        assert every.min() >= 0 and every.max() < n
    np.testing.assert_array_equal(T.batch_indices(n, 3, batch, 1, world, seed),
                                  T.batch_indices(n, 3, batch, 1, world, seed))
    assert not np.array_equal(T.batch_indices(n, 0, batch, 0, world, seed),
                              T.batch_indices(n, steps_per_epoch, batch, 0, world, seed))  # new epoch, new order
    with pytest.raises(ValueError, match="smaller than one batch"):
        T.batch_indices(8, 0, 4, 0, 4, 0)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = T.make_config("smoke", lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert T.lr_at(cfg, 0) == pytest.approx(1e-4)
    assert T.lr_at(cfg, 9) == pytest.approx(1e-3)
    assert T.lr_at(cfg, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert T.lr_at(cfg, 110) == pytest.approx(1e-4)
    lrs = [T.lr_at(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_presets_and_config_validation():
    assert {"smoke", "default", "imagenet64"} <= set(T.PRESETS)
    from models import ConditionalUNet, count_parameters

    n = count_parameters(ConditionalUNet(T.make_config("default").unet_config(32)))
    assert 3e6 < n < 6e6, n  # the speedrun's winner (~4.2M; default_model has the older 7.1M net)
    big = T.make_config("imagenet64")
    assert big.compile and big.channels_last and big.precision == "auto" and big.batch_size >= 256
    assert 0.1 <= T.make_config("default").cond_drop_prob <= 0.2
    with pytest.raises(ValueError, match="unknown training options"):
        T.make_config("smoke", no_such_option=1)
    with pytest.raises(ValueError, match="unknown preset"):
        T.make_config("nope")


def test_condition_noise_keeps_unit_length_at_the_chosen_distance_and_is_off_by_default():
    """--cond_noise: each example's text embedding is moved by noise of about that norm and
    renormalised (cosine about 1 / sqrt(1 + noise^2) to the text); the default adds none."""
    g = torch.Generator().manual_seed(0)
    cond = torch.nn.functional.normalize(torch.randn(512, 384, generator=g), dim=1)
    for noise in (0.5, 0.75, 1.5):
        out = T.noisy_condition(cond, noise, torch.Generator().manual_seed(1))
        assert out.shape == cond.shape and torch.allclose(out.norm(dim=1), torch.ones(512), atol=1e-5)
        cosine = (out * cond).sum(1)
        assert abs(cosine.mean().item() - (1 + noise ** 2) ** -0.5) < 0.02, (noise, cosine.mean())
        assert cosine.std() < 0.05  # each example about as far: noise of a fixed norm, not a lottery
    assert T.make_config("default").cond_noise == 0.0
    with pytest.raises(ValueError, match="cond_noise"):
        T.make_config("default", cond_noise=-0.1)


# --------------------------------------------------------------------------- a real (tiny) run
def test_loss_falls_and_periodic_outputs_are_written(trained):
    rows = metric_rows(trained)
    assert list(rows[0])[:5] == ["step", "loss", "lr", "images_per_s", "elapsed_s"]  # then the loss by t
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    loss = np.array([float(r["loss"]) for r in rows])
    assert np.isfinite(loss).all()
    first, last = loss[:10].mean(), loss[-10:].mean()
    assert last < 0.75 * first, f"loss did not fall: first 10 steps {first:.4f}, last 10 {last:.4f}"
    assert float(rows[0]["lr"]) == pytest.approx(2e-3 / 5, rel=1e-3)  # warmup
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    samples = trained / "samples"
    with Image.open(samples / "grid_0000060.png") as grid:  # a grid of 16 px samples, not a blank image
        g = np.asarray(grid.convert("RGB"))
        assert g.shape[0] >= 16 and g.shape[1] >= 2 * 16 and g.std() > 5
    with Image.open(samples / "denoise_0000060.gif") as gif:  # frames of the denoising, not one still
        assert gif.n_frames > 1
    with Image.open(trained / "loss_curve.png") as curve:  # a plot, wider than tall
        assert curve.size[0] > curve.size[1] > 100
    assert json.loads((trained / "train_config.json").read_text())["max_steps"] == 60
    # keep-last-K: checkpoints at 20, 40, 60 with keep_checkpoints=2
    assert [p.name for p in store.checkpoint_dirs(trained / "checkpoints")] == ["ckpt-0000040", "ckpt-0000060"]


def test_checkpoint_contents_and_round_trip(trained, tmp_path):
    from models import ConditionalUNet, UNetConfig

    ckpt = store.latest_checkpoint(trained / "checkpoints")
    cfg = json.loads((ckpt / store.CONFIG_FILE).read_text())
    assert cfg["step"] == 60 and cfg["images_seen"] == 60 * 16
    assert cfg["image_size"] == 16
    assert cfg["unet"]["base_channels"] == 16 and cfg["unet"]["channel_mult"] == [1, 2]
    assert cfg["diffusion"]["beta_schedule"] == "cosine"
    assert cfg["diffusion"]["prediction_type"] == "v_prediction"
    assert cfg["text_model"].endswith("all-MiniLM-L6-v2")
    assert [c["name"] for c in cfg["classes"]] == list(CLASSES)
    assert cfg["data"]["num_images"] == 64 and cfg["train"]["batch_size"] == 16
    assert "param_groups" in cfg["optimizer"] and cfg["hardware"] and cfg["parameters"] > 0
    tensors = ckpt_tensors(ckpt)
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    assert any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    assert not any(torch.equal(tensors[k], tensors["ema." + k[6:]]) for k in tensors
                   if k.startswith("model.") and k.endswith("conv1.weight"))  # EMA really lags

    # load into fresh objects, save again, reload: identical tensors
    unet_cfg = UNetConfig.from_dict(cfg["unet"])
    model, ema = ConditionalUNet(unet_cfg), ConditionalUNet(unet_cfg)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.ndim >= 2]},
                                   {"params": [p for p in model.parameters() if p.ndim < 2]}])
    state = store.load_checkpoint(ckpt, model, ema, optimizer)
    assert state.step == 60
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors["model." + k])
    for k, v in ema.state_dict().items():
        assert torch.equal(v, tensors["ema." + k])
    again = store.save_checkpoint(tmp_path / "ckpts", state.step, model, ema, optimizer,
                                  {k: v for k, v in state.config.items() if k not in ("step", "optimizer")},
                                  rng=state.rng)
    assert_bit_identical(ckpt_tensors(again), tensors)
    assert json.loads((again / store.CONFIG_FILE).read_text())["optimizer"] == cfg["optimizer"]
    # sampling code loads a checkpoint folder as a model: the EMA weights
    lm = store.load_model(ckpt)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, tensors["ema." + k])


# --------------------------------------------------------------------------- the command line
def test_cli_train_help_lists_every_option(capsys):
    import diffusion as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    from dataclasses import fields

    missing = [f.name for f in fields(T.TrainConfig) if f"--{f.name}" not in text]
    assert not missing
    for preset in ("smoke", "default", "imagenet64"):
        assert preset in text


def test_cli_without_data_says_how_to_create_it(tmp_path, capsys):
    import diffusion as cli

    assert cli.main(["--data_dir", str(tmp_path / "missing"), "--max_steps", "1"]) == 2  # no subcommand = train
    err = capsys.readouterr().err
    assert "python preprocess.py" in err and str(tmp_path / "missing") in err


@pytest.mark.slow
def test_cli_export_list_and_sample(trained, tmp_path, capsys):
    import diffusion as cli
    from engine.recipe import read_png_recipe

    model_dir = tmp_path / "store"
    assert cli.main(["export", str(trained), "--name", "tiny", "--store", str(model_dir)]) == 0
    folder = model_dir / "tiny"
    assert {p.name for p in folder.iterdir()} == {store.WEIGHTS_FILE, store.CONFIG_FILE, store.CARD_FILE}
    assert all(v.dtype == torch.float16 for v in store.load_tensors(folder / store.WEIGHTS_FILE).values())
    card = (folder / store.CARD_FILE).read_text()
    assert "# tiny" in card and "goldfish" in card and "| training steps | 60" in card and "hardware" in card
    assert cli.main(["export", "tiny", "--out_dir", str(trained.parent), "--name", "tiny",
                     "--store", str(model_dir)]) == 2  # exists, no --overwrite
    # A re-export keeps the evaluation's classifier and appends the notes to the card.
    (folder / "classifier.json").write_text("{}")
    (tmp_path / "notes.md").write_text("## Figures\n\nsee the grid\n")
    assert cli.main(["export", str(trained), "--name", "tiny", "--store", str(model_dir), "--overwrite",
                     "--notes", str(tmp_path / "notes.md")]) == 0
    assert (folder / "classifier.json").exists() and "## Figures" in (folder / store.CARD_FILE).read_text()
    capsys.readouterr()
    assert cli.main(["list", "--store", str(model_dir)]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "16px" in listed and "4 classes" in listed

    # Two processes, same seed: the same pixels.
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "diffusion.py"), "sample", "--model", "tiny",
                               "--store", str(model_dir), "--class", "goldfish", "--n", "2", "--steps", "5",
                               "--seed", "3", "--out", str(out), "--gif", "--device", "cpu"],
                              cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for out in outs]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    from PIL import Image

    pixels = []
    for out in outs:
        pngs = sorted(p for p in out.glob("*.png") if not p.name.endswith("_grid.png"))
        assert len(pngs) == 2
        assert len(list(out.glob("*_grid.png"))) == 1 and len(list(out.glob("*_denoise.gif"))) == 1
        recipes = [read_png_recipe(p) for p in pngs]
        assert [r["seed"] for r in recipes] == [3, 4]
        assert all(r["prompt"] == "a photo of a goldfish" and r["steps"] == 5 and r["sampler"] == "dpm++"
                   and r["model"] == "tiny" for r in recipes)
        pixels.append([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
        assert pixels[-1][0].shape == (16, 16, 3)
    for x, y in zip(*pixels):
        np.testing.assert_array_equal(x, y)


def test_cli_variations_img2img_and_from_png_regenerate_exactly(trained, tmp_path, capsys):
    import diffusion as cli
    from PIL import Image

    from engine.recipe import read_png_recipe

    store_dir = tmp_path / "store"
    assert cli.main(["export", str(trained), "--name", "tiny", "--store", str(store_dir)]) == 0
    base = ["--model", "tiny", "--store", str(store_dir), "--steps", "5"]

    def pngs(out: Path) -> list[Path]:
        return sorted(p for p in out.glob("*.png") if not p.name.endswith("_grid.png"))

    def pixels(p: Path) -> np.ndarray:
        return np.asarray(Image.open(p).convert("RGB"))

    assert cli.main(["sample", *base, "--class", "goldfish", "--n", "2", "--seed", "3", "--variation-seed", "40",
                     "--variation-strength", "0.4", "--out", str(tmp_path / "var")]) == 0
    var = pngs(tmp_path / "var")
    recipes = [read_png_recipe(p) for p in var]
    assert [(r["seed"], r["variation_seed"], r["variation_strength"]) for r in recipes] == [(3, 40, 0.4), (4, 41, 0.4)]
    # the second image, regenerated from its PNG alone (a batch of one, every setting from the recipe)
    assert cli.main(["sample", "--from-png", str(var[1]), "--store", str(store_dir), "--out", str(tmp_path / "re")]) == 0
    again = pngs(tmp_path / "re")
    assert len(again) == 1
    np.testing.assert_array_equal(pixels(again[0]), pixels(var[1]))
    assert read_png_recipe(again[0]) == recipes[1]

    # img2img from the first image; its PNG regenerates only with the same init image
    assert cli.main(["sample", *base, "--prompt", "a photo of a lemon", "--n", "1", "--seed", "9", "--init-image",
                     str(var[0]), "--strength", "0.5", "--out", str(tmp_path / "i2i")]) == 0
    i2i = pngs(tmp_path / "i2i")[0]
    r = read_png_recipe(i2i)
    assert r["strength"] == 0.5 and r["init_image"] == var[0].name and r["prompt"] == "a photo of a lemon"
    capsys.readouterr()
    assert cli.main(["sample", "--from-png", str(i2i), "--store", str(store_dir), "--out", str(tmp_path / "x")]) == 2
    assert "pass the same image with --init-image" in capsys.readouterr().err
    assert cli.main(["sample", "--from-png", str(i2i), "--init-image", str(var[0]), "--store", str(store_dir),
                     "--out", str(tmp_path / "i2i_again")]) == 0
    np.testing.assert_array_equal(pixels(pngs(tmp_path / "i2i_again")[0]), pixels(i2i))

    # snapping toward the classes: recorded, regenerated exactly, and not the unsnapped image
    for name, extra in (("plain", []), ("snap", ["--snap", "0.8"])):
        assert cli.main(["sample", *base, "--prompt", "a small orange fish in a bowl", "--n", "1", "--seed", "5",
                         *extra, "--out", str(tmp_path / name)]) == 0
    snapped = pngs(tmp_path / "snap")[0]
    assert read_png_recipe(snapped)["snap"] == 0.8 and "snap" not in read_png_recipe(pngs(tmp_path / "plain")[0])
    assert not np.array_equal(pixels(snapped), pixels(pngs(tmp_path / "plain")[0]))
    assert cli.main(["sample", "--from-png", str(snapped), "--store", str(store_dir),
                     "--out", str(tmp_path / "snap_again")]) == 0
    np.testing.assert_array_equal(pixels(pngs(tmp_path / "snap_again")[0]), pixels(snapped))

    # clear errors: a PNG with no recipe, a missing file, half a variation, strength without an image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    for argv, msg in ((["--from-png", str(tmp_path / "plain.png")], "has no generation recipe"),
                      (["--from-png", str(tmp_path / "nope.png")], "no such file"),
                      ([*base, "--class", "goldfish", "--variation-seed", "4"], "go together"),
                      ([*base, "--class", "goldfish", "--strength", "0.5"], "needs --init-image"),
                      ([*base, "--class", "goldfish", "--init-image", str(tmp_path / "nope.png")], "no such file"),
                      ([*base, "--class", "goldfish", "--snap", "1.5"], "--snap needs a strength")):
        assert cli.main(["sample", *argv, "--store", str(store_dir), "--out", str(tmp_path / "err")]) == 2, argv
        assert msg in capsys.readouterr().err, argv


def test_init_from_a_store_model_continues_its_weights_and_totals(trained, tiny_data, tmp_path):
    """A new run started --init_from a shipped model begins at that model's EMA weights
    (fp16 in the store), counts its images and minutes on, and refuses another network (dropout aside)."""
    import diffusion as cli

    assert cli.main(["export", str(trained), "--name", "tiny", "--store", str(tmp_path / "store")]) == 0
    source = tmp_path / "store" / "tiny"
    shipped = {k: v for k, v in store.load_tensors(source / store.WEIGHTS_FILE).items()}
    prior = json.loads((source / store.CONFIG_FILE).read_text())
    # Zero steps of training: the saved checkpoint is exactly the starting point.
    opts = options(tiny_data, tmp_path, "continued", **TINY_NET, dropout=0.0, batch_size=16, max_steps=1,
                   stop_at_step=1, lr=0.0, warmup_steps=0, sample_every=0, init_from=str(source))
    last = T.train(T.make_config("smoke", **opts))
    got = store.load_tensors(last / store.WEIGHTS_FILE)
    for prefix in ("model.", "ema."):  # one step at lr 0 moves neither the network nor its EMA
        for k, v in shipped.items():
            torch.testing.assert_close(got[prefix + k].float(), v.float(), rtol=0, atol=1e-6)
    meta = json.loads((last / store.CONFIG_FILE).read_text())
    assert meta["images_seen"] == prior["images_seen"] + 16
    assert meta["train_seconds"] >= prior["train_seconds"]

    wider = dict(opts, run_name="wider", base_channels=24)
    with pytest.raises(ValueError, match="network"):
        T.train(T.make_config("smoke", **wider))
    # Dropout holds no weights: a run may add it to a network trained without, from the same weights.
    last = T.train(T.make_config("smoke", **dict(opts, run_name="with_dropout", dropout=0.1)))
    got = store.load_tensors(last / store.WEIGHTS_FILE)
    for k, v in shipped.items():
        torch.testing.assert_close(got["ema." + k].float(), v.float(), rtol=0, atol=1e-6)

    # Another cond_scale is the same network reparameterised: the run starts at the same function
    # (the text layer's weight rescaled), conditioned and unconditioned alike.
    last = T.train(T.make_config("smoke", **dict(opts, run_name="rescaled", cond_scale=8.0)))
    before = store.load_model(source, model_type=None).model.float().eval()
    after = store.load_model(last, model_type=None).model.float().eval()
    assert (before.config.cond_scale, after.config.cond_scale) == (1.0, 8.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, before.config.image_size, before.config.image_size, generator=g)
    cond = torch.randn(4, before.config.cond_dim, generator=g)
    t, drop = torch.tensor([5, 300, 600, 990]), torch.tensor([False, True, False, True])
    with torch.no_grad():
        torch.testing.assert_close(after(x, t, cond, drop), before(x, t, cond, drop), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(before(x, t, cond * 8.0), before(x, t, cond), atol=1e-3)  # the scale matters

    # A model saved before a network field existed (tiny200's config has no emb_dim) is the same
    # network as a run that leaves that field at its default.
    old = json.loads((source / store.CONFIG_FILE).read_text())
    assert old["unet"].pop("emb_dim") == 0
    (source / store.CONFIG_FILE).write_text(json.dumps(old))
    T.train(T.make_config("smoke", **dict(opts, run_name="continued_old")))
