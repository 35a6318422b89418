#!/usr/bin/env python3
"""CPU speedrun: quality per CPU-minute of training recipes, ours against a diffusers peer.

    python -m benchmarks.bench_speedrun --throughput --recipes current,diffusers,fast   # once, on an idle machine
    python -m benchmarks.bench_speedrun --recipes current,fast --budgets 15,30,60
    python -m benchmarks.bench_speedrun --report          # table + plot from the results so far
    python -m benchmarks.bench_speedrun --suite tiny200 --throughput --recipes slim,w48,slim-emb512,diffusers
    python -m benchmarks.bench_speedrun --suite tiny200 --recipes slim,slim-emb512 --budgets 15,30

Two suites (``--suite``): ``default10`` is the first screen below; ``tiny200`` is the
same harness on all 200 Tiny ImageNet classes (``data/tiny200_32``), scored with the
200-class yardstick shipped with tiny200 on 5 images per class (1,000) at guidance 6,
sampled with precision auto (bf16 autocast where the CPU has AVX512-BF16/AMX, as the app does),
with top-5 and the conditioning check (the share of class pairs whose images from one
seed are farther apart than two seeds of one class) beside top-1 and FD.

Every recipe trains from scratch on the same fixed task (the default model's
10 Tiny ImageNet classes at 32 px: ``data/default32``, made with ``python
preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 32 --classes
assets/default_classes.txt --val-fraction 0.04 --text-variants basic --out
data/default32``, the data default_model was trained on), with a fixed seed
and thread count, one run at a time.
A budget of B CPU-minutes is the number of steps the recipe trains in B
minutes at its clean throughput: each recipe's training images/s are
measured first (``--throughput``: all recipes round-robin in one process, so
background load hits them alike), and the run stops at
``B * 60 * images_per_s / batch`` steps. On this shared machine that keeps
the comparison fair when other work slows a run down (a wall-clock budget
would hand the quiet runs more images). Wall minutes and load are recorded
too. At each budget the EMA weights are scored and the run resumes to the
next (resume is exact, so a staged run equals an unbroken one).

Score: ``--per-class`` images per class (default 20) with DPM-Solver++ 20
steps at guidance 3, judged by the yardstick classifier shipped with
default_model (a small ResNet trained on the same training split; 90.5% on
the held-out split): class accuracy with its binomial standard error, and the
Frechet distance of the classifier's features to the held-out images with a
bootstrap standard deviation. Images seen are recorded beside minutes, so runs
on a noisy machine still compare.

The peer (recipe ``diffusers``) is what a user would write from diffusers'
examples: a ``UNet2DModel`` of the same layout as ours (6.95M vs 7.11M
parameters), class-conditional through ``num_class_embeds`` with one extra
index as the null class (10% label dropout for guidance), ``DDPMScheduler``
(linear betas, epsilon), AdamW 2e-4 with 500 warm-up steps, batch 64, random
flips, EMA as diffusers' ``EMAModel`` (warm-up, power 3/4, max decay 0.9999),
fp32; sampled with ``DPMSolverMultistepScheduler`` 20 steps and guidance 3.

Results append to ``--results`` (JSON lines; a (recipe, budget) already there
is skipped, so an interrupted benchmark resumes where it stopped).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

import evaluation as E  # noqa: E402
from engine import store  # noqa: E402
from benchmarks.peer import peer_unet as diffusers_unet  # noqa: E402
import core as D  # noqa: E402
from dataprep.dataset import PreprocessedDataset  # noqa: E402
from evaluation.colour import COLOUR_CONFIG, ColourBaseline  # noqa: E402
from models import ConditionalUNet  # noqa: E402
from models.text_encoder import encode_prompts  # noqa: E402
from training import loop as T  # noqa: E402

# Recipes: overrides of the `default` training preset. "current" is the preset as
# it stood before this benchmark (the recipe that trained default_model).
BEFORE = dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,), dropout=0.1,
              batch_size=32, lr=2e-4, warmup_steps=200, max_steps=100_000, ema_decay=0.999, precision="fp32",
              timestep_sampling="uniform", min_snr_gamma=5.0, cond_scale=1.0)
FAST = dict(BEFORE, lr=1e-3, dropout=0.0, precision="bf16")
RECIPES_10: dict[str, dict[str, Any]] = {
    "current": BEFORE,
    "bf16": dict(BEFORE, precision="bf16"),
    "fast": FAST,  # lr 1e-3, no dropout, bf16 autocast
    "fast-logitnormal": dict(FAST, timestep_sampling="logit_normal"),
    "fast-lr2e-3": dict(FAST, lr=2e-3),
    "fast-b64": dict(FAST, batch_size=64, lr=1.4e-3),
    "fast-narrow": dict(FAST, base_channels=48),
    "fast-1block": dict(FAST, num_res_blocks=1),
    "fast-ema9995": dict(FAST, ema_decay=0.9995),
    "fast-b16": dict(FAST, batch_size=16, lr=7e-4),
    "fast-slim": dict(FAST, base_channels=32, channel_mult=(1, 2, 4)),  # 32/64/128 channels: ~1/3 of the FLOPs
    "diffusers": {},  # the peer: see train_peer()
}
# The 200-class screen (--suite tiny200): overrides of the `default` preset (the slim 32/64/128 network
# that trained tiny200, bf16 autocast where the CPU has it) as the screen began, before the preset
# took cond_scale sqrt(384) from it: the recorded rows keep meaning what they measured.
SLIM = dict(cond_scale=1.0)
RECIPES_200: dict[str, dict[str, Any]] = {
    "slim": SLIM,
    "slim-emb512": dict(SLIM, emb_dim=512),  # a 4x wider time + text embedding (the conditioning path)
    # the text embedding at unit-variance entries (x sqrt(384)): the condition learns as fast as the timestep
    "slim-condscale": dict(cond_scale=384 ** 0.5),
    "w48": dict(SLIM, base_channels=48),  # capacity: 48/96/192 channels
    "w64": dict(SLIM, base_channels=64),
    "slim-attn16": dict(SLIM, attention_resolutions=(16, 8)),
    "slim-logitnormal": dict(SLIM, timestep_sampling="logit_normal"),
    "slim-drop10": dict(SLIM, cond_drop_prob=0.1),
    "slim-b64": dict(SLIM, batch_size=64, lr=1.4e-3),
    # Round two (issue 34), each against slim-condscale at 60 CPU-minutes:
    # one learning-rate schedule for the whole budget: warm-up, then cosine decay to 0.1x at the 60-minute step
    # (62.1 images/s x 3,600 s / 32 = 6,986 steps) instead of a constant rate until step 100,000
    "cs-sched60": dict(cond_scale=384 ** 0.5, max_steps=6986),
    # the text scales and shifts every block through its own projection (UNetConfig.text_film)
    "cs-textfilm": dict(cond_scale=384 ** 0.5, text_film=True),
    # capacity for a long budget
    "cs-w48": dict(cond_scale=384 ** 0.5, base_channels=48),
    "cs-attn16": dict(cond_scale=384 ** 0.5, attention_resolutions=(16, 8)),
    # where training spends its effort: logit-normal noise levels (SD3) in place of uniform t
    "cs-logitnormal": dict(cond_scale=384 ** 0.5, timestep_sampling="logit_normal"),
    "cs-drop20": dict(cond_scale=384 ** 0.5, cond_drop_prob=0.2),
    "diffusers": {},
}


@dataclass(frozen=True)
class Suite:
    """One fixed task to screen recipes on: its data, yardstick, scoring and result files."""
    name: str
    data: str
    classifier: str
    recipes: dict[str, dict[str, Any]]
    per_class: int
    guidance: float
    results: str  # stem of the files in benchmarks/results/
    title: str
    precision: str = "fp32"  # sampling precision of the scored images (auto: bf16 where the CPU is fast at it)


SUITES = {
    "default10": Suite("default10", "data/default32", "model_store/default_model", RECIPES_10, 20, 3.0, "speedrun",
                       "10 classes, 32 px, DPM-Solver++ 20, guidance 3"),
    "tiny200": Suite("tiny200", "data/tiny200_32", "model_store/tiny200", RECIPES_200, 5, 6.0, "speedrun200",
                     "200 classes, 32 px, DPM-Solver++ 20, guidance 6", precision="auto"),
}


def recipe_config(suite: Suite, name: str) -> Any:
    return T.make_config("default", **suite.recipes[name])


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- scoring
class Yardstick:
    """The classifier, the held-out features, and the class embeddings (no text encoder needed)."""

    def __init__(self, data_dir: Path, classifier_dir: Path, per_class: int, seed: int, guidance: float,
                 precision: str = "fp32", second: Path | None = None, colour: Path | None = None,
                 free_text: Path | None = None):
        self.train = PreprocessedDataset(data_dir, split="train")
        val = PreprocessedDataset(data_dir, split="val")
        self.clf, meta = E.load_classifier(classifier_dir)
        self.clf_val_accuracy = meta.get("val_accuracy")
        self.val_pred, self.val_feat = E.classify(self.clf, np.asarray(val.images))
        self.real_accuracy = float((self.val_pred == np.asarray(val.labels)).mean())
        # the second yardstick (a different network and augmentation) and the colour-only baseline, if given
        self.clf2 = E.load_classifier(second)[0] if second else None
        if self.clf2 is not None:
            pred2, self.val_feat2 = E.classify(self.clf2, np.asarray(val.images))
            self.real_accuracy2 = float((pred2 == np.asarray(val.labels)).mean())
        self.colour = colour_baseline(colour, self.train) if colour else None
        if self.colour is not None:
            self.real_colour_accuracy = self.colour.accuracy(np.asarray(val.images), np.asarray(val.labels))
        self.prompts = [c["prompt"] for c in self.train.classes]
        # free text: prompts worded unlike the training texts, of the classes the data has
        self.free_text = E.read_free_text(free_text, [c["name"] for c in self.train.classes],
                                          skip_unknown=True) if free_text else []
        self.emb = {p: self.train.class_embeddings[i].numpy() for i, p in enumerate(self.prompts)}
        self.per_class, self.seed, self.guidance, self.precision = per_class, seed, guidance, precision

    def encode(self, prompts: list[str]) -> np.ndarray:
        return np.stack([self.emb[p] for p in prompts])

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Top-1/top-5, FD and the conditioning check (images class-major, the j-th of every class from one seed)."""
        logits, feat = E.predict(self.clf, images)
        pred = logits.argmax(1)
        acc = float((pred == labels).mean())
        cond = E.conditioning_check(feat, pred, len(self.prompts), self.per_class) if self.per_class >= 2 else None
        return {"accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / len(labels)),
                "top5": E.top_k_accuracy(logits, labels, 5),
                "fd": E.frechet_distance(feat, self.val_feat), "fd_sd": E.fd_bootstrap_sd(feat, self.val_feat, seed=self.seed),
                "pairs_apart": cond["pairs_apart"] if cond else None,
                "classes_above_chance": cond["classes_above_chance"] if cond else None, **self.score_extra(images, labels)}

    def score_free_text(self, lm: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """How often the free-text prompts land on their class (per_class images each, sampled as the
        class-name images are), by each yardstick, and as a share of the class names' top-1 on the same
        classes (``images``, ``labels``: the class-name images; each prompt weighs its class once)."""
        names = E.YardstickClasses.identity([c["name"] for c in self.train.classes])
        rows = E.free_text_rows(lm, self.clf, self.free_text, per_prompt=self.per_class, sampler="dpm++", steps=20,
                                guidance=self.guidance, seed=self.seed, batch_size=50, device=torch.device("cpu"),
                                encode_fn=encode_prompts, yardstick=names, precision=self.precision,
                                second=(self.clf2, names) if self.clf2 is not None else None)
        meant = np.array([c for _, c in self.free_text])

        def names_rate(clf: Any) -> float:  # the class names' top-1 on the prompts' classes
            hits = E.per_class_accuracy(E.classify(clf, images)[0], labels, len(self.prompts))
            return float(hits[meant].mean())

        ft, names = float(np.mean([r["accuracy"] for r in rows])), names_rate(self.clf)
        out = {"free_text": ft, "free_text_prompts": len(rows), "free_text_names": names,
               "free_text_ratio": ft / names if names else None}
        if self.clf2 is not None:
            ft2, names2 = float(np.mean([r["accuracy2"] for r in rows])), names_rate(self.clf2)
            out.update(free_text_y2=ft2, free_text_names_y2=names2, free_text_ratio_y2=ft2 / names2 if names2 else None)
        return out

    def score_extra(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The second yardstick's top-1/top-5/FD and the colour-only baseline's top-1 (those configured)."""
        out: dict[str, float] = {}
        if self.clf2 is not None:
            logits, feat = E.predict(self.clf2, images)
            out.update(y2_accuracy=float((logits.argmax(1) == labels).mean()), y2_top5=E.top_k_accuracy(logits, labels, 5),
                       y2_fd=E.frechet_distance(feat, self.val_feat2), y2_real_accuracy=self.real_accuracy2,
                       y2_mirror_average=self.clf2.mirror_average)
        if self.colour is not None:
            out.update(colour_accuracy=self.colour.accuracy(images, labels), colour_real_accuracy=self.real_colour_accuracy)
        return out


def colour_baseline(folder: Path, train: PreprocessedDataset) -> ColourBaseline:
    """The colour-only classifier saved in ``folder``, fitted on the training split first if it is not there."""
    if not (folder / COLOUR_CONFIG).exists():
        ColourBaseline(train.num_classes).fit(np.asarray(train.images), np.asarray(train.labels)).save(
            folder, {"data_dir": str(train.root)})
    return ColourBaseline.load(folder)


def samples_path(args: argparse.Namespace, name: str, budget: float) -> Path:
    """Where a row's scored images are kept (beside its run), so another yardstick can score them later."""
    return args.runs / name / f"samples_{budget:g}min.npz"


def rescore(args: argparse.Namespace, ys: Yardstick) -> int:
    """Score every row again by the second yardstick and the colour baseline (as they are now: a yardstick
    may have changed, e.g. to mirror averaging) from the images kept beside each run, and add free text
    (``--free-text``) to rows without it from the run's checkpoint at that budget. Rows whose images or
    checkpoint were not kept are listed and left as they are."""
    rows, changed, missing = read_results(args.results), 0, []
    for r in rows:
        if r.get("suite", args.suite.name) != args.suite.name or "reference" in r:
            continue
        path = samples_path(args, r["recipe"], r["budget_min"])
        ckpt = args.runs / r["recipe"] / "checkpoints" / f"ckpt-{r['steps']:07d}"
        if not path.exists() and ckpt.is_dir() and r["recipe"] != "diffusers":
            # a row scored before images were kept: sample them again from its checkpoint (same seeds,
            # same path), and check that the first yardstick still gives the recorded figure
            images, labels, _ = sample_ours(ckpt, ys)
            again = ys.score(images, labels)["accuracy"]
            print(f"{r['recipe']} @ {r['budget_min']:g}: images sampled again from {ckpt.name}: top-1 {again:.1%} "
                  f"(recorded {r['accuracy']:.1%})", flush=True)
            np.savez_compressed(path, images=images, labels=labels)
        if not path.exists():
            missing.append(f"{r['recipe']} @ {r['budget_min']:g}")
            continue
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
        r.update(ys.score_extra(images, labels))
        if ys.free_text and "free_text" not in r and r["recipe"] != "diffusers":
            if ckpt.is_dir():
                r.update(ys.score_free_text(store.load_model(ckpt), images, labels))
            else:
                missing.append(f"{r['recipe']} @ {r['budget_min']:g} (free text: no {ckpt.name})")
        changed += 1
    args.results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"rescored {changed} rows; no kept images for: {', '.join(missing) or 'none'}")
    return 0


def sample_ours(ckpt: Path, ys: Yardstick) -> tuple[np.ndarray, np.ndarray, float]:
    lm = store.load_model(ckpt)  # a checkpoint folder: its EMA weights
    return E.generate_per_class(lm, "dpm++", 20, ys.per_class, ys.guidance, ys.seed, 50, torch.device("cpu"), ys.encode,
                                precision=ys.precision)


# --------------------------------------------------------------------------- ours
def train_ours(name: str, budget_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = T.make_config("default", **args.suite.recipes[name], run_name=name, data_dir=str(args.data), out_dir=str(args.runs),
                        seed=args.seed, stop_at_step=budget_steps, sample_every=0, ckpt_every=500,
                        keep_checkpoints=2, log_every=25)
    ckpt = T.train(cfg)
    meta = json.loads((ckpt / store.CONFIG_FILE).read_text())
    return {"ckpt": ckpt, "steps": int(meta["step"]), "images_seen": int(meta["images_seen"]),
            "train_minutes": float(meta["train_seconds"]) / 60, "parameters": int(meta["parameters"])}


# --------------------------------------------------------------------------- the diffusers peer
PEER = dict(batch_size=64, lr=2e-4, warmup_steps=500, label_dropout=0.1, ema_max_decay=0.9999, ema_power=0.75)


def peer_unet(num_classes: int) -> torch.nn.Module:
    return diffusers_unet(32, num_classes + 1, dropout=0.1)  # + the null class for guidance


def peer_ema_decay(step: int) -> float:
    """diffusers' EMAModel.get_decay with use_ema_warmup=True, inv_gamma=1, power=3/4."""
    return min(PEER["ema_max_decay"], max(0.0, 1 - (1 + step) ** -PEER["ema_power"]))


def train_peer(budget_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    torch.manual_seed(args.seed)
    data = PreprocessedDataset(args.data, split="train")
    images, labels = np.asarray(data.images), np.asarray(data.labels)
    null = data.num_classes
    model = peer_unet(data.num_classes).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=PEER["lr"], weight_decay=1e-2)  # AdamW's own default decay
    sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=PEER["warmup_steps"], num_training_steps=100_000)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    ckpt_root = args.runs / "diffusers" / "checkpoints"
    step, train_s = 0, 0.0
    last = store.latest_checkpoint(ckpt_root)
    if last is not None:
        st = store.load_checkpoint(last, model, ema, opt)
        step, train_s = st.step, float(st.config["train_seconds"])
        torch.set_rng_state(st.rng["torch"])
    b = PEER["batch_size"]
    g = np.random.default_rng([args.seed, step])
    bar = tqdm(desc="diffusers", total=budget_steps, initial=step, dynamic_ncols=True)
    while step < budget_steps:
        t0 = time.perf_counter()
        idx = np.sort(g.choice(len(labels), b, replace=False))
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
        flip = torch.rand(b) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = torch.from_numpy(labels[idx].astype(np.int64))
        y = torch.where(torch.rand(b) < PEER["label_dropout"], torch.full_like(y, null), y)
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (b,))
        loss = F.mse_loss(model(noise_sched.add_noise(x, noise, t), t, class_labels=y).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:  # the example's get_scheduler("cosine") LR, at this step
            group["lr"] = PEER["lr"] * sched.lr_lambdas[0](step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            d = peer_ema_decay(step)
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - d)
        step += 1
        train_s += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 500 == 0 or step == budget_steps:
            meta = {"train_seconds": train_s, "images_seen": step * b, "parameters": sum(p.numel() for p in model.parameters())}
            last = store.save_checkpoint(ckpt_root, step, model, ema, opt, meta, rng={"torch": torch.get_rng_state()},
                                         keep=2)
    bar.close()
    meta = json.loads((last / store.CONFIG_FILE).read_text())
    return {"ckpt": last, "steps": step, "images_seen": step * b, "train_minutes": train_s / 60,
            "parameters": int(meta["parameters"])}


@torch.no_grad()
def sample_peer(ckpt: Path, ys: Yardstick) -> tuple[np.ndarray, np.ndarray, float]:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    model = peer_unet(len(ys.prompts))
    w = store.load_tensors(ckpt / store.WEIGHTS_FILE)
    model.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("ema.")})
    model.eval()
    base = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    labels = np.repeat(np.arange(len(ys.prompts)), ys.per_class)
    out, start = [], time.perf_counter()
    for i in tqdm(range(0, len(labels), 50), desc="diffusers dpm++ 20", dynamic_ncols=True):
        y = torch.from_numpy(labels[i:i + 50])
        n = len(y)
        x = torch.cat([torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(ys.seed + (i + k) % ys.per_class))
                       for k in range(n)])  # the j-th image of every class from seed + j, as generate_per_class
        sch = DPMSolverMultistepScheduler.from_config(base.config)
        sch.set_timesteps(20)
        for t in sch.timesteps:
            eps = model(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, len(ys.prompts))])).sample
            cond, uncond = eps.chunk(2)
            x = sch.step(uncond + ys.guidance * (cond - uncond), t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out), labels, time.perf_counter() - start


