#!/usr/bin/env python3
"""Training throughput on CPU: our ConditionalUNet at the layout of diffusers'
UNet2DModel peer (64/128/128 channels, the net default_model has), the peer, and
the current default preset's slim net.

    python -m benchmarks.bench_train [--batch 32] [--size 32] [--rounds 4] [--steps 2] [--threads N]
                                     [--profile] [--json results.json] [--log output.txt]

Ratios are reported with their spread: the per-round speed-up (both variants ran
back to back in every round), its median, min and max, and in how many rounds
ours was faster. AdamW's step alone (loop / foreach / fused) is timed the same way.

One training step = forward + MSE loss + backward + AdamW step (+ zero_grad),
fp32, same batch, resolution, thread count and optimizer settings for every
variant. Data are synthetic tensors (this measures the network and optimizer,
not the data pipeline). Variants are run interleaved in the same process
(round-robin, order rotated every round) and the median step time is
reported, so background load hits all of them alike: compare ratios within one
run, not absolute numbers across runs.

Variants (AdamW "loop" = torch's default single-tensor implementation on CPU):
  ours, as trained           channels_last + fused AdamW: what `python diffusion.py` runs on CPU
  ours, channels_last, loop  same network and layout, the default AdamW (same optimizer as diffusers)
  ours, contiguous, loop     the same with --no-channels_last
  diffusers, loop            UNet2DModel, default (contiguous) layout, default AdamW
  diffusers, fused           UNet2DModel with fused AdamW
  diffusers, channels_last   UNet2DModel in channels_last, default AdamW

The diffusers model mirrors ours: 3 levels (64, 128, 128 channels), 2 res
blocks per level, attention at the 8 px level and in the middle, 32-channel
heads, scale-shift time conditioning (as guided-diffusion and ours), dropout
0.1, and a class embedding (ours: a 384-d text embedding through an MLP).
GFLOP per step are counted with torch.utils.flop_counter (matmuls and
convolutions, forward and backward).

With --profile, the top operators by self CPU time for ours and diffusers
(torch.profiler, two steps each) are printed as well.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.benchlog import tee_stdout  # noqa: E402
from models import ConditionalUNet, count_parameters  # noqa: E402
from training.loop import make_config  # noqa: E402
from benchmarks.peer import peer_unet  # noqa: E402


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    call: Callable[[torch.nn.Module, dict], torch.Tensor]
    inputs: dict
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)

    def step(self, target: torch.Tensor) -> float:
        start = time.perf_counter()
        out = self.call(self.model, self.inputs)
        loss = F.mse_loss(out, target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


# The diffusers peer's layout (64/128/128 channels, 2 blocks, attention at 8 px, dropout 0.1): the
# like-for-like comparison. The current default preset's slim net is timed as its own variant.
SAME_LAYOUT = dict(base_channels=64, channel_mult=(1, 2, 2), attention_resolutions=(8,), dropout=0.1)


def ours_model(size: int) -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(make_config("default", **SAME_LAYOUT).unet_config(size)).train()


def ours_preset_model(size: int) -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(make_config("default").unet_config(size)).train()


def diffusers_model(size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return peer_unet(size, num_class_embeds=10, dropout=0.1).train()


def call_ours(model: torch.nn.Module, inp: dict) -> torch.Tensor:
    return model(inp["x"], inp["t"], inp["cond"], inp["drop"])


def call_diffusers(model: torch.nn.Module, inp: dict) -> torch.Tensor:
    return model(inp["x"], inp["t"], class_labels=inp["y"]).sample


def make_inputs(batch: int, size: int, channels_last: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return {"x": x, "t": torch.randint(0, 1000, (batch,), generator=g),
            "cond": torch.nn.functional.normalize(torch.randn(batch, 384, generator=g), dim=1),
            "drop": torch.rand(batch, generator=g) < 0.15, "y": torch.randint(0, 10, (batch,), generator=g)}


def adamw(model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=0.0, fused=fused)


def build_variants(batch: int, size: int) -> list[Variant]:
    variants = []
    for name, build, call, layout_cl, fused in (
        ("ours, as trained", ours_model, call_ours, True, True),
        ("ours, channels_last, loop", ours_model, call_ours, True, False),
        ("ours, contiguous, loop", ours_model, call_ours, False, False),
        ("diffusers, loop", diffusers_model, call_diffusers, False, False),
        ("diffusers, fused", diffusers_model, call_diffusers, False, True),
        ("diffusers, channels_last", diffusers_model, call_diffusers, True, False),
        ("ours, slim default preset", ours_preset_model, call_ours, True, True),
    ):
        m = build(size)
        if layout_cl:
            m = m.to(memory_format=torch.channels_last)
        variants.append(Variant(name, m, call, make_inputs(batch, size, layout_cl), adamw(m, fused)))
    return variants


def flop_key(variant: str) -> str:
    return "slim" if "slim" in variant else variant.split(",")[0]


def print_optimizer_times(model: torch.nn.Module, rounds: int, reps: int = 5) -> dict[str, list[float]]:
    """AdamW's step alone on ``model``'s parameters (random gradients): the single-tensor loop,
    foreach and fused implementations, interleaved; milliseconds per step."""
    params = [p for p in model.parameters()]
    grads = [torch.randn_like(p) for p in params]
    impls = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    opts = {}
    for name, kw in impls.items():
        copies = [p.detach().clone().requires_grad_(True) for p in params]
        for c, g in zip(copies, grads):
            c.grad = g.clone()
        opts[name] = torch.optim.AdamW(copies, lr=2e-4, **kw)
        opts[name].step()  # allocate the state outside the timing
    times: dict[str, list[float]] = {n: [] for n in impls}
    for r in range(rounds):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            start = time.perf_counter()
            for _ in range(reps):
                opts[name].step()
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    base = statistics.median(times["loop"])
    print(f"\nAdamW step alone ({sum(p.numel() for p in params):,} parameters), ms, median (min-max) over {rounds} rounds:")
    for name, ts in times.items():
        print(f"  {name:8s} {statistics.median(ts):7.1f} ({min(ts):.1f}-{max(ts):.1f})  "
              f"loop / this {base / statistics.median(ts):.2f}x")
    return times


def flops_per_step(v: Variant, target: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = v.call(v.model, v.inputs)
        F.mse_loss(out, target).backward()
    v.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def profile(v: Variant, target: torch.Tensor, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            v.step(target)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=make_config("default").batch_size)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="round-robin rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler top operators")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument("--log", default=None, help="also write everything printed to this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    tee_stdout(args.log)
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers

    variants = build_variants(args.batch, args.size)
    target = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    params = {v.name: count_parameters(v.model) for v in variants}
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()} ({platform.processor() or 'cpu'}), batch {args.batch}, {args.size} px, fp32")
    print(f"parameters: ours {params['ours, as trained']:,}, diffusers UNet2DModel {params['diffusers, loop']:,} "
          f"(ratio {params['ours, as trained'] / params['diffusers, loop']:.3f})")
    gflops = {}
    for v in variants:
        if v.name in ("ours, channels_last, loop", "diffusers, loop", "ours, slim default preset"):
            gflops[flop_key(v.name)] = flops_per_step(v, target) / 1e9
    print(f"GFLOP per training step (fwd+bwd, batch {args.batch}): ours {gflops['ours']:.2f}, "
          f"diffusers {gflops['diffusers']:.2f}, slim preset {gflops['slim']:.2f}")

    for v in variants:  # warm-up: allocator, oneDNN primitives, optimizer state
        for _ in range(2):
            v.step(target)
    started = time.time()
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            for _ in range(args.steps):
                v.times.append(v.step(target))
        print(f"  round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)", flush=True)

    results = {}
    print(f"\n{'variant':28s} {'median s/step':>13s} {'min s/step':>10s} {'images/s':>9s} {'GFLOP/s':>8s} "
          f"{'vs diffusers, loop':>19s}")
    base = next(v for v in variants if v.name == "diffusers, loop")
    base_med, base_min = statistics.median(base.times), min(base.times)
    for v in variants:
        med = statistics.median(v.times)
        fl = gflops[flop_key(v.name)]
        results[v.name] = {"median_s_per_step": med, "images_per_s": args.batch / med, "gflop_per_s": fl / med,
                           "min_s_per_step": min(v.times), "max_s_per_step": max(v.times),
                           "speed_vs_diffusers": base_med / med, "speed_vs_diffusers_by_min": base_min / min(v.times),
                           "parameters": params[v.name], "times": v.times}
        print(f"{v.name:28s} {med:13.3f} {min(v.times):10.3f} {args.batch / med:9.1f} {fl / med:8.1f} "
              f"{base_med / med:9.2f}x (min {base_min / min(v.times):.2f}x)")

    def round_ratios(a: str, b: str) -> list[float]:
        """b's time / a's time in each round (both ran in it, back to back): the spread of the speed-up."""
        ta, tb = results[a]["times"], results[b]["times"]
        k = args.steps
        return [statistics.mean(tb[i:i + k]) / statistics.mean(ta[i:i + k]) for i in range(0, len(ta), k)]

    def ratio(a: str, b: str) -> str:
        ra, rb = results[a], results[b]
        rr = round_ratios(a, b)
        results.setdefault("ratios", {})[f"{a} / {b}"] = rr
        return (f"{ra['images_per_s'] / rb['images_per_s']:.2f}x; per round median {statistics.median(rr):.2f}x, "
                f"min {min(rr):.2f}x, max {max(rr):.2f}x, faster in {sum(r > 1 for r in rr)}/{len(rr)} rounds")

    print(f"\nsame optimizer, network + layout only: ours channels_last / diffusers     "
          f"{ratio('ours, channels_last, loop', 'diffusers, loop')}")
    print(f"as shipped: ours as trained / diffusers default                          "
          f"{ratio('ours, as trained', 'diffusers, loop')}")
    print(f"both with fused AdamW: ours as trained / diffusers fused                 "
          f"{ratio('ours, as trained', 'diffusers, fused')}")
    print(f"ours: channels_last / contiguous                                         "
          f"{ratio('ours, channels_last, loop', 'ours, contiguous, loop')}")
    print(f"the slim default preset / ours at the peer's layout, both as trained     "
          f"{ratio('ours, slim default preset', 'ours, as trained')}")
    print_optimizer_times(variants[0].model, args.rounds)

    if args.profile:
        for v in variants:
            if v.name in ("ours, channels_last, loop", "diffusers, loop"):
                print(f"\n=== torch.profiler, {v.name}: 2 steps, top operators by self CPU time ===")
                print(profile(v, target))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
            "batch": args.batch, "size": args.size, "rounds": args.rounds, "steps": args.steps,
            "gflop_per_step": gflops, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
