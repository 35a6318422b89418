"""Training end to end on a tiny synthetic preprocessed set (no text encoder).

Loss falls; checkpoints hold what they promise and round-trip; N steps plus a
resume of N steps equals 2N steps bit for bit; 2 processes train with DDP on
gloo; Ctrl-C saves; a SIGKILL in the middle of a checkpoint write, plus torn
and half-written checkpoint folders, never get loaded and cost at most one
checkpoint interval; the CLI exports, lists and samples (same seed, same PNGs).

Everything runs with one torch thread: on a shared 2-core machine this is
several times faster than oversubscribing.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
import torch

from engine import store
from training import loop as T
from training import run_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("goldfish", "tabby cat", "school bus", "lemon")
TINY_NET = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=8)
# The run that exact resume, SIGKILL recovery and the DDP test compare against. Dropout,
# random templates, condition dropout and an epoch boundary (64 images / batch 8) all
# take part, so any random draw that is not re-seeded per step would show up.
REF = dict(TINY_NET, dropout=0.1, batch_size=8, lr=1e-3, warmup_steps=4, max_steps=16, ema_decay=0.9, seed=7,
           sample_every=0, log_every=1)


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


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"training exited (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """REF trained for 16 steps without a break; checkpoints every 4 steps."""
    out = tmp_path_factory.mktemp("ref")
    cfg = T.make_config("smoke", **options(tiny_data, out, "ref", ckpt_every=4, keep_checkpoints=10, **REF))
    last = T.train(cfg)
    assert last.name == "ckpt-0000016"
    return cfg.run_dir


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


def test_a_full_disk_stops_before_a_checkpoint_and_keeps_the_last_one(tiny_data, tmp_path, monkeypatch):
    """No checkpoint is started that cannot fit: the run stops with a clear error, the previous
    checkpoint stays whole, and the same command resumes once there is room."""
    opts = options(tiny_data, tmp_path, "full", **TINY_NET, batch_size=8, max_steps=4, ckpt_every=2, sample_every=0,
                   report_to="none")
    T.train(T.make_config("smoke", **dict(opts, stop_at_step=2)))
    ckpts = tmp_path / "full" / "checkpoints"
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002"]
    real = run_folder.shutil.disk_usage
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(T.DiskSpaceError, match="MB free"):
        T.train(T.make_config("smoke", **opts))
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002"]
    assert T.latest_checkpoint_usable(ckpts).name == "ckpt-0000002"
    monkeypatch.setattr(run_folder.shutil, "disk_usage", real)
    T.train(T.make_config("smoke", **opts))
    assert store.checkpoint_dirs(ckpts)[-1].name == "ckpt-0000004"


def test_a_metrics_file_from_before_the_bands_gets_the_new_header_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,lr,images_per_s,elapsed_s\n10,0.5,1e-3,9.0,1.0\n20,0.4,1e-3,9.0,2.0\n30,0.3")
    header = run_folder.metrics_header(1000)
    run_folder.truncate_metrics(path, 20, header)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == header and [r["step"] for r in rows] == ["10", "20"]
    assert rows[1]["loss"] == "0.4" and rows[1]["loss_t750_1000"] == ""


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


def test_exact_resume_n_plus_n_equals_2n(tiny_data, tmp_path, reference_run):
    opts = options(tiny_data, tmp_path, "halves", ckpt_every=4, keep_checkpoints=10, **REF)
    first = T.train(T.make_config("smoke", **opts, stop_at_step=8))  # same max_steps: same LR schedule
    assert first.name == "ckpt-0000008"
    ckpts = tmp_path / "halves" / "checkpoints"
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000004", "ckpt-0000008"]
    assert_bit_identical(ckpt_tensors(first), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000008"))

    second = T.train(T.make_config("smoke", **opts))  # resume="auto" continues from ckpt-0000008
    assert second.name == "ckpt-0000016"
    assert_bit_identical(ckpt_tensors(second), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000016"))
    rows = metric_rows(tmp_path / "halves")
    assert [int(r["step"]) for r in rows] == list(range(1, 17))
    assert [r["loss"] for r in rows] == [r["loss"] for r in metric_rows(reference_run)]
    cfg = json.loads((second / store.CONFIG_FILE).read_text())
    assert cfg["images_seen"] == 16 * 8


# --------------------------------------------------------------------------- processes
# Trains through `diffusion.py train` (training/ untouched) and, on every rank, saves that rank's
# final model weights (safetensors) and the examples it saw at each step. Under torchrun each
# rank has its shard; alone (WORLD_SIZE unset) batch_indices is patched to return the union of
# both ranks' shards, so the single process sees the same global batch. training.train seeds
# timesteps and noise per (seed, step, rank), which no 1-process run can reproduce, so here they
# are made a function of the example instead (its crc32), wrapped around the base task's per_sample_loss; flips
# are drawn per rank too, so the test data is left-right symmetric (a flip changes nothing).
_DDP_PROBE = """
import json, os, sys, zlib
import numpy as np
import torch
from safetensors.torch import save_file
from training import loop as T, tasks

