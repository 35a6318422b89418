"""The CUDA paths, proven on a real GPU (``-m gpu``; skipped where CUDA is absent).

    python3 dev.py test -m gpu -rs      # on a machine with a GPU

Covers what the CPU suite cannot: training steps under bf16 autocast with
``torch.compile``, an NCCL process group (world size 1: one GPU is enough) with an
all-reduce and a DDP step, a one-process torchrun job, exact resume on CUDA, and
sampling parity between CPU and CUDA.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import core as D
from benchmarks.app_server import free_port
from engine import store
from training import loop as T
from test_core import fake_encode, tiny_unet
from test_training import ROOT, TINY_NET, assert_bit_identical, ckpt_tensors, make_tiny_dataset, subprocess_env

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("gpu") / "tiny")


def opts(data, out, run, **kw):
    base = dict(TINY_NET, data_dir=str(data), out_dir=str(out), run_name=run, device="cuda", batch_size=16,
                lr=1e-3, warmup_steps=2, max_steps=12, log_every=1, ckpt_every=6, sample_every=0, seed=5)
    return {**base, **kw}


def test_bf16_compiled_training_steps_on_cuda(data, tmp_path):
    last = T.train(T.make_config("smoke", **opts(data, tmp_path, "compiled", precision="bf16", compile=True)))
    cfg = json.loads((last / store.CONFIG_FILE).read_text())
    assert last.name == "ckpt-0000012"
    assert torch.cuda.get_device_name(0) in cfg["hardware"], cfg["hardware"]  # trained on the GPU, not the CPU
    assert all(torch.isfinite(v).all() for v in store.load_tensors(last / store.WEIGHTS_FILE).values())
    rows = (tmp_path / "compiled" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 12 and all(np.isfinite(losses))


NCCL_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist

dist.init_process_group(backend="nccl", init_method="tcp://127.0.0.1:" + sys.argv[1], world_size=1, rank=0)
torch.cuda.set_device(0)
x = torch.arange(4, device="cuda", dtype=torch.float32) + 1
dist.all_reduce(x, op=dist.ReduceOp.SUM)
gathered = [torch.zeros(4, device="cuda")]
dist.all_gather(gathered, x * 2)
# a DDP step: the gradient all-reduce goes through the same NCCL group
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1, bias=False).cuda(), device_ids=[0])
net(torch.ones(2, 4, device="cuda")).sum().backward()
out = {"backend": dist.get_backend(), "world": dist.get_world_size(), "sum": x.tolist(),
       "gathered": gathered[0].tolist(), "grad": net.module.weight.grad.tolist()}
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_nccl_process_group_on_one_gpu():
    """The NCCL backend for real: a world-size-1 group on one GPU (training makes one only when
    WORLD_SIZE > 1, so the torchrun test below does not), an all-reduce, an all-gather, and a DDP
    step whose gradients are reduced through it. In a subprocess: a process group lives until its
    process ends."""
    proc = subprocess.run([sys.executable, "-c", NCCL_SCRIPT, str(free_port())], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "nccl" and out["world"] == 1, out
    assert out["sum"] == [1.0, 2.0, 3.0, 4.0] and out["gathered"] == [2.0, 4.0, 6.0, 8.0], out
    assert out["grad"] == [[2.0, 2.0, 2.0, 2.0]], out  # d/dw sum(w . 1) over a batch of 2


def test_torchrun_one_process_trains_on_cuda(data, tmp_path):
    """`torchrun --nproc_per_node N diffusion.py train` on CUDA, N = the GPU count (1 here): with one
    process training skips DDP (WORLD_SIZE=1), so this checks the launcher path, not NCCL (above)."""
    o = opts(data, tmp_path, "torchrun", max_steps=4, ckpt_every=4)
    flags = []
    for k, v in o.items():
        flags += [f"--{k}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    n = max(1, torch.cuda.device_count())  # NCCL refuses two ranks on one GPU
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(ROOT / "diffusion.py"), "train", "--preset", "smoke", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert store.latest_checkpoint(tmp_path / "torchrun" / "checkpoints").name == "ckpt-0000004"
    hardware = json.loads((tmp_path / "torchrun" / "checkpoints" / "ckpt-0000004" / store.CONFIG_FILE).read_text())
    assert hardware["hardware"].startswith(f"{n} x "), hardware["hardware"]  # n GPU processes


def test_exact_resume_on_cuda(data, tmp_path):
    straight = T.train(T.make_config("smoke", **opts(data, tmp_path / "a", "run", precision="fp32")))
    T.train(T.make_config("smoke", **opts(data, tmp_path / "b", "run", precision="fp32", stop_at_step=6)))
    resumed = T.train(T.make_config("smoke", **opts(data, tmp_path / "b", "run", precision="fp32")))
    # cuDNN may pick different algorithms between processes; within one, with deterministic settings
    # the resumed run must equal the straight one
    assert resumed.name == straight.name == "ckpt-0000012"
    a, b = ckpt_tensors(straight), ckpt_tensors(resumed)
    try:
        assert_bit_identical(a, b)
    except AssertionError:
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_sampling_parity_cpu_vs_cuda():
    model = tiny_unet()
    kw = dict(num_images=4, num_steps=10, seed=3, guidance_scale=3.0, encode_fn=fake_encode, precision="fp32")
    cpu = D.generate_images(model, D.DiffusionConfig(), "a photo of a goldfish", device="cpu", **kw).images
    cuda = D.generate_images(model.to("cuda"), D.DiffusionConfig(), "a photo of a goldfish", device="cuda",
                             **kw).images
    diff = np.abs(cpu.astype(int) - cuda.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())
