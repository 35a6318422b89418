#!/usr/bin/env python3
"""The Gradio app: generate images with a stored model, watch them denoise,
restore a PNG's settings, vary, blend, start from an image, interpolate,
compare settings in a grid, learn how sampling works, and look at the forward
(noising) process.

    python web.py                          # tiny200 (all 200 classes) on http://127.0.0.1:7860
    python web.py --model my_model --port 8000
    python web.py --host 0.0.0.0 --auth alice:secret   # expose on the LAN, with a login
    python web.py --mcp                    # also serve the endpoints as MCP tools (needs gradio[mcp])

This file is the entry point; the app lives in ``webui/`` (one job per
module: ``validation``, ``models``, ``jobs``, ``export``, ``app``, one
``tab_*`` module per tab, ``server``). The names below are re-exported so
``import web`` keeps working for scripts and tests. No diffusion math lives in
the app: it calls ``engine.request``, ``core.prompting``, ``engine.recipe`` and ``drawing``.
Importing this module loads neither torch nor gradio (``--help`` is instant).
"""
from __future__ import annotations

import sys

from webui.jobs import JobCancelled  # noqa: F401
from webui.models import ModelManager, pick_data_image  # noqa: F401
from webui.server import (  # noqa: F401
    DEFAULT_MODEL,
    DEFAULT_OUT,
    NO_MODELS_HELP,
    ROOT,
    _pick_model,
    build_parser,
    check_args,
    main,
    mcp_missing,
    open_models,
)
from webui.validation import *  # noqa: F401,F403
from webui.validation import _number, _whole  # noqa: F401


def __getattr__(name: str):
    # WebApp and CSS import gradio-side modules lazily: ``import web`` stays light.
    if name in ("WebApp", "CSS"):
        import webui.app

        return getattr(webui.app, name)
    raise AttributeError(f"module 'web' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
