#!/usr/bin/env python3
"""Sampling speed: our DPM-Solver++ loop against a diffusers loop, at equal steps.

Both sides run classifier-free guidance 3 with DPM-Solver++(2M) on a network of
the same layout: ours is the ConditionalUNet of ``--model`` (default_model: its
shipped weights at 32 px, the same config at 64 px), the peer a diffusers
``UNet2DModel`` with the same channels, blocks and attention (class labels with
a null class for guidance) stepped by ``DPMSolverMultistepScheduler``
(what a user writes from diffusers' examples). The weights do not change the
cost, so the peer's are random.

Variants of ours, each measured interleaved with the peer in every round so the
machine's noise hits all of them alike:
* ``ours fp32``: the plain loop;
* ``ours bf16``: bf16 autocast + channels_last (only where the hardware has fast
  bf16, ``diffusion.fast_bf16``, unless ``--bf16`` forces it);
* ``ours interval``: guidance only for sigma in ``--interval`` (outside the band
  a step costs one forward instead of two);
* ``ours compiled``: ``torch.compile`` of the network (with ``--compile``; its
  one-off compile time is reported apart from the steady state).

Printed per (size, batch, steps): seconds per image (median, with min-max over
rounds), the time until the first preview (the first step's callback, which is
when the app can show something), and each variant's speed-up over the peer
(median of the per-round ratios). Raw rounds go to ``--out`` (JSON), the table
to stdout, the plot to ``--plot``.

    python -m benchmarks.bench_sample                  # the full grid (20-40 min on a 2-core CPU)
    python -m benchmarks.bench_sample --quick          # 32 px, batch 1 and 4, 2 rounds
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

import core as D  # noqa: E402
from engine import store  # noqa: E402
from models import ConditionalUNet, UNetConfig, count_parameters  # noqa: E402
from benchmarks.peer import peer_unet  # noqa: E402

GUIDANCE = 3.0
NUM_CLASSES = 10


# --------------------------------------------------------------------------- the two networks
def ours(size: int, model_name: str) -> tuple[torch.nn.Module, D.DiffusionConfig]:
    """The model at its own size; its layout (attention at the same level) with fresh weights at any other."""
    lm = store.load_model(model_name)
    if size == lm.image_size:
        return lm.model.eval(), lm.diffusion
    u = lm.config["unet"]
    # attention at the same level of the network (8 px at 32 px is 16 px at 64 px), as the peer has it
    attention = [r * size // lm.image_size for r in u["attention_resolutions"]]
    cfg = UNetConfig.from_dict({**u, "image_size": size, "attention_resolutions": attention})
    torch.manual_seed(0)
    return ConditionalUNet(cfg).eval().to(memory_format=torch.channels_last), lm.diffusion


def peer(size: int, ours_config: UNetConfig) -> torch.nn.Module:
    """The diffusers UNet2DModel with our network's channels, blocks and attention level."""
    u = ours_config
    if list(u.attention_resolutions) != [u.image_size // 2 ** (len(u.channel_mult) - 1)]:
        raise SystemExit(f"our network has attention at {u.attention_resolutions}; the peer only has it at the "
                         "last level")
    torch.manual_seed(0)
    return peer_unet(size, num_class_embeds=NUM_CLASSES + 1,  # + the null class for guidance
                     block_out_channels=tuple(u.base_channels * m for m in u.channel_mult),
                     layers_per_block=u.num_res_blocks).eval()


# --------------------------------------------------------------------------- one timed run each
class FirstPreview:
    """Seconds from the start of a run until its first step is done."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def __call__(self, *_: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start


@torch.no_grad()
def run_ours(model: torch.nn.Module, diffusion: D.DiffusionConfig, size: int, batch: int, steps: int,
             precision: str = "fp32", interval: tuple[float, float] | None = None) -> tuple[float, float]:
    cond = torch.nn.functional.normalize(torch.randn(batch, 384, generator=torch.Generator().manual_seed(1)), dim=1)
    timer = FirstPreview()
    D.generate_images(model, diffusion, ["benchmark"] * batch, num_images=batch, sampler="dpm++", num_steps=steps,
                      guidance_scale=GUIDANCE, seed=0, image_size=size, cond=cond, precision=precision,
                      guidance_interval=interval, callback=timer, device="cpu")
    return time.perf_counter() - timer.start, timer.first or 0.0


@torch.no_grad()
def run_peer(model: torch.nn.Module, size: int, batch: int, steps: int) -> tuple[float, float]:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    timer = FirstPreview()
    sch = DPMSolverMultistepScheduler.from_config(
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon").config)
    sch.set_timesteps(steps)
    y = torch.arange(batch) % NUM_CLASSES
    null = torch.full_like(y, NUM_CLASSES)
    x = torch.cat([torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(k)) for k in range(batch)])
    for t in sch.timesteps:
        eps = model(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample
        cond, uncond = eps.chunk(2)
        x = sch.step(uncond + GUIDANCE * (cond - uncond), t, x).prev_sample
        timer()
    return time.perf_counter() - timer.start, timer.first or 0.0


# --------------------------------------------------------------------------- the grid
def variants(args: argparse.Namespace, net: torch.nn.Module, diffusion: D.DiffusionConfig,
             compiled: torch.nn.Module | None) -> dict[str, Callable[[int, int, int], tuple[float, float]]]:
    out: dict[str, Callable[[int, int, int], tuple[float, float]]] = {
        "ours fp32": lambda s, b, n: run_ours(net, diffusion, s, b, n),
    }
    if args.bf16 or D.fast_bf16("cpu"):
        out["ours bf16"] = lambda s, b, n: run_ours(net, diffusion, s, b, n, precision="bf16")
    if args.interval:
        out["ours interval"] = lambda s, b, n: run_ours(net, diffusion, s, b, n, interval=args.interval)
    if compiled is not None:
        out["ours compiled"] = lambda s, b, n: run_ours(compiled, diffusion, s, b, n)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cells = [(s, b, args.steps[0]) for s in args.sizes for b in args.batches]
    cells += [(args.sizes[0], args.batches[min(1, len(args.batches) - 1)], n) for n in args.steps[1:]]
    raw: list[dict[str, Any]] = []
    compile_seconds: dict[int, float] = {}
    nets = {}
    for size in args.sizes:
        net, diffusion = ours(size, args.model)
        compiled = None
        if args.compile:
            compiled = torch.compile(net)
            start = time.perf_counter()
            run_ours(compiled, diffusion, size, 1, 2)  # the one-off compile, outside the timed rounds
            compile_seconds[size] = time.perf_counter() - start
        nets[size] = (net, diffusion, compiled, peer(size, net.config))
    for size, (net, diffusion, compiled, peer_net) in nets.items():
        print(f"{size} px: ours {count_parameters(net) / 1e6:.2f}M parameters, "
              f"peer {sum(p.numel() for p in peer_net.parameters()) / 1e6:.2f}M", flush=True)
    for rnd in range(args.rounds):
        for size, batch, steps in cells:
            net, diffusion, compiled, peer_net = nets[size]
            fns = {"diffusers": lambda s, b, n, m=peer_net: run_peer(m, s, b, n),
                   **variants(args, net, diffusion, compiled)}
            order = list(fns) if rnd % 2 == 0 else list(fns)[::-1]  # alternate who runs first
            for name in order:
                total, first = fns[name](size, batch, steps)
                raw.append({"round": rnd, "size": size, "batch": batch, "steps": steps, "variant": name,
                            "seconds": total, "first_preview": first})
            print(f"round {rnd + 1}/{args.rounds}: {size} px, batch {batch}, {steps} steps done", flush=True)
    return {"machine": machine(args), "compile_seconds": compile_seconds, "interval": args.interval, "raw": raw}


def machine(args: argparse.Namespace) -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "fast_bf16": D.fast_bf16("cpu"), "load_avg_at_start": list(_load_avg())}


def _load_avg() -> tuple[float, ...]:
    try:
        import os

        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return ()


# --------------------------------------------------------------------------- the report
def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    raw = result["raw"]
    keys = sorted({(r["size"], r["batch"], r["steps"]) for r in raw})
    for size, batch, steps in keys:
        cell = [r for r in raw if (r["size"], r["batch"], r["steps"]) == (size, batch, steps)]
        peer_by_round = {r["round"]: r["seconds"] for r in cell if r["variant"] == "diffusers"}
        for variant in dict.fromkeys(r["variant"] for r in cell):
            runs = [r for r in cell if r["variant"] == variant]
            per_image = [r["seconds"] / batch for r in runs]
            ratios = [peer_by_round[r["round"]] / r["seconds"] for r in runs if r["round"] in peer_by_round]
            rows.append({"size": size, "batch": batch, "steps": steps, "variant": variant,
                         "s_per_image": statistics.median(per_image), "min": min(per_image), "max": max(per_image),
                         "first_preview": statistics.median(r["first_preview"] for r in runs),
                         "speedup": statistics.median(ratios) if ratios else float("nan"),
                         "speedup_min": min(ratios) if ratios else float("nan"),
                         "speedup_max": max(ratios) if ratios else float("nan"), "rounds": len(runs)})
    return rows


def table(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    lines = ["| size | batch | steps | loop | s / image (median, min-max) | first preview (s) | speed-up vs diffusers (median, min-max) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sp = "1 (the peer)" if r["variant"] == "diffusers" else \
            f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        lines.append(f"| {r['size']} | {r['batch']} | {r['steps']} | {r['variant']} | {r['s_per_image']:.3f} "
                     f"({r['min']:.3f}-{r['max']:.3f}) | {r['first_preview']:.3f} | {sp} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, fast bf16: {m['fast_bf16']}, load average "
                 f"at start {m['load_avg_at_start']}; DPM-Solver++(2M), guidance {GUIDANCE}; {rows[0]['rounds']} rounds.")
    if result.get("interval"):
        lines.append(f"Guidance interval: sigma in {tuple(result['interval'])}.")
    for size, secs in result.get("compile_seconds", {}).items():
        lines.append(f"torch.compile at {size} px: {secs:.1f} s once (not in the rounds).")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5 * (len(sizes) + 1), 4))
    # the grid's main step count is the one most cells share; the other counts vary only at one batch size
    steps0 = statistics.mode(r["steps"] for r in rows)
    for ax, size in zip(axes, sizes):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            pts = sorted((r["batch"], r["s_per_image"]) for r in rows
                         if r["size"] == size and r["variant"] == variant and r["steps"] == steps0)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set(title=f"{size} px, {steps0} steps", xlabel="batch size", ylabel="seconds per image", xscale="log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax = axes[-1]
    batch = sorted({r["batch"] for r in rows if r["steps"] != steps0 and r["size"] == sizes[0]}) or \
        [min(r["batch"] for r in rows)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pts = sorted((r["steps"], r["s_per_image"]) for r in rows
                     if r["size"] == sizes[0] and r["variant"] == variant and r["batch"] == batch[0])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=variant)
    ax.set(title=f"{sizes[0]} px, batch {batch[0]}", xlabel="steps", ylabel="seconds per image")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default_model", help="store model whose layout (and 32 px weights) is ours")
    p.add_argument("--sizes", type=_ints, default=[32, 64], help="image sizes (default 32,64)")
    p.add_argument("--batches", type=_ints, default=[1, 4, 16], help="batch sizes (default 1,4,16)")
    p.add_argument("--steps", type=_ints, default=[20, 10, 40],
                   help="steps: the first for the whole grid, the rest at the first size and the second batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--interval", type=D.parse_guidance_interval, default=D.parse_guidance_interval("0.28,5.42"),
                   help="guidance interval LO,HI in sigma for the 'ours interval' variant ('' to skip)")
    p.add_argument("--bf16", action="store_true", help="measure bf16 even where the CPU has no fast bf16")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (compile time reported apart)")
    p.add_argument("--quick", action="store_true", help="32 px, batch 1 and 4, 20 steps, 2 rounds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sample.json")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/sample.png")
    p.add_argument("--report", action="store_true", help="only print the table of an earlier --out")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.steps, args.rounds = [32], [1, 4], [20], 2
    if args.report:
        result = json.loads(args.out.read_text())
    else:
        result = measure(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    rows = summarise(result)
    print(table(rows, result))
    if args.plot:
        plot(rows, args.plot)
        print(f"\nraw rounds: {args.out}\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
