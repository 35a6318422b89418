"""web.py: the pure input checks, and the app itself through gradio_client.

The app runs in a subprocess on a tiny 16 px model (tests/web_helpers.py),
started once per session; a second instance runs behind --auth with a queue of
one to check the login and the queue limit.
"""
from __future__ import annotations

import argparse

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import web
from dataprep.images import resize_center_crop
from engine.recipe import read_png_recipe
pytest.register_assert_rewrite("web_helpers")  # it is also loaded as a plugin below
from web_helpers import AUTH, ROOT, TINY_SIZE, server_env  # noqa: E402

# One shared server per test session (fixtures registered once, not per module).
pytest_plugins = ["web_helpers"]

GEN_DEFAULTS = dict(prompt="a photo of a goldfish", model="tiny", sampler="DPM-Solver++", steps=8, guidance=3.0,
                    seed=7, num_images=2, show_strip=False)


def gen_args(**kw):
    d = dict(GEN_DEFAULTS, **kw)
    return [d[k] for k in ("prompt", "model", "sampler", "steps", "guidance", "seed", "num_images", "show_strip")]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def gallery_paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item[0] for item in gallery]


# =============================================================== pure checks (no server)
def test_clean_prompt():
    assert web.clean_prompt("  a photo\tof a\n goldfish ") == "a photo of a goldfish"
    assert web.clean_prompt("a\x00b\x1bc\u200bd") == "a b c d"  # control / format characters -> spaces
    assert web.clean_prompt("x" * 500) == "x" * 500
    for bad in ("", "   \n\t ", None, "\x00\x01", "x" * 501, "y" * 10_000):
        with pytest.raises(web.InputError):
            web.clean_prompt(bad)
    with pytest.raises(web.InputError, match="too long.*10,000"):
        web.clean_prompt("y" * 10_000)
    with pytest.raises(web.InputError):
        web.clean_prompt(123)


def test_sampler_and_steps():
    assert web.parse_sampler("dpm++") == web.parse_sampler("DPM-Solver++") == "DPM-Solver++"
    assert web.parse_sampler("ddim") == "DDIM"
    with pytest.raises(web.InputError):
        web.parse_sampler("euler")
    assert web.steps_range("DDPM") == (10, 1000, 250)
    assert web.steps_range("DDIM") == (1, 250, 50)
    assert web.steps_range("DPM-Solver++") == (1, 50, 20)
    assert web.steps_range("DDPM", num_train_timesteps=100) == (10, 100, 100)
    assert web.validate_steps(20.0, "DDIM") == 20 and web.validate_steps("30", "DDIM") == 30
    for bad in (0, 251, 20.5, float("nan"), float("inf"), "abc", None, True):
        with pytest.raises(web.InputError):
            web.validate_steps(bad, "DDIM")
    assert web.validate_steps(1000, "DDPM") == 1000
    with pytest.raises(web.InputError):
        web.validate_steps(51, "dpm++")


def test_guidance_seed_images_budget():
    assert web.validate_guidance(0) == 0.0 and web.validate_guidance("7.5") == 7.5
    for bad in (float("nan"), float("inf"), -0.1, 20.5, "nan", None):
        with pytest.raises(web.InputError):
            web.validate_guidance(bad)
    assert web.validate_seed(None) is None and web.validate_seed(-1) is None and web.validate_seed("") is None
    assert web.validate_seed(2**32 - 1) == 2**32 - 1
    for bad in (2**32, -2, 1.5, float("nan")):
        with pytest.raises(web.InputError):
            web.validate_seed(bad)
    assert web.max_images_for(32) == 16 and web.max_images_for(128) == 4 and web.max_images_for(512) == 1
    assert web.validate_num_images(16, 32) == 16
    for bad in (0, 17, 2.5, -1):
        with pytest.raises(web.InputError):
            web.validate_num_images(bad, 32)
    with pytest.raises(web.InputError, match="between 1 and 4"):
        web.validate_num_images(5, 128)
    web.check_budget(8, 32, 1000)  # the default cap: 8 DDPM images at 32 px
    with pytest.raises(web.InputError, match="too large"):
        web.check_budget(16, 32, 1000)
    with pytest.raises(web.InputError):
        web.validate_request("a goldfish", "DDPM", 1000, 3, 0, 16, image_size=32)
    req = web.validate_request(" a goldfish ", "ddim", 50, 3, -1, 4, image_size=32)
    assert (req.prompt, req.sampler, req.steps, req.seed, req.num_images) == ("a goldfish", "ddim", 50, None, 4)


