"""Start-up: the command line of ``python web.py``, picking and loading the
first model, and launching the Gradio app (optionally as an MCP server)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from webui.models import ModelManager
from webui.validation import (
    DEFAULT_MAX_BATCH_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_WORK,
    EXAMPLE_PROMPTS,
    InputError,
    exposure_warning,
    parse_auth,
)

# Imported when web.py starts: torch, gradio, the store, the text encoder and the app load lazily
# (in main), so that ``python web.py --help`` answers at once.
log = logging.getLogger("web")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "tiny200"  # = model_store.DEFAULT_MODEL_NAME (not imported here: this module starts before torch)
DEFAULT_OUT = ROOT / "output_ImageNet" / "web"
WEB_DOC = """\
    python web.py                          # tiny200 on http://127.0.0.1:7860 (default_model in the picker)
    python web.py --model my_model --port 8000
    python web.py --host 0.0.0.0 --auth alice:secret   # expose on the LAN, with a login
    python web.py --mcp                    # also serve /generate as an MCP tool (needs gradio[mcp])
"""


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="web.py", description="Gradio app: generate images, watch them denoise, explore the forward process.",
        epilog=WEB_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"store name or model folder to load first (default: {DEFAULT_MODEL}, else the first model "
                        "in the store)")
    p.add_argument("--store", default=None,
                   help="model store directory (default: $DIFFUSION_MODEL_STORE or model_store/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link (needs internet)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--auth", type=parse_auth, action="append", metavar="USER:PASS",
                   help="require this login for the page and every API endpoint (repeatable)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="sampling jobs that may run at once on the device (default 1)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="jobs that may wait in the queue; when full, new requests get an error (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--max-batch-pixels", type=int, default=DEFAULT_MAX_BATCH_PIXELS,
                   help="memory cap: images x height x width per request (default 16 images at 64 px)")
    p.add_argument("--max-work", type=int, default=DEFAULT_MAX_WORK,
                   help="work cap: images x height x width x steps per request "
                        f"(default {DEFAULT_MAX_WORK:,} = 8 images at 32 px x 1000 steps)")
    p.add_argument("--time-limit", type=int, default=900, help="seconds a job may run before it is stopped")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch samples with (default: half the cores, which keeps the page "
                        "responsive; --threads 2 on a 2-core machine samples faster)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"where exported PNGs/GIFs go (default {DEFAULT_OUT})")
    p.add_argument("--keep-runs", type=int, default=200, help="keep the newest N request folders in --out")
    p.add_argument("--data", default=None, help="preprocessed data folder for the Forward tab (default: the "
                                                "model's training data, if present)")
    p.add_argument("--max-models", type=int, default=3, help="models kept loaded at once (LRU)")
    p.add_argument("--data-root", default="data",
                   help="the Train tab's data: folders of pictures (one sub-folder per class) and prepared folders; "
                        "nothing outside it is read (default data/)")
    p.add_argument("--tiny-imagenet-url", default=None,
                   help="where the Train tab downloads Tiny ImageNet from (default: the official URL, checked "
                        "against its MD5; a mirror's file is not checked)")
    p.add_argument("--runs-dir", default="output_ImageNet",
                   help="where the Train tab's runs go, as diffusion.py train --out_dir (default output_ImageNet)")
    p.add_argument("--mcp", action="store_true",
                   help="also serve the app's endpoints (generate, interpolate, grid ...) as MCP tools at "
                        "/gradio_api/mcp/ (Gradio's MCP server; needs the gradio[mcp] extra)")
    p.set_defaults(torch_threads=None)  # set by main: the threads sampling uses (webui.jobs.DeviceThreads)
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        p.error("--port must be in 1..65535")
    for name in ("concurrency", "max_queue", "max_batch_pixels", "max_work", "time_limit", "keep_runs", "max_models"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if not args.max_upload_mb > 0:
        p.error("--max-upload-mb must be positive")
    if args.mcp and (problem := mcp_missing()):
        p.error(problem)


def mcp_missing() -> str | None:
    """Why --mcp cannot work here (None when it can): Gradio's MCP server needs the ``mcp`` package."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        return ("--mcp needs Gradio's MCP extra, which is not installed: pip install 'gradio[mcp]' "
                "(the mcp package), then run python web.py --mcp again")
    return None


