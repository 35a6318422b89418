#!/usr/bin/env python3
"""How close one sampling step is to what this CPU can do: the ceiling on any fp32 speed-up.

    python -m benchmarks.bench_roofline [--model tiny200] [--batch 8] [--threads 1] [--rounds 5]
                                        [--log benchmarks/results/roofline.txt]

One guided sampling step is one forward of the network on a batch of 2 x images
(``--batch`` 8 = 4 images, the app's default). For our network (``--model``) and
the diffusers peer of the same layout (``bench_sample.peer``), this prints:
* the floating-point work of one forward (``torch.utils.flop_counter``, counted,
  not estimated), and how much of it is convolution;
* the forward's time, and the time spent in convolution kernels alone
  (``torch.profiler``: every ``aten::*conv*`` op's own CPU time);
* the rate the convolutions reach (GFLOP/s) against this core's best dense
  matmul rate (a 1024 x 1024 fp32 matmul, the same threads), measured in the same
  rounds: the fraction of the machine's peak the convolutions already use.

Then each side's whole sampling step (DPM-Solver++ with guidance, ``bench_sample``'s
two loops, ``--batch``/2 images, 10 steps): the forward plus the guidance and
solver arithmetic around it. If every op other than a convolution cost nothing,
a step of ours would take its convolution time; the peer's step divided by that
is the largest speed-up over the peer that any fp32 loop running these
convolutions can reach on this machine (same network, same steps). Rounds interleave ours, the peer
and the matmul, so noise hits all three alike; medians over rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.bench_sample import NUM_CLASSES, peer, run_ours, run_peer  # noqa: E402
from benchmarks.benchlog import tee_stdout  # noqa: E402
from models import count_parameters  # noqa: E402
from engine import store  # noqa: E402

MATMUL_N = 1024
LOOP_STEPS = 10


def forward_flops(fn) -> tuple[float, float]:
    """(all, convolution) floating-point operations of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for k, v in by_op.items() if "conv" in str(k))
    return float(counter.get_total_flops()), float(conv)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_seconds(fn, repeats: int) -> float:
    """Seconds per call spent inside convolution ops (their own CPU time, profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                fn()
    own = sum(e.self_cpu_time_total for e in prof.key_averages() if "conv" in e.key)
    return own / 1e6 / repeats


def matmul_rate(repeats: int) -> float:
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    return 2 * MATMUL_N ** 3 / timed(lambda: a @ b, repeats) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200", help="a model of the store (its network, at its own size)")
    p.add_argument("--batch", type=int, default=8, help="forward batch (a guided step of N images is 2N)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    torch.set_num_threads(args.threads)

    lm = store.load_model(args.model)  # the shipped network at its own size
    net, diffusion = lm.model.eval(), lm.diffusion
    size, b = lm.image_size, args.batch
    x = torch.randn(b, 3, size, size)
    t = torch.full((b,), 999)
    cond = torch.nn.functional.normalize(torch.randn(b, 384), dim=1)
    drop = torch.arange(b) >= b // 2  # half the batch is the null branch, as in a guided step
    other = peer(size, net.config)
    labels = torch.where(drop, NUM_CLASSES, torch.arange(b) % NUM_CLASSES)
    sides = {
        "ours": lambda: net(x, t, cond, drop),
        "diffusers": lambda: other(x, t, class_labels=labels).sample,
    }
    flops = {k: forward_flops(fn) for k, fn in sides.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.model} at {size} px, "
          f"batch {b}, {args.rounds} rounds x {args.repeats} calls")
    loops = {
        "ours": lambda: run_ours(net, diffusion, size, b // 2, LOOP_STEPS)[0] / LOOP_STEPS,
        "diffusers": lambda: run_peer(other, size, b // 2, LOOP_STEPS)[0] / LOOP_STEPS,
    }
    rows: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "conv": [], "step": []} for k in sides}
    peak: list[float] = []
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for k in order:
            rows[k]["fwd"].append(timed(sides[k], args.repeats))
            rows[k]["conv"].append(conv_seconds(sides[k], args.repeats))
            rows[k]["step"].append(loops[k]())
        peak.append(matmul_rate(args.repeats))
        print(f"round {r + 1}: " + ", ".join(f"{k} forward {rows[k]['fwd'][-1] * 1e3:.1f} ms (conv "
                                             f"{rows[k]['conv'][-1] * 1e3:.1f}), step {rows[k]['step'][-1] * 1e3:.1f}"
                                             for k in sides)
              + f", matmul {peak[-1]:.1f} GFLOP/s", flush=True)

    med = statistics.median
    best = med(peak)
    print(f"\nthis core's dense fp32 matmul ({MATMUL_N}^3): {best:.1f} GFLOP/s (median; "
          f"{min(peak):.1f}-{max(peak):.1f})")
    print("| network | parameters | GFLOP per forward (conv share) | forward ms | conv ms (share) "
          "| conv GFLOP/s (of matmul peak) | sampling step ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, model in (("ours", net), ("diffusers", other)):
        total, conv = flops[k]
        fwd, cv = med(rows[k]["fwd"]), med(rows[k]["conv"])
        n = count_parameters(model)
        print(f"| {k} | {n / 1e6:.2f}M | {total / 1e9:.2f} ({conv / total:.0%}) | {fwd * 1e3:.1f} | "
              f"{cv * 1e3:.1f} ({cv / fwd:.0%}) | {conv / cv / 1e9:.1f} ({conv / cv / 1e9 / best:.0%}) | "
              f"{med(rows[k]['step']) * 1e3:.1f} |")
    ratio = [p / o for p, o in zip(rows["diffusers"]["step"], rows["ours"]["step"])]
    ceiling = [p / c for p, c in zip(rows["diffusers"]["step"], rows["ours"]["conv"])]
    print(f"\nours against diffusers per sampling step now: {med(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f})")
    print(f"ceiling: with every non-convolution op free, a step of ours would take "
          f"{med(rows['ours']['conv']) * 1e3:.1f} ms: {med(ceiling):.2f}x ({min(ceiling):.2f}-{max(ceiling):.2f}) "
          "the peer's step, the most any fp32 loop with these convolutions reaches here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