def fake_model(sampler_defaults: dict, num_train_timesteps: int = 1000):
    """What the app's pre-fill and the resolver read of a loaded model."""
    from types import SimpleNamespace

    return SimpleNamespace(sampler_defaults=sampler_defaults,
                           diffusion=SimpleNamespace(num_train_timesteps=num_train_timesteps))


def test_model_defaults():
    """The controls start at the engine's resolution of the model's defaults (the CLI's), as labels and text."""
    from webui.settings import model_defaults, sampler_steps

    assert model_defaults(fake_model({})) == {"sampler": "DPM-Solver++", "steps": 20, "guidance_scale": 3.0,
                                              "guidance_interval": ""}
    d = model_defaults(fake_model({"sampler": "ddim", "steps": 30, "guidance_scale": 2.0, "guidance_interval": "0-1e2"}))
    assert d == {"sampler": "DDIM", "steps": 30, "guidance_scale": 2.0, "guidance_interval": "0,100"}
    # a sampler without steps: that sampler's own default steps (DDIM's 50, the CLI's), not DPM-Solver++'s 20
    assert model_defaults(fake_model({"sampler": "ddim"}))["steps"] == 50
    assert model_defaults(fake_model({"sampler": "DDPM"}, 400))["steps"] == 400  # every timestep, as the CLI
    # a model's value beyond a control's end shows as that end
    assert model_defaults(fake_model({"steps": 999, "guidance_scale": 40.0}))["steps"] == 50
    assert model_defaults(fake_model({"guidance_scale": 40.0}))["guidance_scale"] == web.GUIDANCE_RANGE[1]
    # switching samplers: the model's own steps for its own sampler, else the sampler's app default
    lm = fake_model({"sampler": "ddim", "steps": 30})
    assert (sampler_steps(lm, "DDIM"), sampler_steps(lm, "ddpm"), sampler_steps(lm, "dpm++")) == (30, 250, 20)
    # a name the table lacks is an error, as in the CLI and the resolver (load_model refuses such a model)
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose one of dpm\\+\\+, ddim, ddpm, lcm"):
        model_defaults(fake_model({"sampler": "euler"}))


def test_the_apps_sampler_choices_are_the_core_table_in_its_order():
    from core.samplers import DEFAULT_SAMPLER, SAMPLER_DEFAULTS

    assert [name for name, _ in web.SAMPLER_CHOICES.values()] == list(SAMPLER_DEFAULTS)
    assert list(web.SAMPLER_CHOICES) == [spec.label for spec in SAMPLER_DEFAULTS.values()]
    assert list(web.SAMPLER_CHOICES)[0] == SAMPLER_DEFAULTS[DEFAULT_SAMPLER].label  # the default first


def test_timesteps_auth_and_exposure():
    assert web.parse_timesteps("0, 250; 999", 1000) == [0, 250, 999]
    for bad in ("", "1000", "-1", "a", "1.5", ",".join(["1"] * 13)):
        with pytest.raises(web.InputError):
            web.parse_timesteps(bad, 1000)
    assert web.parse_auth("alice:se:cret") == ("alice", "se:cret")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(argparse.ArgumentTypeError, match="--auth must look like user:password"):
            web.parse_auth(bad)
    assert web.is_loopback("127.0.0.1") and web.is_loopback("localhost") and web.is_loopback("::1")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("192.168.1.5") and not web.is_loopback("myhost")
    assert web.exposure_warning("127.0.0.1", False, None) is None
    assert "without a login" in web.exposure_warning("0.0.0.0", False, None)
    assert "gradio.live" in web.exposure_warning("127.0.0.1", True, None)
    assert web.exposure_warning("0.0.0.0", True, [("a", "b")]) is None


