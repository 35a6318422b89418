#!/usr/bin/env python3
"""The GPU session's script: carry the data, train a recipe in bf16 with torch.compile, bring back
weights, samples and a log with images/s and MFU.

A GPU is lent to some sessions only, for about 15 minutes of device time in all, and what
travels to it is the working tree plus at most 64 MiB (README of the device tool). The
preprocessed arrays do not fit (tiny200 at 32 px is 301 MB of uint8), so ``pack`` stores the
training split as JPEG bytes (quality 90, 4:4:4: about 1.3 KB an image at 32 px) in one ``.npz``
(flat bytes + offsets, no pickles), as many images per class as the byte budget allows, with
the class list and the text embeddings (fp16). ``train`` unpacks it into the usual
preprocessed layout (16 processes decode) and runs the project's own training loop.

    # here, before the GPU call (once; .gpu/ is git-ignored):
    python -m benchmarks.gpu_train pack --data data/tiny200_32 --out .gpu/tiny200_32.npz --shards 4
    # the device call (carry .gpu), one command, everything that comes back is under $OUT:
    python3 -m benchmarks.gpu_train train --packed .gpu/tiny200_32.npz --minutes 9 --out $OUT
    # rehearsal on this CPU (one minute of training, the same code path minus CUDA):
    python -m benchmarks.gpu_train train --packed .gpu/tiny200_32.npz --minutes 1 --out /tmp/gpu_rehearsal \\
        --device cpu --no-compile --batch-size 64

MFU is the training FLOPs per image (forward + backward, counted by
``torch.utils.flop_counter`` on the real network) times images/s, over the accelerator's dense
bf16 peak (``--peak-tflops``; the H200's datasheet says about 990, the device tool measured
about 790 on an 8192^3 matmul: both ratios are printed).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from dataprep.dataset import PreprocessedDataset  # noqa: E402
from models import ConditionalUNet, count_parameters  # noqa: E402
from training import loop as T  # noqa: E402
import core as D  # noqa: E402
from engine.export import export_run  # noqa: E402
from engine import store  # noqa: E402

log = logging.getLogger("gpu_train")
H200_PEAK_TFLOPS = {"datasheet": 990.0, "measured 8192^3 bf16 matmul": 790.0}
# The recipe on the GPU: the CPU recipe's network with a batch that fills the device, the learning
# rate scaled by sqrt(batch ratio) (AdamW), bf16 autocast and torch.compile.
GPU_OVERRIDES = dict(batch_size=512, lr=2e-3, warmup_steps=300, precision="bf16", compile=True, sample_every=0,
                     ckpt_every=1000, keep_checkpoints=1, log_every=50)


# --------------------------------------------------------------------------- pack (here)
DEVICE_TREE_LIMIT_MIB = 64  # what travels to the device machine: tracked files + carried paths


def carry_left_mib() -> float:
    """MiB left for carried files beside the tracked working tree (which always travels)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    tracked = sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())
    return DEVICE_TREE_LIMIT_MIB - tracked / 2 ** 20


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def pack(data_dir: Path, out: Path, megabytes: float, quality: int = 90, seed: int = 0, shards: int = 1) -> list[Path]:
    """Write the train split of ``data_dir`` as JPEGs into ``shards`` files of at most ``megabytes``
    each (``out`` itself for one; ``NAME.partK.npz`` for several), the same number of images per
    class, as many as fit, with the embeddings in the first file. Several shards travel in several
    device calls (each call's carry is capped; files carried earlier stay on a warm machine)."""
    data = PreprocessedDataset(data_dir, split="train")
    labels = np.asarray(data.labels)
    embeddings = {"class_embeddings": data.class_embeddings.numpy().astype(np.float16)}
    if data.template_embeddings is not None:
        embeddings["template_embeddings"] = data.template_embeddings.numpy().astype(np.float16)
    fixed = sum(v.nbytes for v in embeddings.values()) + 200_000  # + classes.json, offsets, labels
    probe = np.random.default_rng(seed).choice(len(labels), min(500, len(labels)), replace=False)
    per_image = float(np.mean([len(encode_jpeg(np.asarray(data.images[i]), quality)) for i in probe])) + 10
    budget = shards * megabytes * 2 ** 20 - fixed - (shards - 1) * 200_000
    per_class = int(min(np.bincount(labels).min(), budget / per_image / data.num_classes))
    if per_class < 1:
        raise SystemExit(f"{megabytes} MB holds no images beside the embeddings ({fixed / 2**20:.1f} MB): raise --megabytes")
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(data.num_classes)])
    meta = {"classes": data.classes, "prompt_template": json.loads((Path(data_dir) / "classes.json").read_text())
            .get("prompt_template"), "image_size": data.image_size, "source": str(data_dir), "per_class": per_class,
            "quality": quality, "shards": shards}
    # The first shard carries the embeddings, so it takes fewer images; the others split the rest.
    first_share = max(0.0, 1 - fixed / (megabytes * 2 ** 20)) if shards > 1 else 1.0
    weights = np.array([first_share] + [1.0] * (shards - 1))
    bounds = np.round(np.concatenate([[0], np.cumsum(weights) / weights.sum()]) * per_class).astype(int)
    paths = []
    for k in range(shards):
        idx = np.sort(picks[:, bounds[k]:bounds[k + 1]].ravel())
        blobs = [encode_jpeg(np.asarray(data.images[i]), quality) for i in idx]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        path = out if shards == 1 else out.with_name(f"{out.name.removesuffix('.npz')}.part{k + 1}.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                 labels=labels[idx].astype(np.int16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **(embeddings if k == 0 else {}))
        paths.append(path)
        print(f"{path}: {len(idx)} images, {path.stat().st_size / 2**20:.1f} MB")
    total = int(picks.size)
    print(f"packed {total} images ({per_class} per class of {data.num_classes}) from {data_dir} in {shards} file(s) "
          f"({per_image - 10:.0f} bytes per image, quality {quality})")
    return paths


# --------------------------------------------------------------------------- unpack + train (there)
def _decode(chunk: tuple[bytes, list[int]]) -> np.ndarray:
    raw, offsets = chunk
    return np.stack([np.asarray(Image.open(io.BytesIO(raw[a:b])).convert("RGB"))
                     for a, b in zip(offsets[:-1], offsets[1:])])


def unpack(packed: list[Path], out_dir: Path, workers: int) -> Path:
    """The packed file(s) as a preprocessed folder (train split; the val split is left empty)."""
    shards = [np.load(p, allow_pickle=False) for p in packed]
    metas = [json.loads(z["meta"].tobytes()) for z in shards]
    if len({m["shards"] for m in metas}) != 1 or len(shards) != metas[0]["shards"]:
        raise SystemExit(f"expected all {metas[0]['shards']} shards of one pack, got {[str(p) for p in packed]}")
    first = next(z for z in shards if "class_embeddings" in z.files)
    chunks, labels = [], []
    for z in shards:
        raw, offsets = z["jpeg"].tobytes(), z["offsets"]
        n = len(offsets) - 1
        step = max(1, n // (workers * 4))
        chunks += [(raw[offsets[i]:offsets[min(i + step, n)]], (offsets[i:min(i + step, n) + 1] - offsets[i]).tolist())
                   for i in range(0, n, step)]
        labels.append(z["labels"].astype(np.int64))
    with ProcessPoolExecutor(workers) as pool:
        images = np.concatenate(list(pool.map(_decode, chunks)))
    meta = metas[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "train_images.npy", images)
    np.save(out_dir / "train_labels.npy", np.concatenate(labels))
    size = images.shape[1]
    np.save(out_dir / "val_images.npy", np.zeros((0, size, size, 3), np.uint8))
    np.save(out_dir / "val_labels.npy", np.zeros(0, np.int64))
    np.save(out_dir / "class_embeddings.npy", first["class_embeddings"].astype(np.float32))
    if "template_embeddings" in first.files:
        np.save(out_dir / "template_embeddings.npy", first["template_embeddings"].astype(np.float32))
    (out_dir / "classes.json").write_text(json.dumps({"prompt_template": meta["prompt_template"],
                                                      "classes": meta["classes"]}))
    (out_dir / "manifest.json").write_text(json.dumps({"source": f"packed from {meta['source']}",
                                                       "per_class": meta["per_class"], "quality": meta["quality"]}))
    return out_dir


def flops_per_image(cfg: T.TrainConfig, image_size: int, device: torch.device) -> float:
    """Training FLOPs of one image: forward + backward of the network, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ConditionalUNet(cfg.unet_config(image_size)).to(device)
    x = torch.randn(2, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([10, 500], device=device), torch.randn(2, 384, device=device)).square().mean().backward()
    return counter.get_total_flops() / 2


def sample_grid(model_dir: Path, data_dir: Path, path: Path, device: torch.device, classes: int = 16,
                seeds: int = 2) -> None:
    """Samples of evenly spaced classes (a column per seed) from the exported model, conditioned on the
    data's class embeddings (no text encoder needed there), DPM-Solver++ 20 at guidance 6."""
    lm = store.load_model(model_dir, device=device)
    data = PreprocessedDataset(data_dir)
    picks = np.linspace(0, data.num_classes - 1, classes).round().astype(int)
    cond = data.class_embeddings[np.repeat(picks, seeds)]
    names = [data.classes[i]["name"] for i in np.repeat(picks, seeds)]  # (the recipe's text; cond is what conditions)
    res = D.generate_images(lm.model, lm.diffusion, class_names=names, num_images=len(cond), cond=cond,
                            sampler="dpm++", num_steps=20,
                            guidance_scale=6.0, seeds=np.tile(np.arange(seeds), classes).tolist(), device=device)
    n, size = classes * seeds, res.images.shape[1]
    grid = res.images.reshape(classes // 4, 4 * seeds, size, size, 3).transpose(0, 2, 1, 3, 4)
    Image.fromarray(grid.reshape(classes // 4 * size, 4 * seeds * size, 3)).resize(
        (4 * seeds * size * 2, classes // 4 * size * 2), Image.NEAREST).save(path)
    log.info("wrote %d samples to %s", n, path)


def train_packed(packed: list[Path], out: Path, minutes: float, device: str, compile_: bool, batch_size: int | None,
                 workers: int, recipe: dict[str, Any]) -> dict[str, Any]:
    name = packed[0].name.removesuffix(".npz").split(".part")[0]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_{name}"
    t0 = time.time()
    data_dir = unpack(packed, work / "data", workers)
    unpack_s = time.time() - t0
    overrides = {**GPU_OVERRIDES, **recipe, "compile": compile_, "device": device}
    if batch_size:
        overrides["batch_size"] = batch_size
    cfg = T.make_config("default", **overrides, run_name=name, data_dir=str(data_dir), out_dir=str(work / "runs"),
                        max_minutes=minutes, max_steps=10 ** 7, resume="never")
    ckpt = T.train(cfg)
    meta = json.loads((ckpt / "config.json").read_text())
    rows = [line.split(",") for line in (cfg.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    rates = [float(r[3]) for r in rows]
    # The second half's median: after compilation and warm-up (a rehearsal too short to log: the average)
    steady = float(np.median(rates[len(rates) // 2:])) if rates else meta["images_seen"] / meta["train_seconds"]
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size = PreprocessedDataset(data_dir).image_size
    fpi = flops_per_image(cfg, image_size, dev)
    result = {"packed": [str(p) for p in packed], "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "unpack_seconds": round(unpack_s, 1), "steps": meta["step"], "images_seen": meta["images_seen"],
              "train_minutes": round(meta["train_seconds"] / 60, 2), "images_per_s_steady": round(steady, 1),
              "gflops_per_image": round(fpi / 1e9, 3), "parameters": count_parameters(ConditionalUNet(cfg.unet_config(image_size))),
              "achieved_tflops": round(fpi * steady / 1e12, 2), "recipe": {k: v for k, v in overrides.items()}}
    if dev.type == "cuda":
        result["mfu"] = {k: round(fpi * steady / (v * 1e12), 4) for k, v in H200_PEAK_TFLOPS.items()}
    out.mkdir(parents=True, exist_ok=True)
    # The EMA weights in fp16, as `diffusion.py export` writes them (the device tool brings back files of
    # up to 16 MiB: the slim network is 8.4 MB), with their config; `export` again here puts them in the store.
    export_run(cfg.run_dir, name, overwrite=True, store_root=work / "store", checkpoint=ckpt)  # what `export` calls
    shutil.copy(work / "store" / name / "model.safetensors", out / f"{name}_ema_fp16.safetensors")
    shutil.copy(work / "store" / name / "config.json", out / f"{name}_config.json")
    result["metrics"] = [[int(r[0]), float(r[1]), float(r[3])] for r in rows]  # step, loss, images/s (8 files come back)
    t0 = time.time()
    sample_grid(work / "store" / name, data_dir, out / f"{name}_samples.png", dev)
    result["sample_grid_seconds"] = round(time.time() - t0, 1)
    (out / f"{name}_result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="here: the train split as JPEGs in one .npz within a byte budget")
    pk.add_argument("--data", type=Path, required=True)
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--megabytes", type=float, default=None,
                    help="size of each packed file in MiB (default: what the 64 MiB carry leaves beside the tracked "
                         "files, less 2 MiB)")
    pk.add_argument("--quality", type=int, default=90)
    pk.add_argument("--shards", type=int, default=1, help="files of --megabytes each, carried in successive calls")
    tr = sub.add_parser("train", help="there: unpack and train for --minutes, results into --out")
    tr.add_argument("--packed", type=Path, nargs="+", required=True, help="the pack, or all of its shards")
    tr.add_argument("--out", type=Path, required=True, help="where weights, metrics and the result JSON go ($OUT)")
    tr.add_argument("--minutes", type=float, default=9.0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--no-compile", action="store_true")
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    tr.add_argument("--recipe", default="{}", help="JSON overrides of the training preset (the speedrun's winner)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "pack":
        pack(args.data, args.out, args.megabytes or carry_left_mib() - 2, args.quality, shards=args.shards)
        return 0
    train_packed(args.packed, args.out, args.minutes, args.device, not args.no_compile, args.batch_size, args.workers,
                 json.loads(args.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
