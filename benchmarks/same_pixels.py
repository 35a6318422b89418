#!/usr/bin/env python3
"""Same seeds, same pixels: fingerprint a fixed set of generations made through every entry point.

    python -m benchmarks.same_pixels record --repo . --out before.json        # on the old code
    python -m benchmarks.same_pixels record --repo . --out after.json         # on the new code
    python -m benchmarks.same_pixels compare before.json after.json

Only the entry points are driven (``diffusion.py sample``, ``diffusion.py figures --studio``,
``plot_func.py``, and the app's REST endpoints ``/generate_studio``, ``/grid``, ``/interpolate``
through ``web.py`` in a subprocess), never the internals, so the same script runs against a
checkout of any layout: a restructure that changes no behaviour leaves every fingerprint equal.
Each fingerprint is the sha256 of an image's decoded pixels (every frame of a GIF) and, for a
PNG, of its recipe text. Runs use one thread (``OMP_NUM_THREADS=1``), so fp32 reductions are in
the same order run after run on the same machine; compare two records from one machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

SAMPLE_RUNS = {  # name -> `diffusion.py sample` flags (all on default_model, the shipped default)
    "cli_dpm": ["--class", "goldfish", "--class", "pizza", "--n", "2", "--seed", "3", "--precision", "fp32"],
    "cli_dpm_bf16": ["--prompt", "a photo of a school bus", "--n", "2", "--seed", "5", "--precision", "bf16"],
    "cli_ddim_interval": ["--class", "monarch", "--n", "2", "--sampler", "ddim", "--steps", "12", "--seed", "1",
                          "--guidance-interval", "0.28,5.42", "--precision", "fp32"],
    "cli_ddpm": ["--class", "orange", "--n", "1", "--sampler", "ddpm", "--steps", "25", "--seed", "7",
                 "--precision", "fp32"],
    "cli_variation_snap": ["--prompt", "a yellow vehicle full of children", "--n", "2", "--seed", "2",
                           "--variation-seed", "40", "--variation-strength", "0.3", "--snap", "0.5",
                           "--precision", "fp32"],
    "cli_blend_gif": ["--prompt", "a photo of a goldfish:0.6 | a photo of a coral reef:0.4", "--n", "2", "--seed", "9",
                      "--precision", "fp32", "--gif"],
    "cli_upscale": ["--class", "ladybug", "--n", "1", "--seed", "4", "--upscale", "sr64", "--upscale-steps", "4",
                    "--precision", "fp32"],
}
INIT_RUN = ["--class", "sports car", "--n", "1", "--seed", "0", "--strength", "0.6", "--precision", "fp32"]


def fingerprint(path: Path) -> dict[str, str]:
    """sha256 of the decoded pixels (all frames of a GIF) and of a PNG's recipe text."""
    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        text = im.info.get("parameters") if path.suffix == ".png" else None
    out = {"pixels": hashlib.sha256(b"".join(f.tobytes() for f in frames)).hexdigest()[:16],
           "shape": "x".join(map(str, frames[0].shape)) + (f"x{len(frames)}f" if len(frames) > 1 else "")}
    if text is not None:
        out["recipe"] = text.replace("\n", " | ")
    return out