def test_check_upload(tmp_path):
    ok = tmp_path / "ok.jpg"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(ok)
    assert web.check_upload(str(ok)).size == (40, 30)
    assert web.check_upload({"path": str(ok)}).mode == "RGB"
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "notes.txt").write_text("hello")
    for bad in (tmp_path / "text.png", tmp_path / "notes.txt", tmp_path / "missing.png", None):
        with pytest.raises(web.InputError):
            web.check_upload(bad)
    with pytest.raises(web.InputError, match="too large"):
        web.check_upload(ok, max_bytes=10)
    big = tmp_path / "big.png"  # 5000 x 5000 but tiny on disk: refused from the header, before decoding
    Image.new("1", (5000, 5000)).save(big)
    assert big.stat().st_size < 100_000
    with pytest.raises(web.InputError, match="megapixels"):
        web.check_upload(big)
    with pytest.raises(web.InputError):
        web.check_upload(ok, max_pixels=100)
    img = resize_center_crop(web.check_upload(ok), 64)
    assert img.size == (64, 64)


def test_help_is_fast_and_light():
    out = subprocess.run([sys.executable, str(ROOT / "web.py"), "--help"], capture_output=True, text=True,
                         timeout=60, env=server_env())
    assert out.returncode == 0
    for flag in ("--model", "--host", "--port", "--share", "--device", "--auth", "--max-queue", "--concurrency"):
        assert flag in out.stdout
    assert "127.0.0.1" in out.stdout  # fast because light: the probe below is the check (no timing here)
    probe = subprocess.run([sys.executable, "-c", "import sys, web; web.build_parser().parse_args([]); "
                            "print('torch' in sys.modules, 'gradio' in sys.modules)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, env=server_env())
    assert probe.stdout.split() == ["False", "False"], probe.stderr


def test_empty_store_explains_and_exits(tmp_path):
    # --host 0.0.0.0 without --auth: the exposure warning comes first, then the store is found empty.
    out = subprocess.run([sys.executable, str(ROOT / "web.py"), "--store", str(tmp_path / "empty"),
                          "--host", "0.0.0.0", "--port", "9"], capture_output=True, text=True, timeout=120,
                         env=server_env())
    assert out.returncode != 0
    assert "No models found" in out.stderr and "python diffusion.py train" in out.stderr
    assert "WARNING" in out.stderr and "without a login" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_broken_model_in_the_store_is_an_error_and_the_others_still_work(tmp_path, monkeypatch):
    """A folder whose config asks for a 640 GB network sits in the store (and sorts first)."""
    import gradio as gr
    import torch

    from engine import store as ms
    from models import ConditionalUNet
    from web_helpers import make_tiny_store

    store = tmp_path / "store"
    make_tiny_store(store, "tiny")
    broken = make_tiny_store(store, "a_broken")
    cfg = json.loads((broken / ms.CONFIG_FILE).read_text())
    cfg["unet"]["base_channels"] = 200_000
    (broken / ms.CONFIG_FILE).write_text(json.dumps(cfg))

    args = web.build_parser().parse_args(["--store", str(store), "--out", str(tmp_path / "out")])
    args.device = "cpu"
    first = web._pick_model(args, ms)
    assert first == "a_broken"  # no default_model: the first in the store, which cannot be loaded
    built = []  # (base_channels, device) of every network built: the broken one's only on meta (no memory)
    real_init = ConditionalUNet.__init__

    def counting_init(self, config, *a, **k):
        built.append((config.base_channels, torch.empty(0).device.type))
        return real_init(self, config, *a, **k)

    monkeypatch.setattr(ConditionalUNet, "__init__", counting_init)
    models, lm = web.open_models(args, ms, first)  # start-up passes over it to one that loads
    assert lm.name == "tiny" and models.first == "tiny"
    assert (200_000, "cpu") not in built and (200_000, "meta") in built and (16, "cpu") in built, built

    app = web.WebApp(args, models)
    assert [v for _, v in models.choices()] == ["a_broken", "tiny"]  # still listed: it can be picked
    assert app.refresh_models("a_broken")["value"] == "a_broken"
    with pytest.raises(gr.Error) as info:
        app.model_changed("a_broken")
    message = str(info.value.message)
    assert "a_broken" in message and "do not match its config" in message and "time_embed" in message
    assert str(store.resolve()) not in message  # no server paths for the user
    with pytest.raises(gr.Error, match="do not match its config"):
        list(app.generate("a photo of a goldfish", "a_broken", "DDIM", 5, 3.0, 1, 1, False))
    info_md, classes, *_ = app.model_changed("tiny")  # the others still work
    assert "**tiny**" in info_md and classes["choices"]

    # Named explicitly with --model, a broken model stops the start-up with its reason, not a trace.
    args.model = "a_broken"
    with pytest.raises(ms.CheckpointError, match="do not match its config"):
        web.open_models(args, ms, web._pick_model(args, ms))


def test_the_model_list_is_read_again_only_when_the_store_changes(tmp_path, monkeypatch):
    """Every request resolves its model by name; the store's listing (a config read per model) is
    kept until a folder in the store changes, and a model added or removed shows up at once."""
    import os

    from engine import store as ms
    from web_helpers import make_tiny_store
    from webui.models import ModelManager
    from webui.validation import InputError

    store = tmp_path / "store"
    make_tiny_store(store, "tiny")
    settled = time.time() - 10  # as if written a while ago (the listing is not kept within 2 s of a change)
    for p in (store, store / "tiny"):
        os.utime(p, (settled, settled))
    reads = []
    ms_list = ms.list_models
    monkeypatch.setattr(ms, "list_models", lambda s=None, **k: reads.append(1) or ms_list(s, **k))
    models = ModelManager(str(store), "cpu", "tiny")
    for _ in range(5):
        assert models.resolve_choice("tiny") == "tiny" and models.choices_values() == ["tiny"]
    assert len(reads) == 1  # read once, then kept
    make_tiny_store(store, "tiny_b")  # a new model: listed at the next request
    assert models.choices_values() == ["tiny", "tiny_b"] and models.resolve_choice("tiny_b") == "tiny_b"
    for p in (store, store / "tiny_b"):
        os.utime(p, (settled, settled))
    (store / "tiny_b" / ms.WEIGHTS_FILE).unlink()  # half a model: not listed
    assert models.choices_values() == ["tiny"]
    with pytest.raises(InputError, match="Unknown model"):
        models.resolve_choice("tiny_b")


# =============================================================== the running app
@pytest.fixture(scope="module")
def client(tiny_app):
    return tiny_app.client()


def test_every_endpoint_is_named(client):
    api = client.view_api(return_format="dict", print_info=False)
    names = set(api["named_endpoints"])
    assert {"/generate", "/stop", "/forward", "/forward_data", "/random_seed", "/select_model",
            "/class_prompt", "/sampler_steps", "/schedule", "/list_models"} <= names
    assert not api["unnamed_endpoints"]


def test_generate_returns_pngs_with_recipe(client, tiny_app):
    gallery, status, seed, gif, strip, files = client.predict(*gen_args(num_images=3, show_strip=True),
                                                              api_name="/generate")
    paths = gallery_paths(gallery)
    assert len(paths) == 3 and seed == 7 and "Done" in status
    for i, p in enumerate(paths):
        assert Path(p).suffix == ".png"
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (TINY_SIZE, TINY_SIZE)
        r = read_png_recipe(p)  # the chunk survives the trip through gradio to the client
        assert r == {"prompt": "a photo of a goldfish", "steps": 8, "sampler": "dpm++", "guidance_scale": 3.0,
                     "seed": 7 + i, "size": f"{TINY_SIZE}x{TINY_SIZE}", "model": "tiny",
                     "timestep_spacing": "trailing", "eta": 0.0, "precision": "fp32"}
    assert len({pixels(p).tobytes() for p in paths}) == 3  # different seeds, different images
    with Image.open(gif) as g:
        assert g.format == "GIF" and g.n_frames == 8  # one frame per step at 8 steps
    assert strip and Image.open(strip).size[0] > TINY_SIZE
    names = sorted(Path(f).name for f in files)
    assert names == ["00_seed7.png", "01_seed8.png", "02_seed9.png", "denoising.gif", "steps.png"]
    saved = list(tiny_app.out.glob("*/01_seed8.png"))  # the server's own copy, in its --out folder
    # (other tests in the session may have made a seed-8 image too: one of the copies is this one)
    assert any(np.array_equal(pixels(p), pixels(paths[1])) for p in saved)


def test_same_seed_same_image_and_recipe_regenerates(client):
    first = gallery_paths(client.predict(*gen_args(seed=1234, num_images=2), api_name="/generate")[0])
    again = gallery_paths(client.predict(*gen_args(seed=1234, num_images=2), api_name="/generate")[0])
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    # image 1 used seed 1235: its recipe alone makes it again, as a batch of one
    r = read_png_recipe(first[1])
    assert r["seed"] == 1235
    solo = client.predict(r["prompt"], r["model"], r["sampler"], r["steps"], r["guidance_scale"], r["seed"], 1,
                          False, api_name="/generate")[0]
    assert np.array_equal(pixels(gallery_paths(solo)[0]), pixels(first[1]))
    other = gallery_paths(client.predict(*gen_args(seed=99, num_images=1), api_name="/generate")[0])
    assert not np.array_equal(pixels(other[0]), pixels(first[0]))


def test_random_seed_is_reported(client):
    gallery, status, seed, *_ = client.predict(*gen_args(seed=-1, num_images=1), api_name="/generate")
    assert isinstance(seed, (int, float)) and 0 <= seed <= 2**32 - 1
    assert read_png_recipe(gallery_paths(gallery)[0])["seed"] == int(seed)
    assert f"seed {int(seed)}" in status
    s = client.predict(api_name="/random_seed")
    assert 0 <= s <= 2**32 - 1


def test_streams_previews_then_results(client, record_property):
    t0 = time.monotonic()
    job = client.submit(*gen_args(sampler="DDIM", steps=40, num_images=4), api_name="/generate")
    first_preview, status_then = None, None
    for out in job:
        if first_preview is None and isinstance(out[0], list) and out[0]:
            first_preview, status_then = time.monotonic() - t0, out[1]
            captions = [item.get("caption") for item in out[0]]
            assert all(c and c.startswith("step ") for c in captions)
    final = job.result()
    total = time.monotonic() - t0
    assert first_preview is not None and not str(status_then).startswith("Done"), status_then  # mid-run, not at the end
    previews = [o for o in job.outputs() if isinstance(o[0], list) and o[0] and "step" in (o[0][0]["caption"] or "")]
    steps_seen = [int(o[0][0]["caption"].split()[1].split("/")[0]) for o in previews]
    assert len(set(steps_seen)) >= 3 and steps_seen == sorted(steps_seen)  # every few steps, in order
    assert "Done" in final[1] and [item["caption"] for item in final[0]] == [f"seed {s}" for s in range(7, 11)]
    record_property("click_to_first_preview_s", round(first_preview, 3))
    print(f"\n[timing] gradio_client, tiny model, DDIM 40 steps x 4 images: first preview after "
          f"{first_preview:.2f} s, done after {total:.2f} s")


def preview_steps(job) -> list[int]:
    """The sampler steps of a /generate job's previews so far (captions "step k/N")."""
    return [int(o[0][0]["caption"].split()[1].split("/")[0]) for o in job.outputs()
            if isinstance(o[0], list) and o[0] and str(o[0][0].get("caption") or "").startswith("step ")]


def test_stop_cancels_and_frees_the_slot(tiny_app):
    c = tiny_app.client()
    job = c.submit(*gen_args(sampler="DDPM", steps=1000, num_images=8), api_name="/generate")
    deadline = time.monotonic() + 60
    while not any(isinstance(o[0], list) for o in job.outputs()):
        assert time.monotonic() < deadline, "no preview within 60 s"
        time.sleep(0.05)
    assert "Stopping" in c.predict(api_name="/stop")
    result = job.result(timeout=120)  # a hang guard
    assert "Stopped" in result[1], result[1]
    reached = preview_steps(job)
    assert reached and max(reached) < 1000, reached  # it stopped part-way, not at the end
    # the slot is free: the next job runs to the end (with the slot held it would wait for ever)
    out = c.submit(*gen_args(num_images=1), api_name="/generate").result(timeout=120)
    assert "Done" in out[1] and len(out[0]) == 1, out[1]


def test_forward_upload_and_data(client, tmp_path):
    src = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(src)
    from gradio_client import handle_file

    strip, plot = client.predict(handle_file(str(src)), "tiny", "cosine", "0, 250, 500, 999", 0,
                                 api_name="/forward")
    s = pixels(strip)
    assert s.shape == (web.FORWARD_SIZE + 16, 4 * web.FORWARD_SIZE + 3 * 2, 3)
    assert pixels(plot).shape[1] > 200
    image, strip2, _ = client.predict("tiny", "jellyfish", 2, "linear", "0, 999", 3, api_name="/forward_data")
    assert pixels(image).shape == (TINY_SIZE, TINY_SIZE, 3)
    assert pixels(strip2).shape[0] == 96 + 16  # 16 px frames upscaled to 96


def test_model_switch_uses_its_defaults(client):
    info, *updates = client.predict("tiny_b", api_name="/select_model")
    assert "tiny_b" in info
    sampler_u, steps_u, guidance_u, interval_u = updates[1], updates[2], updates[3], updates[-1]
    assert sampler_u["value"] == "DDIM" and steps_u["value"] == 10 and guidance_u["value"] == 2.0
    assert interval_u["value"] == "0,100"  # its own guidance interval fills the box
    assert client.predict("tiny", api_name="/select_model")[-1]["value"] == ""  # tiny has none: every step
    gallery = client.predict(*gen_args(model="tiny_b", sampler="DDIM", steps=10, num_images=1),
                             api_name="/generate")[0]
    recipe = read_png_recipe(gallery_paths(gallery)[0])
    # /generate has no interval input: the model's band applies, and the recipe names it
    assert recipe["model"] == "tiny_b" and recipe["guidance_interval"] == "0-100"
    assert client.predict("ladybug", "tiny", api_name="/class_prompt") == "a photo of a ladybug"
    upd = client.predict("DDPM", "tiny", api_name="/sampler_steps")
    assert (upd["minimum"], upd["maximum"], upd["value"]) == (10, 1000, 250)


BAD_GENERATE = [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt=" \n\t "), "prompt is empty"),
    (dict(prompt="x" * 10_000), "too long"),
    (dict(steps=2000, sampler="DDIM"), "between 1 and 250"),
    (dict(steps=0), "between 1 and 50"),
    (dict(guidance="nan"), "finite"),
    (dict(guidance=1e9), "between 0 and 20"),
    (dict(num_images=17), "between 1 and 16"),
    (dict(num_images=0), "between 1 and 16"),
    (dict(seed=2**40), "Seed"),
    (dict(sampler="Euler"), "Unknown sampler"),
    (dict(model="../etc"), "Unknown model"),
    (dict(sampler="DDPM", steps=1000, num_images=16), "too large"),  # within each field's cap, over the work cap
]