# --------------------------------------------------------------------------- start-up
NO_MODELS_HELP = """\
No models found in the model store {store}.

Get one:
  1. preprocess the default model's data (10 Tiny ImageNet classes at 32 px):
        python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --size 32 \\
            --classes assets/default_classes.txt --val-fraction 0.04 --out data/default32
  2. train, then put the weights in the store:
        python diffusion.py train --preset smoke --data_dir data/default32    # minutes on a CPU
        python diffusion.py export smoke --name smoke
     (or --preset default and `export default --name default_model` for the real, slow one)
  3. python web.py
Or use another store or folder:  python web.py --store DIR   |   python web.py --model PATH/TO/MODEL_OR_CHECKPOINT
"""


def _pick_model(args, ms) -> str:
    if args.model and (os.sep in args.model or args.model.startswith(".")):
        return args.model
    names = ms.list_models(args.store)
    if not names:
        print(NO_MODELS_HELP.format(store=ms.store_dir(args.store).resolve()), file=sys.stderr)
        raise SystemExit(2)
    if args.model:
        if args.model not in names:
            print(f"error: no model named {args.model!r} in {ms.store_dir(args.store).resolve()} "
                  f"(available: {', '.join(names)})", file=sys.stderr)
            raise SystemExit(2)
        return args.model
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    log.warning("%s is not in the store yet; using %s", DEFAULT_MODEL, names[0])
    return names[0]


def open_models(args: argparse.Namespace, ms: Any, first: str) -> tuple[ModelManager, Any]:
    """The model manager and the model shown first (loaded).

    A model named with ``--model`` must load. Otherwise ``first`` (from
    ``_pick_model``) is tried, then the rest of the store in order: one broken
    folder in the store is logged and passed over instead of keeping the app,
    and every good model, down. It stays in the picker, where choosing it shows
    its error. Raises ``CheckpointError`` when nothing loads.
    """
    models = ModelManager(args.store, args.device, first, args.max_models, args.data)
    if args.model:
        return models, models.get(models.first)
    failures = []
    for name in [first, *(n for n in ms.list_models(args.store) if n != first)]:
        try:
            models.first = models.resolve_choice(name)
            return models, models.get(models.first)
        except (ms.CheckpointError, InputError, ValueError) as e:
            log.warning("model %s cannot be loaded (%s); trying the next one in the store", name, e)
            failures.append(f"{name}: {e}")
    raise ms.CheckpointError("no model in the store could be loaded:\n  " + "\n  ".join(failures))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # No internet here: never phone home, never reach the hub.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warning = exposure_warning(args.host, args.share, args.auth)
    if warning:
        log.warning("%s", warning)

    # torch, the store and the text encoder load here, after the flags are read: --help stays instant
    import torch

    from engine import store as ms
    from models.text_encoder import get_text_encoder

    first = _pick_model(args, ms)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available here (use --device cpu)", file=sys.stderr)
        return 2
    if args.device == "cpu" or args.threads:
        # sampling gets them on its own threads (webui.jobs.DeviceThreads); everything else, loading
        # included, runs on one, so the process never holds more OpenMP threads than it asked for
        args.torch_threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(1)
        log.info("torch samples with %d CPU thread(s) (--threads)", args.torch_threads)
    t0 = time.monotonic()
    try:
        models, lm = open_models(args, ms, first)
    except (ms.CheckpointError, InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    encoder = get_text_encoder()
    encoder.encode([c.get("prompt") or c["name"] for c in lm.classes] or list(EXAMPLE_PROMPTS))
    log.info("model %s and text encoder ready in %.1f s", lm.name, time.monotonic() - t0)

    import gradio as gr

    from webui.app import CSS, WebApp

    app = WebApp(args, models)
    demo = app.build()
    # api_open=False: queued endpoints cannot be POSTed directly around the queue and its limits.
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1, api_open=False)
    app.out.mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=args.auth,
        auth_message="This diffusion app requires a login." if args.auth else None,
        max_file_size=app.max_upload, allowed_paths=[str(app.out.resolve())],
        theme=gr.themes.Soft(), css=CSS, ssr_mode=False, mcp_server=bool(args.mcp), show_error=False,
        footer_links=["api"], enable_monitoring=False,
    )
    return 0


