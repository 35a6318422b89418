#!/usr/bin/env python3
"""Parameter count and CPU forward time of U-Net configs (the default UNetConfig at 64 px first).

    python benchmarks/bench_unet.py [--batch 8] [--repeats 5]

Prints, per config: parameters, and median forward seconds per batch for fp32
and for bf16 autocast + channels_last, measured interleaved in one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import ConditionalUNet, UNetConfig, count_parameters  # noqa: E402

CONFIGS = {
    "default UNetConfig() @64": UNetConfig(),
    "default_model preset @32": UNetConfig(image_size=32, base_channels=64, channel_mult=(1, 2, 2),
                                           attention_resolutions=(8,)),
}


def time_forward(model, x, t, c, bf16: bool, repeats: int) -> float:
    times = []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        model(x, t, c)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, t, c)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'config':28s} {'params':>10s} {'fp32 s/batch':>13s} {'bf16+CL s/batch':>16s} {'speed-up':>9s}")
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = ConditionalUNet(cfg).eval()
        s = cfg.image_size
        x = torch.randn(args.batch, 3, s, s)
        t = torch.randint(0, 1000, (args.batch,))
        c = torch.randn(args.batch, 384)
        fp32, bf16 = [], []
        for _ in range(2):  # interleave the two modes so machine noise hits both
            model = model.to(memory_format=torch.contiguous_format)
            fp32.append(time_forward(model, x, t, c, False, args.repeats))
            model = model.to(memory_format=torch.channels_last)
            bf16.append(time_forward(model, x.contiguous(memory_format=torch.channels_last), t, c, True, args.repeats))
        a, b = min(fp32), min(bf16)
        print(f"{name:28s} {count_parameters(model)/1e6:9.2f}M {a:13.3f} {b:16.3f} {a / b:8.2f}x")


if __name__ == "__main__":
    main()