@pytest.mark.parametrize("change,message", BAD_GENERATE, ids=[m for _, m in BAD_GENERATE])
def test_bad_generate_inputs_get_clear_errors(client, change, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*gen_args(**change), api_name="/generate")
    assert message.lower() in str(e.value).lower()
    assert "Traceback" not in str(e.value)


def test_control_characters_still_generate(client):
    out = client.predict(*gen_args(prompt="a\x00 photo\x1b of a\r\ngoldfish\u202e", num_images=1),
                         api_name="/generate")
    assert read_png_recipe(gallery_paths(out[0])[0])["prompt"] == "a photo of a goldfish"


def test_bad_uploads_get_clear_errors(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    big = tmp_path / "huge.png"
    Image.new("1", (5000, 5000)).save(big)
    for f, msg in ((fake, "not an image"), (text, "not an image"), (big, "megapixels")):
        with pytest.raises(AppError, match=msg):
            client.predict(handle_file(str(f)), "tiny", "cosine", "0, 500", 0, api_name="/forward")
    with pytest.raises(AppError, match="Upload an image"):
        client.predict(None, "tiny", "cosine", "0, 500", 0, api_name="/forward")
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ok)
    with pytest.raises(AppError, match="between 0 and 999"):
        client.predict(handle_file(str(ok)), "tiny", "cosine", "0, 1000", 0, api_name="/forward")
    with pytest.raises(AppError, match="Schedule"):
        client.predict(handle_file(str(ok)), "tiny", "quadratic", "0", 0, api_name="/forward")
    with pytest.raises(AppError, match="between 0 and 3"):
        client.predict("tiny", "goldfish", 50, "cosine", "0", 0, api_name="/forward_data")


