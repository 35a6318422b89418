#!/usr/bin/env python3
"""Live mode's speed: a few-step student against its teacher and against a diffusers loop, in the core.

    python -m benchmarks.bench_live --teacher tiny200 --student tiny200-live [--images 4] [--rounds 9]
                                    [--threads 2] [--log benchmarks/results/live/speed.txt]

For ``--images`` images from cached text embeddings (what the app has once a prompt was typed), each
round times, interleaved so the machine's noise hits all alike:

* the student at 1, 2 and 4 steps of its own sampler (one forward per step: guidance is an input);
* the teacher, DPM-Solver++ at ``--teacher-steps`` (classifier-free guidance at its default scale and
  interval: two forwards per guided step), our loop;
* the teacher's network stepped by diffusers' ``DPMSolverMultistepScheduler`` (the loop a diffusers
  user writes, guidance at every step) at the same steps.

Each at fp32 and at bf16 autocast (where the CPU has fast bf16). Printed: the median (min-max) seconds
per call for ``--images`` images, and the speed-up over the teacher at 20 steps. Which of these reach
equal quality is ``evaluate.py``'s part (BENCHMARKS.md pairs the two tables); the end-to-end figure
through the app's queue is ``bench_app --live``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import core as D
from benchmarks.benchlog import tee_stdout
from engine import store
from engine.request import GenerationRequest, resolve_settings


def cond_for(images: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(images, 384, generator=torch.Generator().manual_seed(1)), dim=1)


def time_ours(lm: store.LoadedModel, sampler: str, steps: int, guidance: float, images: int, precision: str) -> float:
    t0 = time.perf_counter()
    D.generate_images(lm.model, lm.diffusion, ["benchmark"] * images, num_images=images, sampler=sampler,
                      num_steps=steps, guidance_scale=guidance, seed=0, cond=cond_for(images), precision=precision,
                      guidance_interval=lm.guidance_interval, device="cpu")
    return time.perf_counter() - t0


@torch.no_grad()
def time_diffusers(lm: store.LoadedModel, steps: int, guidance: float, images: int, precision: str) -> float:
    from diffusers import DPMSolverMultistepScheduler

    d = lm.diffusion
    t0 = time.perf_counter()
    sch = DPMSolverMultistepScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                                      prediction_type=d.prediction_type, timestep_spacing="trailing")
    sch.set_timesteps(steps)
    cond = cond_for(images)
    x = torch.cat([torch.randn((1, 3, lm.image_size, lm.image_size), generator=torch.Generator().manual_seed(k))
                   for k in range(images)])
    drop = torch.cat([torch.zeros(images, dtype=torch.bool), torch.ones(images, dtype=torch.bool)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for t in sch.timesteps:
            out = lm.model(torch.cat([x, x]), t.expand(2 * images), torch.cat([cond, cond]), drop).float()
            c, u = out.chunk(2)
            x = sch.step(u + guidance * (c - u), t, x).prev_sample
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny200")
    p.add_argument("--student", default="tiny200-live")
    p.add_argument("--store", default=None)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-steps", default="4,8,12,20", help="the teacher's DPM-Solver++ steps to time")
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    p.add_argument("--json", default=None, help="raw times per round (JSON)")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    torch.set_num_threads(args.threads)
    teacher = store.load_model(args.teacher, store=args.store)
    student = store.load_model(args.student, store=args.store)
    g = resolve_settings(teacher, GenerationRequest()).guidance  # the teacher's own, by the one resolver
    precisions = ["fp32"] + (["bf16"] if D.fast_bf16("cpu") else [])
    t_steps = [int(v) for v in args.teacher_steps.split(",")]
    cases: dict[str, Callable[[], float]] = {}
    s_sampler = resolve_settings(student, GenerationRequest()).sampler  # its own sampler: one forward per step
    for prec in precisions:
        for k in (1, 2, 4):
            cases[f"student {s_sampler.upper()} {k} ({prec})"] = (
                lambda k=k, prec=prec: time_ours(student, s_sampler, k, g, args.images, prec))
        for k in t_steps:
            cases[f"teacher DPM-Solver++ {k} ({prec})"] = (
                lambda k=k, prec=prec: time_ours(teacher, "dpm++", k, g, args.images, prec))
        cases[f"diffusers loop, teacher net, DPM++ 20 ({prec})"] = (
            lambda prec=prec: time_diffusers(teacher, 20, g, args.images, prec))
    for fn in cases.values():  # warm-up: first calls pay for allocations and kernels
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(fn())
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n{args.images} images, {args.teacher} (teacher, guidance {g:g}, interval {teacher.guidance_interval}) and "
          f"{args.student} (student); {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"fast bf16: {D.fast_bf16('cpu')}, torch {torch.__version__}; median of {args.rounds} rounds (min-max):")
    for prec in precisions:
        ref = statistics.median(times[f"teacher DPM-Solver++ 20 ({prec})"]) if 20 in t_steps else None
        print(f"\n| {prec} | seconds for {args.images} images | min-max | vs teacher 20 steps |")
        print("| --- | ---: | ---: | ---: |")
        for name, xs in times.items():
            if f"({prec})" not in name:
                continue
            med = statistics.median(xs)
            speed = f"{ref / med:.1f}x faster" if ref else "-"
            print(f"| {name.replace(f' ({prec})', '')} | {med:.3f} | {min(xs):.3f}-{max(xs):.3f} | {speed} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "times": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
