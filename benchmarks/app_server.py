"""A tiny model store and data folder, and ``web.py`` in a subprocess on a free loopback port: what the app benchmarks and the app tests
start (killed with the process that started it, even when that one is killed)."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import DiffusionConfig
from engine import store as ms
from models import ConditionalUNet, UNetConfig

READY_TIMEOUT_S = float(os.environ.get("WEB_TEST_READY_TIMEOUT", "180"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), NO_PROXY="*",
               no_proxy="*")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)  # loopback only
    return env


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the test process dies, so a killed or
    timed-out pytest leaves no server behind (its fixtures' teardown never ran)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass
class WebServer:
    """A ``web.py`` subprocess; ``url`` is ready once ``wait_ready`` returns."""

    args: list[str]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    started_at: float = 0.0
    ready_after_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "WebServer":
        self.log_path = self.workdir / f"web-{self.port}.log"
        log = open(self.log_path, "w")
        cmd = [sys.executable, str(ROOT / "web.py"), "--port", str(self.port), *self.args]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "WebServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web.py exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as r:
                    if r.status == 200:
                        self.ready_after_s = time.monotonic() - self.started_at
                        return self
            except urllib.error.HTTPError as e:  # 401/403 under --auth: up, but protected
                if e.code in (401, 403):
                    self.ready_after_s = time.monotonic() - self.started_at
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"web.py not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the process group we created (start_new_session)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSES = [
    {"index": 0, "wnid": "n01443537", "name": "goldfish", "prompt": "a photo of a goldfish"},
    {"index": 1, "wnid": "n01910747", "name": "jellyfish", "prompt": "a photo of a jellyfish"},
    {"index": 2, "wnid": "n02165456", "name": "ladybug", "prompt": "a photo of a ladybug"},
]
TINY_SIZE = 16
AUTH = ("tester", "s3cret-pass")


def make_tiny_data(root: Path, size: int = TINY_SIZE, per_class: int = 4) -> Path:
    """A minimal preprocess.py-style folder (train + val) the Forward tab can pick images from."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = per_class * len(TINY_CLASSES)
    yy, xx = np.mgrid[0:size, 0:size]
    for split in ("train", "val"):
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
        for i in range(n):  # smooth gradients plus a little noise: visibly an "image"
            images[i, ..., 0] = (xx * 255 // (size - 1)).astype(np.uint8)
            images[i, ..., 1] = (yy * 255 // (size - 1)).astype(np.uint8)
            images[i, ..., 2] = rng.integers(0, 256)
        labels = np.repeat(np.arange(len(TINY_CLASSES)), per_class).astype(np.int64)
        np.save(root / f"{split}_images.npy", images)
        np.save(root / f"{split}_labels.npy", labels)
    classes = [dict(c, names=[c["name"]], count=per_class) for c in TINY_CLASSES]
    (root / "classes.json").write_text(json.dumps({"prompt_template": "a photo of a {}", "classes": classes}))
    (root / "manifest.json").write_text(json.dumps({"tool": "tests", "image_size": size}))
    np.save(root / "class_embeddings.npy", np.zeros((len(TINY_CLASSES), 384), dtype=np.float32))
    return root


def make_tiny_store(store: Path, name: str = "tiny", *, data_dir: Path | None = None,
                    sampler_defaults: dict | None = None, seed: int = 0, student_of: str | None = None) -> Path:
    """A 16 px, untrained (but not constant) model in ``store/name``; with ``student_of``, a few-step
    student of that model (a guidance input, LCM 4 steps by default)."""

    torch.manual_seed(seed)
    model = ConditionalUNet(UNetConfig(image_size=TINY_SIZE, base_channels=16, channel_mult=(1, 2),
                                       num_res_blocks=1, attention_resolutions=(8,), head_channels=8, dropout=0.0,
                                       guidance_embed=student_of is not None))
    for p in model.parameters():  # zero-initialised output layers would give constant images
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    extra = {}
    if data_dir is not None:
        extra["data"] = {"dir": str(data_dir), "num_images": 12}
    if student_of is not None:
        extra["distill"] = {"teacher": student_of, "method": "consistency"}
        sampler_defaults = sampler_defaults or {"sampler": "lcm", "steps": 4, "guidance_scale": 3.0}
    if sampler_defaults:
        extra["sampler_defaults"] = sampler_defaults
    cfg = ms.model_config(model.config, DiffusionConfig(), classes=TINY_CLASSES, **extra)
    return ms.save_to_store(name, model.state_dict(), cfg, f"# {name}\n\nA tiny untrained test model.\n",
                            store=store, dtype=torch.float32, overwrite=True)


def make_tiny_sr_store(store: Path, name: str = "tiny_sr") -> Path:
    """A tiny untrained super-resolution model (16 -> 32 px, 3 steps by default) in ``store/name``."""

    torch.manual_seed(2)
    model = ConditionalUNet(UNetConfig(image_size=2 * TINY_SIZE, in_channels=6, aug_embed=True, cond_dim=0,
                                       base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                       attention_resolutions=(), middle_attention=False, head_channels=8, dropout=0.0))
    for p in model.parameters():
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    cfg = ms.model_config(model.config, DiffusionConfig(), classes=[], model_type="sr",
                          sr={"scale": 2, "low_res_size": TINY_SIZE, "crop": 16, "aug_max": 0.3},
                          sampler_defaults={"steps": 3, "aug_level": 0.05})
    return ms.save_to_store(name, model.state_dict(), cfg, f"# {name}\n\nA tiny untrained SR test model.\n",
                            store=store, dtype=torch.float32, overwrite=True)


@dataclass
class TinyApp:
    server: WebServer
    store: Path
    out: Path
    data: Path
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, auth: tuple[str, str] | None | bool = True, **kw):
        from gradio_client import Client

        creds = self.auth if auth is True else (auth or None)
        return Client(self.url, auth=creds, verbose=False, download_files=str(self.out.parent / "downloads"),
                      analytics_enabled=False, **kw)


# Small caps so that the "too large" paths are reachable with a 16 px model:
# 8 DDPM images x 1000 steps fit, 16 do not.
TEST_MAX_WORK = 8 * TINY_SIZE * TINY_SIZE * 1000 + 1


def make_picture_folders(root: Path, classes: tuple[str, ...] = ("red_disc", "blue_square"), per_class: int = 8,
                         size: int = 20) -> Path:
    """A user's folder of pictures for the Train tab: one sub-folder per class, small PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 235, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
            c, r = size / 2 + rng.uniform(-2, 2), size / 4 + rng.uniform(-1, 1)
            mask = (np.hypot(yy - c, xx - c) < r) if k % 2 == 0 else ((abs(yy - c) < r) & (abs(xx - c) < r))
            img[mask] = (200, 40, 40) if k % 2 == 0 else (40, 60, 200)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


def _launch(tmp: Path, extra_args: list[str], auth: tuple[str, str] | None = None) -> TinyApp:
    store, out, data = tmp / "store", tmp / "out", tmp / "data"
    make_tiny_data(data)
    make_tiny_store(store, "tiny", data_dir=data)
    make_tiny_store(store, "tiny_b", seed=1, sampler_defaults={"sampler": "ddim", "steps": 10,
                                                                "guidance_scale": 2.0, "guidance_interval": "0,100"})
    make_tiny_store(store, "tiny-live", seed=3, student_of="tiny")
    make_tiny_sr_store(store)
    make_picture_folders(tmp / "train_data" / "shapes")
    args = ["--store", str(store), "--model", "tiny", "--out", str(out), "--threads", "1",
            "--max-work", str(TEST_MAX_WORK), "--data-root", str(tmp / "train_data"), "--runs-dir", str(tmp / "runs"),
            "--tiny-imagenet-url", "http://127.0.0.1:9/tiny-imagenet-200.zip",  # refused at once: no downloads
            *extra_args]
    if auth:
        args += ["--auth", f"{auth[0]}:{auth[1]}"]
    server = WebServer(args, tmp).start()
    return TinyApp(server, store, out, data, auth)