def test_raw_http_nan_is_an_error_not_a_crash(tiny_app):
    """A JSON NaN literal (gradio_client refuses to send one) through the REST API."""
    body = '{"data": ["a photo of a goldfish", "tiny", "DDIM", 10, NaN, 0, 1, false]}'
    req = urllib.request.Request(tiny_app.url + "gradio_api/call/generate", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{tiny_app.url}gradio_api/call/generate/{event_id}", timeout=60) as r:
        stream = r.read().decode()
    assert "event: error" in stream and "finite" in stream and "Traceback" not in stream


def test_queued_endpoints_cannot_skip_the_queue(tiny_app):
    body = json.dumps({"data": gen_args(num_images=1)}).encode()
    req = urllib.request.Request(tiny_app.url + "gradio_api/run/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code in (403, 404)


# =============================================================== --auth and the bounded queue
def test_auth_protects_every_endpoint(auth_app):
    from gradio_client import Client

    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):  # the config answered 401
        Client(auth_app.url, verbose=False, analytics_enabled=False)
    with pytest.raises(ValueError, match=r"^Could not login to http://127\.0\.0\.1:\d+/\.$"):  # the client's own words
        Client(auth_app.url, auth=(AUTH[0], "wrong"), verbose=False, analytics_enabled=False)
    for path in ("gradio_api/info", "config", "gradio_api/call/random_seed"):
        req = urllib.request.Request(auth_app.url + path, data=b'{"data": []}' if "call" in path else None,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code in (401, 403), path
    c = auth_app.client()
    out = c.predict(*gen_args(num_images=1), api_name="/generate")
    assert "Done" in out[1]


def test_full_queue_is_an_explicit_error_and_cancel_frees_it(auth_app):
    from gradio_client.utils import QueueError

    running, waiting, extra = (auth_app.client() for _ in range(3))
    a = running.submit(*gen_args(sampler="DDPM", steps=1000, num_images=8), api_name="/generate")
    seen: dict[int, float] = {}  # a's previews: step -> when it arrived (a is sampling: it holds the one slot)
    deadline = time.monotonic() + 60
    while len(seen) < 2:
        assert time.monotonic() < deadline, seen
        for step in preview_steps(a):
            seen.setdefault(step, time.monotonic())
        time.sleep(0.02)
    b = waiting.submit(*gen_args(num_images=1), api_name="/generate")  # fills the queue of one
    deadline = time.monotonic() + 30
    while str(b.status().code) != "Status.IN_QUEUE":
        assert time.monotonic() < deadline, b.status()
        time.sleep(0.05)
    with pytest.raises(QueueError, match="(?i)queue is full"):
        extra.predict(*gen_args(num_images=1), api_name="/generate")
    assert not b.done()  # b waits for a's slot (until a is cancelled it cannot start)
    (s1, t1), (s2, t2) = sorted(seen.items())[:2]
    step_s = (t2 - t1) / (s2 - s1)  # a's pace on this machine now
    left_s = (1000 - max(preview_steps(a))) * step_s  # what a would still take, run to its end
    t_cancel = time.monotonic()
    a.cancel()  # the API's cancel (the browser's Stop button also sets the job's stop flag)
    out = b.result(timeout=120)  # a hang guard
    waited = time.monotonic() - t_cancel
    assert "Done" in out[1], out[1]
    # b ran once a stopped at its next step, not once a ran to its end (a ratio of two times measured here)
    assert waited < 0.5 * left_s, f"b finished {waited:.1f} s after the cancel; a had ~{left_s:.1f} s left"
    assert "Done" in extra.predict(*gen_args(num_images=1), api_name="/generate")[1]


def test_uploads_are_size_limited(tiny_app, client, tmp_path):
    import httpx
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 11 * 2**20, dtype=np.uint8).tobytes())
    with big.open("rb") as f:  # the server refuses it (launch(max_file_size=10 MB))
        r = httpx.post(tiny_app.url + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413
    with pytest.raises(ValueError, match="maximum file size"):  # and gradio_client knows the limit
        client.predict(handle_file(str(big)), "tiny", "cosine", "0, 500", 0, api_name="/forward")
