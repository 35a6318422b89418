#!/usr/bin/env python3
"""Group norm under bf16 autocast on a CPU: PyTorch's own against ``models.modules.GroupNorm32``.

    python -m benchmarks.bench_groupnorm [--model tiny200] [--images 4] [--batch 32] [--rounds 5] [--threads 2]
                                         [--log benchmarks/results/groupnorm.txt]

Under bf16 autocast a CPU convolution hands back a bf16 tensor in channels-last layout, and
``torch.nn.functional.group_norm`` is slow on exactly those. ``GroupNorm32`` normalises such a
tensor in fp32 (keeping its layout) and leaves fp32 inputs to ``nn.GroupNorm``. Timed, interleaved
round by round so the machine's noise hits both alike (median seconds, the ratio per round):

* the op alone on the shapes of the store model's network, bf16 channels-last input;
* the network's forward on ``--images`` images in bf16 (what a Live redraw runs four times);
* one bf16 training step on a batch of ``--batch`` (forward, loss, backward, AdamW).

The same network and weights each time, its norms swapped between the two classes. fp32 results
are bit-identical by construction (``tests/test_core.py`` checks it); in bf16 the two give the same
outputs here too (PyTorch's bf16 kernel takes its statistics in fp32 as well).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.benchlog import tee_stdout
from engine import store
from models.modules import GroupNorm32


def use_norm(model: nn.Module, cls: type) -> None:
    """Swap every group norm of ``model`` to ``cls`` (same parameters: both are nn.GroupNorm)."""
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.__class__ = cls


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitives, allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200", help="a store model: its network's layout")
    p.add_argument("--store", default=None)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    torch.set_num_threads(args.threads)
    lm = store.load_model(args.model, store=args.store, device="cpu")
    net = lm.model.float()
    size = lm.image_size
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = "AVX512-BF16" if "avx512_bf16" in flags else ("AMX" if "amx" in flags else "no native bf16 (AVX2)")
    print(f"{args.model}'s network, {size} px; {args.threads} threads, {os.cpu_count()} CPUs ({isa}); "
          f"torch {torch.__version__}; {platform.python_version()}")

    shapes = sorted({(args.images, m.num_channels, s) for m, s in norm_shapes(net, size, args.images)})
    g = torch.Generator().manual_seed(0)
    cond = F.normalize(torch.randn(args.batch, 384, generator=g), dim=1)
    x_img = torch.randn(args.images, 3, size, size, generator=g)
    t_img = torch.full((args.images,), 500)
    x_train = torch.randn(args.batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    t_train = torch.randint(0, 1000, (args.batch,), generator=g)
    extra = {"guidance": torch.full((args.images,), 6.0)} if net.config.guidance_embed else {}
    extra_train = {"guidance": torch.full((args.batch,), 6.0)} if net.config.guidance_embed else {}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)

    def forward():
        with torch.inference_mode(), autocast:
            net(x_img, t_img, cond[:args.images], None, **extra)

    def train_step():
        with autocast:
            loss = net(x_train, t_train, cond, None, **extra_train).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for label, cls in (("nn.GroupNorm", nn.GroupNorm), ("GroupNorm32", GroupNorm32)):
            use_norm(net, cls)
            for (n, c, s) in shapes:
                xb = torch.randn(n, c, s, s, generator=g).to(torch.bfloat16).contiguous(
                    memory_format=torch.channels_last)
                norm = cls(max(k for k in range(1, 33) if c % k == 0), c, eps=1e-6)
                with torch.inference_mode():
                    rows.setdefault(f"the op, {n}x{c}x{s}x{s} bf16 channels-last", {}).setdefault(label, []).append(
                        timed(lambda: norm(xb), 50))
            rows.setdefault(f"forward, {args.images} images", {}).setdefault(label, []).append(timed(forward, 10))
            rows.setdefault(f"training step, batch {args.batch}", {}).setdefault(label, []).append(
                timed(train_step, 3))
    print(f"\nmedian over {args.rounds} rounds (seconds; ms for the op); speed-up = nn.GroupNorm / GroupNorm32 "
          "per round, median (min-max)")
    print("| what | nn.GroupNorm | GroupNorm32 | speed-up |\n| --- | ---: | ---: | ---: |")
    for what, by in rows.items():
        a, b = by["nn.GroupNorm"], by["GroupNorm32"]
        ratios = [x / y for x, y in zip(a, b)]
        scale, unit = (1e3, " ms") if what.startswith("the op") else (1.0, " s")
        print(f"| {what} | {statistics.median(a) * scale:.3f}{unit} | {statistics.median(b) * scale:.3f}{unit} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return 0


def norm_shapes(net: nn.Module, size: int, images: int) -> list[tuple[nn.GroupNorm, int]]:
    """(each group norm, the spatial size of its input) in one fp32 forward."""
    seen: list[tuple[nn.GroupNorm, int]] = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append((m, inp[0].shape[-1])))
             for m in net.modules() if isinstance(m, nn.GroupNorm)]
    extra = {"guidance": torch.zeros(images)} if net.config.guidance_embed else {}
    with torch.inference_mode():
        net(torch.zeros(images, 3, size, size), torch.zeros(images, dtype=torch.long), torch.zeros(images, 384), None,
            **extra)
    for h in hooks:
        h.remove()
    return seen


if __name__ == "__main__":
    sys.exit(main())