def run(cmd: list[str], repo: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_runs(repo: Path, env: dict[str, str], work: Path, init_png: Path) -> dict[str, dict[str, str]]:
    """The app's endpoints in a web.py subprocess, called as a REST client would."""
    from gradio_client import Client, handle_file

    port = free_port()
    log = open(work / "web.log", "w")
    server = subprocess.Popen([sys.executable, "web.py", "--port", str(port), "--out", str(work / "app_out"),
                               "--threads", "1"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"web.py did not start; see {work / 'web.log'}")
                time.sleep(2)
        prints: dict[str, dict[str, str]] = {}
        gallery, *_rest, files = client.predict(
            "a photo of a jellyfish", "default_model", "DPM-Solver++", 20, 3.0, 11, 2, False, 50, 0.2,
            handle_file(str(init_png)), 0.7, 0.0, "fp32", "", "off", api_name="/generate_studio")
        for i, item in enumerate(gallery):
            prints[f"app_generate_{i}"] = fingerprint(Path(item["image"]))
        image, files, _status = client.predict(
            "a photo of a pizza", "default_model", "DPM-Solver++", 10, 3.0, 2, "guidance", "1, 4", "steps", "6, 10",
            api_name="/grid")
        for f in sorted(files, key=lambda f: Path(f).name):
            prints[f"app_grid_{Path(f).name}"] = fingerprint(Path(f))
        out = client.predict("a photo of a goldfish", "a photo of a alp", 1, 2, 4, "default_model", "DPM-Solver++", 10,
                             3.0, api_name="/interpolate")
        for f in sorted(out[2], key=lambda f: Path(f).name):
            if Path(f).suffix in (".png", ".gif"):
                prints[f"app_interpolate_{Path(f).name}"] = fingerprint(Path(f))
        return prints
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def record(repo: Path, out: Path, with_app: bool) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    prints: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, flags in SAMPLE_RUNS.items():
            print(f"[same_pixels] sample {name}", flush=True)
            run([sys.executable, "diffusion.py", "sample", *flags, "--out", str(work / name)], repo, env)
            for f in sorted((work / name).iterdir()):
                prints[f"{name}_{f.name.split('_', 1)[1]}"] = fingerprint(f)
        # img2img from the first goldfish PNG above, and regenerating a PNG from its own recipe
        init = work / "init.png"  # a fixed name: each recipe records the init image's file name
        shutil.copyfile(sorted((work / "cli_dpm").glob("*_00_seed3.png"))[0], init)
        run([sys.executable, "diffusion.py", "sample", *INIT_RUN, "--init-image", str(init), "--out",
             str(work / "cli_img2img")], repo, env)
        for f in sorted((work / "cli_img2img").iterdir()):
            prints[f"cli_img2img_{f.name.split('_', 1)[1]}"] = fingerprint(f)
        run([sys.executable, "diffusion.py", "sample", "--from-png", str(init), "--out", str(work / "from_png")],
            repo, env)
        for f in sorted((work / "from_png").glob("*_00_*.png")):
            prints["cli_from_png"] = fingerprint(f)
        print("[same_pixels] figures --studio", flush=True)
        run([sys.executable, "diffusion.py", "figures", "--model", "default_model", "--classes", "2", "--per-class",
             "2", "--studio", "--image", str(init), "--out", str(work / "figures")], repo, env)
        for f in sorted((work / "figures").iterdir()):
            prints[f"figures_{f.name}"] = fingerprint(f)
        print("[same_pixels] plot_func", flush=True)
        run([sys.executable, "plot_func.py", "--image", str(init), "--out", str(work / "plots")], repo, env)
        for f in sorted((work / "plots").iterdir()):
            prints[f"plot_func_{f.name}"] = fingerprint(f)
        if with_app:
            print("[same_pixels] web.py", flush=True)
            prints.update(app_runs(repo, env, work, init))
    out.write_text(json.dumps(prints, indent=1, sort_keys=True))
    print(f"[same_pixels] {len(prints)} fingerprints -> {out}")


def compare(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    differ = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for k in differ:
        print(f"DIFFERS {k}:\n  before {before.get(k)}\n  after  {after.get(k)}")
    print(f"{len(before)} before, {len(after)} after, {len(differ)} differ")
    return 1 if differ else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="make the generations and write their fingerprints")
    r.add_argument("--repo", default=".", help="checkout to run (its entry points, its .venv's python)")
    r.add_argument("--out", required=True)
    r.add_argument("--no-app", action="store_true", help="skip the web.py endpoints")
    c = sub.add_parser("compare", help="list the fingerprints that differ; exit 1 if any")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args()
    if args.cmd == "compare":
        return compare(Path(args.before), Path(args.after))
    record(Path(args.repo).resolve(), Path(args.out).resolve(), not args.no_app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
