"""DDP: `torchrun --nproc_per_node 2 diffusion.py train` on gloo averages gradients like one process.

Helpers come from test_training.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import store
from test_training import (
    ROOT,
    TINY_NET,
    cli_flags,
    make_tiny_dataset,
    metric_rows,
    one_thread,  # noqa: F401 - the module-wide one-thread fixture (autouse)
    options,
    subprocess_env,
)
from training import loop as T


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