flags, out = json.loads(sys.argv[1]), sys.argv[2]
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
torch.set_num_threads(1)
seen, captured = [], {}

def key(img):
    return zlib.crc32(((img.float() + 1) * 127.5).round().to(torch.uint8).contiguous().numpy().tobytes())

_loss = tasks.per_sample_loss  # as the base task looks it up
def per_sample_loss(model, terms, x0, cond, **kw):
    keys = [key(img) for img in x0]
    seen.append(keys)
    kw["t"] = torch.tensor([k % terms.num_train_timesteps for k in keys])
    kw["noise"] = torch.cat([torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(k))
                             for k in keys])
    return _loss(model, terms, x0, cond, **kw)
tasks.per_sample_loss = per_sample_loss

if world == 1:
    _indices = T.batch_indices
    T.batch_indices = lambda n, step, batch, rank, world, seed: np.concatenate(
        [_indices(n, step, batch // 2, r, 2, seed) for r in range(2)])

_ema = T.update_ema
def update_ema(ema, model, step, decay):
    captured["model"] = model
    _ema(ema, model, step, decay)
T.update_ema = update_ema

import diffusion  # the real entry point: `torchrun diffusion.py train ...`, with the hooks above in place
assert diffusion.main(["train", "--preset", "smoke", *flags]) == 0
state = {k: v.detach().contiguous().clone() for k, v in captured["model"].state_dict().items()}
save_file(state, os.path.join(out, f"world{world}-rank{rank}.safetensors"))
with open(os.path.join(out, f"world{world}-rank{rank}.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow
def test_ddp_synchronises_gradients_like_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 diffusion.py train` writes a normal run, and DDP really averages
    gradients: after 6 steps (a) both ranks hold bit-identical weights although every step their
    local batches are disjoint, and (b) they equal a single process trained on the same global
    batch (the union of the two shards) with the same per-example timesteps and noise, within
    float tolerance."""
    from safetensors.torch import load_file

    data = make_tiny_dataset(tmp_path / "sym")
    images = np.load(data / "train_images.npy")
    half = images.shape[2] // 2
    images[:, :, half:] = images[:, :, :half][:, :, ::-1]  # left-right symmetric: flips are no-ops
    np.save(data / "train_images.npy", images)
    script = tmp_path / "ddp_probe.py"
    script.write_text(_DDP_PROBE)
    out = tmp_path / "out"
    out.mkdir()
    common = dict(**TINY_NET, dropout=0.0, cond_drop_prob=0.0, random_templates=False, batch_size=8,
                  lr=1e-3, warmup_steps=1, max_steps=6, log_every=1, ckpt_every=6, sample_every=0, seed=3)
    runs = {
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
            json.dumps(cli_flags(options(data, tmp_path, "ddp2", **common))), str(out)],
        1: [sys.executable, str(script), json.dumps(cli_flags(options(data, tmp_path, "ddp1", **common))), str(out)],
    }
    for cmd in runs.values():
        env = {k: v for k, v in subprocess_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    seen = {name: json.loads((out / f"{name}.json").read_text()) for name in ("world2-rank0", "world2-rank1",
                                                                             "world1-rank0")}
    assert [len(v) for v in seen.values()] == [6, 6, 6]
    for r0, r1, single in zip(seen["world2-rank0"], seen["world2-rank1"], seen["world1-rank0"]):
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)  # the ranks' local batches differ
        assert single == r0 + r1 and len(set(single)) == 8  # the single process: the same global batch

    w0, w1, single = (load_file(out / f"{n}.safetensors") for n in ("world2-rank0", "world2-rank1", "world1-rank0"))
    assert sorted(w0) == sorted(w1) == sorted(single)
    differ = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not differ, f"ranks hold different weights after training: {differ[:5]}"
    from models import ConditionalUNet

    with torch.random.fork_rng():
        torch.manual_seed(common["seed"])  # as train() builds the model
        init = ConditionalUNet(T.make_config("smoke", **common).unet_config(16)).state_dict()
    flat = lambda w: torch.cat([w[k].flatten() for k in sorted(w)])  # noqa: E731
    moved = flat(single) - flat(init)
    diff = flat(w0) - flat(single)
    assert float(moved.abs().max()) > 1e-3  # training really moved the weights
    # Not elementwise: a parameter whose exact gradient is zero (a conv bias feeding a
    # GroupNorm that removes it) gets only float-rounding gradients, which differ with the
    # summation order (all-reduce of two halves vs one batch of 8); AdamW divides them by
    # their own RMS and moves such a weight by up to ~lr either way. Measured: the DDP and
    # single-process weights differ by 8e-4 of the training update (norm), 0.02% of entries
    # by more than 1e-5; without the all-reduce, 0.74 and 98%.
    assert float(diff.norm() / moved.norm()) < 1e-2, float(diff.norm() / moved.norm())
    assert float((diff.abs() > 1e-5).float().mean()) < 0.01
    losses = [float(r["loss"]) for r in metric_rows(tmp_path / "ddp2")]
    assert len(losses) == 6 and np.isfinite(losses).all()
    # the logged loss (mean over ranks) is the single process's loss over the same 8 examples
    np.testing.assert_allclose(losses, [float(r["loss"]) for r in metric_rows(tmp_path / "ddp1")], rtol=0, atol=3e-6)
    # and the run folder torchrun wrote, as `torchrun diffusion.py train` users get it
    last = store.latest_checkpoint(tmp_path / "ddp2" / "checkpoints")
    assert last.name == "ckpt-0000006"
    cfg = json.loads((last / store.CONFIG_FILE).read_text())
    assert cfg["hardware"].startswith("2 process(es)")
    assert cfg["images_seen"] == 6 * 8  # batch_size is global: 4 per process
    assert [int(r["step"]) for r in metric_rows(tmp_path / "ddp2")] == list(range(1, 7))
    assert all(torch.isfinite(v).all() for v in store.load_tensors(last / store.WEIGHTS_FILE).values())


@pytest.mark.slow
def test_ctrl_c_saves_before_exiting(tiny_data, tmp_path):
    opts = options(tiny_data, tmp_path, "ctrlc", **TINY_NET, dropout=0.0, batch_size=8, max_steps=100_000,
                   log_every=1, ckpt_every=100_000, sample_every=0)
    proc = subprocess.Popen([sys.executable, str(ROOT / "diffusion.py"), "train", "--preset", "smoke",
                             *cli_flags(opts)], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "ctrlc"
    wait_for(lambda: (run / "metrics.csv").exists() and len(metric_rows(run)) >= 3, proc, 120, "3 logged steps")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    last_logged = int(metric_rows(run)[-1]["step"])
    last = store.latest_checkpoint(run / "checkpoints")
    assert last is not None and last.name == f"ckpt-{last_logged:07d}", out[-2000:]
    assert T.latest_checkpoint_usable(run / "checkpoints") == last


# Runs `python diffusion.py train` with save_file slowed down at one checkpoint, so the
# SIGKILL deterministically lands in the middle of writing it.
_SLOW_SAVE = """
import os, sys, time
from engine import store as model_store
_save = model_store.save_file
def save_file(tensors, filename, *a, **k):
    _save(tensors, filename, *a, **k)
    if os.environ["KILL_AT"] in filename:
        open(os.environ["KILL_MARK"], "w").close()
        time.sleep(120)
model_store.save_file = save_file
import diffusion as cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_then_resume(tiny_data, tmp_path, reference_run, caplog):
    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    mark = tmp_path / "writing"
    opts = options(tiny_data, tmp_path, "killed", ckpt_every=2, keep_checkpoints=3, **REF)
    env = dict(subprocess_env(), KILL_AT=".tmp-ckpt-0000006-", KILL_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, "train", "--preset", "smoke", *cli_flags(opts)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(mark.exists, proc, 120, "the checkpoint write at step 6")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The half-written step-6 checkpoint never looks complete.
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002", "ckpt-0000004"]
    assert list(ckpts.glob(".tmp-ckpt-0000006-*"))
    last_logged = int(metric_rows(run)[-1]["step"])
    usable = T.latest_checkpoint_usable(ckpts)
    assert usable.name == "ckpt-0000004"
    assert last_logged - store.checkpoint_step(usable) <= 2  # at most one checkpoint interval lost
    assert_bit_identical(ckpt_tensors(usable), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000004"))

    # Worse damage, as a filesystem without atomic renames or a full disk leaves it:
    # the newest complete-looking checkpoint torn, one with half-written JSON, a stray temp folder.
    weights = ckpts / "ckpt-0000004" / store.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bogus = ckpts / "ckpt-0000005"
    bogus.mkdir()
    (bogus / store.CONFIG_FILE).write_text('{"step": 5, "unet": {')
    for name in (store.WEIGHTS_FILE, store.STATE_FILE):
        (bogus / name).write_bytes(b"")
    (ckpts / ".tmp-ckpt-0000008-12345").mkdir()
    (ckpts / ".tmp-ckpt-0000008-12345" / store.WEIGHTS_FILE).write_bytes(b"\x00" * 100)
    assert T.latest_checkpoint_usable(ckpts).name == "ckpt-0000002"

    # Resume (same command): continues from step 2 and ends exactly where the unbroken run did.
    with caplog.at_level(logging.INFO, logger="train"):
        last = T.train(T.make_config("smoke", **opts))
    assert f"resumed from {ckpts / 'ckpt-0000002'} at step 2" in caplog.text
    assert last.name == "ckpt-0000016"
    assert_bit_identical(ckpt_tensors(last), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000016"))
    assert not list(ckpts.glob(".tmp-ckpt-*"))  # leftovers cleaned up
    assert len(list(ckpts.glob(".unusable-ckpt-*"))) == 2  # damaged ones set aside, not pruned over good ones
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000012", "ckpt-0000014", "ckpt-0000016"]
    assert [int(r["step"]) for r in metric_rows(run)] == list(range(1, 17))  # lost steps' rows replaced


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


def test_a_second_writer_of_a_run_is_refused(tiny_data, tmp_path, capsys):
    """Two trainings on one run folder would write the same checkpoints: the second is refused, clearly."""
    opts = options(tiny_data, tmp_path, "busy", **TINY_NET, dropout=0.0, batch_size=8, max_steps=2, sample_every=0)
    run = tmp_path / "busy"
    with T.run_lock(run):  # another process's lock: flock conflicts across open() calls, even in one process
        with pytest.raises(T.RunLockedError, match=r"already writing .*busy"):
            T.train(T.make_config("smoke", **opts))
        import diffusion as cli

        assert cli.main(["train", "--preset", "smoke", *cli_flags(opts)]) == 2
        assert "another training process" in capsys.readouterr().err
        assert not (run / "checkpoints").exists() and not (run / "metrics.csv").exists()  # it touched nothing
    assert T.train(T.make_config("smoke", **opts)).name == "ckpt-0000002"  # free again once released


def test_run_lock_is_released_when_its_holder_is_killed(tmp_path):
    """A crashed trainer never leaves a stale lock (the kernel drops it with the process)."""
    run = tmp_path / "crashed"
    code = ("import sys, time; from training.loop import run_lock; cm = run_lock(__import__('pathlib').Path(sys.argv[1])); "
            "cm.__enter__(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(T.RunLockedError, match=f"pid {proc.pid}"):
            with T.run_lock(run):
                pass
    finally:
        proc.kill()
        proc.wait()
    with T.run_lock(run):
        pass


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
    (fp16 in the store), counts its images and minutes on, and refuses another network."""
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
