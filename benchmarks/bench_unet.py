#!/usr/bin/env python3
"""Parameter count and CPU forward time of U-Net configs (the default UNetConfig at 64 px first).

    python -m benchmarks.bench_unet [--batch 8] [--repeats 5] [--rounds 3] [--log FILE]

Prints, per config: parameters, and forward seconds per batch for fp32 and for
bf16 autocast + channels_last (median, min-max over every timed forward),
measured interleaved in rounds (fp32, bf16, fp32, ...), and the bf16 speed-up as
the median of the per-round ratios with its min-max. On a CPU without fast bf16
(no AVX512-BF16 / AMX) the bf16 column is slower, not faster.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.benchlog import tee_stdout  # noqa: E402
from models import ConditionalUNet, UNetConfig, count_parameters  # noqa: E402
from training.loop import make_config  # noqa: E402
import core as D  # noqa: E402

CONFIGS = {
    "default UNetConfig() @64": UNetConfig(),
    "default_model (7.1M) @32": UNetConfig(image_size=32, base_channels=64, channel_mult=(1, 2, 2),
                                           attention_resolutions=(8,)),
}


def preset_config() -> UNetConfig:
    """The network of the current ``default`` training preset (what tiny200 and new models train)."""
    return make_config("default").unet_config(32)


def time_forward(model, x, t, c, bf16: bool, repeats: int) -> list[float]:
    times = []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        model(x, t, c)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, t, c)
            times.append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per mode per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fp32, bf16, fp32, ...)")
    parser.add_argument("--log", default=None, help="also write everything printed to this file")
    parser.add_argument("--bf16", action="store_true",
                        help="time bf16 even where the CPU has no fast bf16 (emulated: many times slower)")
    args = parser.parse_args()
    tee_stdout(args.log)

    with_bf16 = args.bf16 or D.fast_bf16("cpu")
    configs = {**CONFIGS, "default preset (slim) @32": preset_config()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.rounds} rounds x {args.repeats} forwards per mode")
    print("| config | parameters | fp32 s/batch (median, min-max) | bf16+CL s/batch | bf16 speed-up (median, min-max) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = ConditionalUNet(cfg).eval()
        s = cfg.image_size
        x = torch.randn(args.batch, 3, s, s)
        t = torch.randint(0, 1000, (args.batch,))
        c = torch.randn(args.batch, 384)
        fp32, bf16, ratios = [], [], []
        for _ in range(args.rounds):  # interleave the two modes so machine noise hits both
            model = model.to(memory_format=torch.contiguous_format)
            a = time_forward(model, x, t, c, False, args.repeats)
            fp32 += a
            if with_bf16:
                model = model.to(memory_format=torch.channels_last)
                b = time_forward(model, x.contiguous(memory_format=torch.channels_last), t, c, True, args.repeats)
                bf16 += b
                ratios.append(statistics.median(a) / statistics.median(b))
        if not with_bf16:
            print(f"| {name} | {count_parameters(model) / 1e6:.2f}M | {spread(fp32)} | not timed: no fast bf16 on "
                  "this CPU (--bf16 to time it anyway) | - |", flush=True)
            continue
        print(f"| {name} | {count_parameters(model) / 1e6:.2f}M | {spread(fp32)} | {spread(bf16)} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
