"""One request, the same pixels through every entry point that generates: ``diffusion.py sample``,
the app's ``/generate`` and ``evaluate.py``'s generation (``evaluation.generate_per_class``, what ``evaluate.py`` scores).

(``benchmarks/same_pixels.py`` compares one tree with itself over time; this compares the entry
points with one another.) What makes them comparable, and is held equal here:

* the model: the shared test app's store model ``tiny`` (tests/web_helpers.py), loaded by each;
* the request: one prompt, 2 images, seed 7, DDIM 5 steps, guidance 3.0, no guidance interval
  (tiny's config sets none), fp32 on the CPU;
* seeds: each path draws image ``i`` from seed ``7 + i``. ``generate_per_class`` gives the j-th image
  of every prompt the seed ``seed + j``; with one prompt that is the same ``7, 8``;
* batching: each samples the 2 images as one batch (the CLI and the app always do;
  ``generate_per_class`` is given ``batch_size=2``), so every kernel sees the same shapes;
* threads: the app samples with ``--threads 1``; the CLI and evaluate run with ``OMP_NUM_THREADS=1``,
  so fp32 reductions run in the same order.

The CLI and evaluate run in subprocesses (their own imports and model loads, as a user runs them).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.register_assert_rewrite("web_helpers")
from web_helpers import ROOT, TINY_SIZE, server_env  # noqa: E402

pytest_plugins = ["web_helpers"]  # the shared app (one per test session)

PROMPT = "a photo of a goldfish"
N, SEED, STEPS, GUIDANCE = 2, 7, 5, 3.0

EVALUATE_SCRIPT = """
import sys
import numpy as np
import torch
from evaluation import generate_per_class
from engine import store
lm = store.load_model("tiny", store=sys.argv[1], device="cpu")
images, labels, _ = generate_per_class(lm, "ddim", int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
                                                int(sys.argv[6]), int(sys.argv[4]), torch.device("cpu"),
                                                prompts=[sys.argv[7]], precision="fp32")
np.save(sys.argv[2], images)
"""

# the full set (dev.py test --full, CI): an app server and two text-encoder loads, ~45 s of the fast set's 3 minutes
pytestmark = pytest.mark.slow


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def one_thread_env() -> dict[str, str]:
    return {**server_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_one_request_gives_the_same_pixels_through_the_cli_the_app_and_evaluate(tiny_app, tmp_path):
    # diffusion.py sample
    out = tmp_path / "cli"
    cli = subprocess.run([sys.executable, str(ROOT / "diffusion.py"), "sample", "--model", "tiny", "--store",
                          str(tiny_app.store), "--prompt", PROMPT, "--n", str(N), "--seed", str(SEED), "--sampler",
                          "ddim", "--steps", str(STEPS), "--guidance", str(GUIDANCE), "--precision", "fp32",
                          "--device", "cpu", "--out", str(out)],
                         cwd=ROOT, env=one_thread_env(), capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    cli_pngs = sorted(p for p in out.glob("*.png") if not p.name.endswith("_grid.png"))
    assert [p.name.split("_seed")[1] for p in cli_pngs] == [f"{SEED + i}.png" for i in range(N)], cli_pngs
    from_cli = np.stack([pixels(p) for p in cli_pngs])

    # the app's /generate (the Generate button's API)
    gallery, status, seed, *_ = tiny_app.client().predict(PROMPT, "tiny", "DDIM", STEPS, GUIDANCE, SEED, N, False,
                                                          api_name="/generate")
    assert str(status).startswith("Done") and int(seed) == SEED, status
    from_app = np.stack([pixels(item["image"] if isinstance(item, dict) else item[0]) for item in gallery])

    # evaluate.py's generation
    npy = tmp_path / "evaluate.npy"
    ev = subprocess.run([sys.executable, "-c", EVALUATE_SCRIPT, str(tiny_app.store), str(npy), str(STEPS), str(N),
                         str(GUIDANCE), str(SEED), PROMPT],
                        cwd=ROOT, env=one_thread_env(), capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    from_evaluate = np.load(npy)

    assert from_cli.shape == (N, TINY_SIZE, TINY_SIZE, 3) and from_cli.dtype == np.uint8
    assert from_cli.std() > 0 and not np.array_equal(from_cli[0], from_cli[1])  # real, distinct images
    np.testing.assert_array_equal(from_app, from_cli, err_msg="the app's /generate and diffusion.py sample differ")
    np.testing.assert_array_equal(from_evaluate, from_cli, err_msg="evaluate.py and diffusion.py sample differ")