# --------------------------------------------------------------------------- throughput, interleaved
def step_fns(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One training step per recipe (forward, loss, backward, clip, AdamW), on real batches."""
    data = PreprocessedDataset(args.data, split="train")
    images = torch.from_numpy(np.asarray(data.images[:256])).permute(0, 3, 1, 2).float() / 127.5 - 1
    emb = data.class_embeddings[torch.from_numpy(np.asarray(data.labels[:256]))]
    fns = {}
    for name in names:
        if name == "diffusers":
            from diffusers import DDPMScheduler

            model, b = peer_unet(data.num_classes).train(), PEER["batch_size"]
            opt = torch.optim.AdamW(model.parameters(), lr=PEER["lr"])
            ns = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")

            def fn(model=model, opt=opt, b=b, ns=ns):
                x, y, noise = images[:b], torch.randint(0, data.num_classes, (b,)), torch.randn(b, 3, 32, 32)
                t = torch.randint(0, 1000, (b,))
                F.mse_loss(model(ns.add_noise(x, noise, t), t, class_labels=y).sample, noise).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            cfg = T.make_config("default", **args.suite.recipes[name])
            model = ConditionalUNet(cfg.unet_config(32)).train().to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)
            terms, b = cfg.diffusion_config().terms(), cfg.batch_size
            bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and D.fast_bf16(torch.device("cpu")))

            def fn(model=model, opt=opt, b=b, cfg=cfg, terms=terms, bf16=bf16):
                x = images[:b].contiguous(memory_format=torch.channels_last)
                t = D.sample_timesteps(1000, b, method=cfg.timestep_sampling)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = D.training_loss(model, terms, x, emb[:b], prediction_type=cfg.prediction_type,
                                           drop_cond=torch.rand(b) < 0.15, min_snr_gamma=cfg.min_snr_gamma or None, t=t)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        fns[name] = (fn, b)
    return fns


def throughput(names: list[str], args: argparse.Namespace, rounds: int = 8, steps: int = 3) -> dict[str, dict[str, float]]:
    """Training images/s of each recipe, round-robin in one process (load hits all alike): min/median/max."""
    fns = step_fns(names, args)
    for fn, _ in fns.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, b = fns[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(steps * b / (time.perf_counter() - t0))
    # "best" (the fastest round) estimates the clean rate: background load only ever slows a round down.
    return {n: {"min": min(v), "median": float(np.median(v)), "max": max(v), "best": max(v)} for n, v in rates.items()}


def merge_throughput(path: Path, measured: dict[str, dict[str, float]], reference: str, threads: int) -> dict[str, Any]:
    """Add newly measured recipes to the throughput file without moving the recipes already in it.

    Rows already recorded were budgeted at their recorded rate; re-measuring them would change what
    "60 minutes" means for the next row. So when the reference recipe (the first measured) is already
    recorded, each new recipe is stored at the recorded reference rate times the ratio measured now,
    interleaved with it in one process (the ratio is what a noisy machine measures well).
    """
    old = json.loads(path.read_text()) if path.exists() else None
    if old is None or reference not in old["images_per_s"]:
        return {"threads": threads, "load_avg": load_avg(), "images_per_s": measured}
    ref_old, ref_now = old["images_per_s"][reference]["best"], measured[reference]["best"]
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for name, r in measured.items():
        if name in old["images_per_s"]:
            continue
        ratio = r["best"] / ref_now
        old["images_per_s"][name] = {k: v * ref_old / ref_now for k, v in r.items()} | {
            "note": f"{reference}'s recorded figures x {ratio:.3f}, the ratio measured interleaved with it at "
                    f"{threads} threads ({reference} {ref_now:.1f}, {name} {r['best']:.1f} images/s, {stamp})"}
    return old


# --------------------------------------------------------------------------- results
def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(results: list[dict[str, Any]], plot: Path | None, reference: dict[str, Any] | None = None,
           title: str = SUITES["default10"].title) -> str:
    rows = sorted(results, key=lambda r: (r["recipe"], r["budget_min"]))

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    second = any("y2_accuracy" in r or "colour_accuracy" in r for r in rows)
    extra_head = " top-1 (2nd yardstick) | FD (2nd) | colour-only top-1 |" if second else ""
    free = any("free_text" in r for r in rows)
    extra_head += " free text / class names (1st, 2nd yardstick) |" if free else ""
    lines = ["| recipe | CPU-minutes | train img/s (clean) | steps | images seen | class accuracy | top-5 | FD | "
             "classes apart |" + extra_head + " wall minutes (load avg) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if second else "")
             + (" ---: |" if free else "") + " ---: |"]

    def share(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    for r in rows:
        extra = (f" {pct(r.get('y2_accuracy'))} | {r['y2_fd']:.1f} |" if "y2_fd" in r else " - | - |") + \
            f" {pct(r.get('colour_accuracy'))} |" if second else ""
        if free:
            extra += (f" {share(r.get('free_text_ratio'))}, {share(r.get('free_text_ratio_y2'))} |"
                      if "free_text" in r else " - |")
        lines.append(f"| {r['recipe']} | {r['budget_min']:g} | {r['clean_images_per_s']:.1f} | {r['steps']:,} | "
                     f"{r['images_seen']:,} | {r['accuracy']:.1%} ± {r['accuracy_se']:.1%} | {pct(r.get('top5'))} | "
                     f"{r['fd']:.1f} ± {r['fd_sd']:.1f} | {pct(r.get('pairs_apart'))} |{extra} "
                     f"{r['train_minutes']:.1f} ({r.get('load_avg', float('nan')):.1f}) |")
    if reference:
        lines.append(f"| *{reference['reference']} (shipped; the target)* | {reference['train_minutes']:.0f} (wall) | - | "
                     f"{reference['steps'] or 0:,} | {reference['images_seen'] or 0:,} | {reference['accuracy']:.1%} ± "
                     f"{reference['accuracy_se']:.1%} | {pct(reference.get('top5'))} | {reference['fd']:.1f} ± "
                     f"{reference['fd_sd']:.1f} | {pct(reference.get('pairs_apart'))} | - |")
    if plot is not None and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for name in sorted({r["recipe"] for r in rows}):
            rr = [r for r in rows if r["recipe"] == name]
            for col, xkey, xlabel in ((0, "clean_minutes", "training minutes (2 CPU cores, clean throughput)"),
                                      (1, "images_seen", "images seen")):
                xs = [r[xkey] for r in rr]
                axes[0, col].errorbar(xs, [100 * r["accuracy"] for r in rr], yerr=[100 * r["accuracy_se"] for r in rr],
                                      marker="o", capsize=3, label=name)
                axes[1, col].errorbar(xs, [r["fd"] for r in rr], yerr=[r["fd_sd"] for r in rr], marker="o", capsize=3,
                                      label=name)
                axes[1, col].set_xlabel(xlabel)
        if reference:
            for col in (0, 1):
                axes[0, col].axhline(100 * reference["accuracy"], color="k", ls="--", lw=1,
                                     label=f"{reference['reference']} ({reference['train_minutes']:.0f} min)")
                axes[1, col].axhline(reference["fd"], color="k", ls="--", lw=1)
                axes[1, col].axhline(1.5 * reference["fd"], color="grey", ls=":", lw=1, label="1.5x its FD")
        axes[0, 0].set_ylabel("yardstick class accuracy (%)")
        axes[1, 0].set_ylabel("FD to held-out (classifier features)")
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        axes[1, 0].set_yscale("log")
        axes[1, 1].set_yscale("log")
        axes[0, 0].legend(fontsize=8)
        axes[1, 0].legend(fontsize=8)
        fig.suptitle(f"CPU speedrun: {title}")
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=100)
        plt.close(fig)
    return "\n".join(lines)


# Over 100 lines on purpose: a benchmark script's flags and its three modes (throughput, reference, runs).
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="default10",
                   help="the task: default10 (default_model's 10 classes, the first screen) or tiny200 (all 200 "
                        "classes, with the 200-class yardstick); sets the defaults of the options below")
    p.add_argument("--recipes", default=None, help="comma-separated, from the suite's recipes "
                   f"(default10: {sorted(RECIPES_10)}; tiny200: {sorted(RECIPES_200)})")
    p.add_argument("--budgets", default="15", help="cumulative training minutes to score at, e.g. 15,30,60")
    p.add_argument("--data", type=Path, default=None, help="the suite's preprocessed data (default: the suite's)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="folder with the yardstick classifier.safetensors/json (default: the suite's)")
    p.add_argument("--runs", type=Path, default=None, help="run folders (default output_ImageNet/<results stem>)")
    p.add_argument("--results", type=Path, default=None, help="JSON lines (default benchmarks/results/<stem>.jsonl)")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--classifier2", type=Path, default=None,
                   help="the second yardstick's folder (a different network and augmentation): its top-1, top-5 and "
                        "FD are scored beside the first's")
    p.add_argument("--colour", type=Path, default=None,
                   help="folder of the colour-only baseline (fitted there on the training split if missing): how much "
                        "of 'recognised' colour alone explains")
    p.add_argument("--free-text", type=Path, default=None, metavar="TSV",
                   help="also score free text: prompt<TAB>class lines worded unlike the training texts "
                        "(e.g. assets/paraphrases_unlike.tsv), --per-class images each")
    p.add_argument("--rescore", action="store_true",
                   help="only score the recorded rows again by --classifier2/--colour (from the images kept beside "
                        "runs) and add --free-text to rows without it (from the run's checkpoint at that budget)")
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="guidance scale the samples are scored at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="only score a store model (e.g. default_model) with the same yardstick, as the target line")
    p.add_argument("--throughput", action="store_true",
                   help="only measure each recipe's training images/s, interleaved in one process")
    args = p.parse_args(argv)
    suite = args.suite = SUITES[args.suite]
    args.recipes = args.recipes or ("current,diffusers,fast" if suite.name == "default10" else "slim,diffusers")
    args.data = args.data or ROOT / suite.data
    args.classifier = args.classifier or ROOT / suite.classifier
    args.runs = args.runs or ROOT / "output_ImageNet" / suite.results
    args.results = args.results or ROOT / "benchmarks/results" / f"{suite.results}.jsonl"
    args.plot = args.plot or ROOT / "benchmarks/results" / f"{suite.results}.png"
    args.per_class = args.per_class or suite.per_class
    args.guidance = suite.guidance if args.guidance is None else args.guidance
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ref_path = args.results.with_name(f"{suite.results}_reference.json")
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else None
    if args.report:
        print(report(read_results(args.results), args.plot, reference, suite.title))
        return 0
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if args.throughput:
        names = [n.strip() for n in args.recipes.split(",") if n.strip()]
        res = throughput(names, args)
        base = res[names[0]]["best"]
        print(f"training images/s, {args.threads} threads, interleaved, load {load_avg():.1f}:")
        for n, r in res.items():
            print(f"  {n:20s} best {r['best']:6.1f}  (median {r['median']:.1f}, min {r['min']:.1f})  "
                  f"{r['best'] / base:.2f}x {names[0]}")
        path = args.results.with_name(f"{suite.results}_throughput.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merge_throughput(path, res, names[0], args.threads), indent=2))
        return 0
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in suite.recipes]
    if unknown:
        p.error(f"unknown recipes {unknown} for suite {suite.name}; choose from {sorted(suite.recipes)}")
    budgets = sorted(float(b) for b in args.budgets.split(","))
    if not (args.data / "train_images.npy").exists():
        p.error(f"{args.data} is missing: python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 32 "
                f"--classes assets/default_classes.txt --val-fraction 0.04 --text-variants basic --out {args.data}")
    tp_path = args.results.with_name(f"{suite.results}_throughput.json")
    rates = json.loads(tp_path.read_text())["images_per_s"] if tp_path.exists() else {}
    if any(n not in rates for n in names):
        p.error(f"no clean throughput for {[n for n in names if n not in rates]} in {tp_path}: measure it first, "
                f"on an otherwise idle machine: python -m benchmarks.bench_speedrun --throughput --recipes {','.join(names)}")
    ys = Yardstick(args.data, args.classifier, args.per_class, args.seed, args.guidance, suite.precision,
                   second=args.classifier2, colour=args.colour, free_text=args.free_text)
    print(f"yardstick: {ys.real_accuracy:.1%} on {len(ys.val_pred)} held-out real images"
          + (f"; second yardstick {ys.real_accuracy2:.1%}" if ys.clf2 is not None else "")
          + (f"; colour only {ys.real_colour_accuracy:.1%}" if ys.colour is not None else ""), flush=True)
    if args.rescore:
        return rescore(args, ys)
    if args.reference:
        lm = store.load_model(args.reference)
        images, labels, secs = E.generate_per_class(lm, "dpm++", 20, ys.per_class, ys.guidance, ys.seed, 50,
                                                    torch.device("cpu"), ys.encode, precision=ys.precision)
        cfg = lm.config
        row = {"reference": args.reference, "steps": cfg.get("step"), "images_seen": cfg.get("images_seen"),
               "train_minutes": (cfg.get("train_seconds") or 0) / 60, **ys.score(images, labels),
               "images": int(len(images)), "real_accuracy": ys.real_accuracy,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = args.results.with_name(f"{suite.results}_reference.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2))
        print(json.dumps(row, indent=2))
        return 0
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        for budget in budgets:
            if any(r["recipe"] == name and r["budget_min"] == budget for r in read_results(args.results)):
                continue
            wall0, load0 = time.time(), load_avg()
            # The budget in steps: what this recipe trains in `budget` minutes at its clean, interleaved
            # throughput. A busy machine then slows a run down without changing what it learns.
            img_s = rates[name]["best"]
            batch = PEER["batch_size"] if name == "diffusers" else recipe_config(args.suite, name).batch_size
            steps = max(1, round(budget * 60 * img_s / batch))
            run = train_peer(steps, args) if name == "diffusers" else train_ours(name, steps, args)
            if run["steps"] < steps:  # stopped early (Ctrl-C, SIGTERM): its checkpoint resumes next time
                print(f"{name} stopped at step {run['steps']} of {steps}; rerun to resume", flush=True)
                return 1
            images, labels, secs = (sample_peer if name == "diffusers" else sample_ours)(run["ckpt"], ys)
            scores = ys.score(images, labels)
            if ys.free_text and name != "diffusers":  # the peer has class indices, no text
                scores.update(ys.score_free_text(store.load_model(run["ckpt"]), images, labels))
            samples_path(args, name, budget).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(samples_path(args, name, budget), images=images, labels=labels)
            row = {"recipe": name, "budget_min": budget, **{k: v for k, v in run.items() if k != "ckpt"},
                   "clean_images_per_s": img_s, "clean_minutes": run["images_seen"] / img_s / 60,
                   **scores, "sample_s_per_image": secs / len(images),
                   "images": int(len(images)), "load_avg": max(load0, load_avg()), "threads": args.threads,
                   "recipe_overrides": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in args.suite.recipes[name].items()}, "suite": args.suite.name,
                   "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "wall_minutes": (time.time() - wall0) / 60}
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} @ {budget:g} min: {row['steps']} steps, {row['images_seen']} images, accuracy "
                  f"{row['accuracy']:.1%} ± {row['accuracy_se']:.1%}, FD {row['fd']:.1f} ± {row['fd_sd']:.1f}", flush=True)
    print(report(read_results(args.results), args.plot, reference, suite.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
