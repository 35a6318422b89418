"""The studio endpoints end to end, through gradio_client, on the shared
tiny-model app (tests/web_helpers.py): restore from PNG, reuse a seed,
variations, img2img, interpolation, the parameter grid, prompt coverage,
snap to classes, the Learn tab, the session history, --mcp.

Expected values are independent of the handlers: pixels of a plain
/generate of the same settings, recipes written here by hand, counts of
frames and cells.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.precision import fast_bf16
from engine.recipe import read_png_recipe

pytest.register_assert_rewrite("web_helpers")
from web_helpers import ROOT, TINY_SIZE, server_env  # noqa: E402

pytest_plugins = ["web_helpers"]

BASE = dict(prompt="a photo of a goldfish", model="tiny", sampler="DDIM", steps=6, guidance=3.0, seed=7,
            num_images=1, show_strip=False)


def generate(client, **kw):
    d = dict(BASE, **kw)
    extra = {k: d[k] for k in ("variation_seed", "variation_strength", "init_image", "strength", "snap", "precision",
                               "guidance_interval", "upscale", "guide") if k in d}
    args = [d[k] for k in ("prompt", "model", "sampler", "steps", "guidance", "seed", "num_images", "show_strip")]
    return client.predict(*args, **extra, api_name="/generate_studio")


def paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item[0] for item in gallery]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def png_with(path: Path, text: str | None, size: int = TINY_SIZE) -> Path:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(path, pnginfo=info)
    return path


@pytest.fixture(scope="module")
def client(tiny_app):
    return tiny_app.client()


def test_new_endpoints_are_named(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/generate_studio", "/restore", "/reuse_seed", "/use_as_init", "/img2img_start", "/prompt_coverage", "/interpolate", "/grid",
            "/learn_schedule", "/learn_steps", "/learn_guidance", "/history"} <= names


# =============================================================== restore from PNG, reuse a seed
def test_restore_brings_every_setting_back_and_regenerates_the_same_pixels(client):
    from gradio_client import handle_file

    out = generate(client, sampler="DPM-Solver++", steps=9, guidance=4.5, seed=21, num_images=2,
                   variation_seed=300, variation_strength=0.25)
    second = paths(out[0])[1]
    restored = client.predict(handle_file(second), "tiny_b", api_name="/restore")
    model, prompt, sampler, steps, guidance, seed, num, vseed, vstrength, strength, snap, *rest = restored
    precision, interval, upscale, guide, message = rest
    assert (precision, interval, upscale, guide) == ("fp32", "", "off", "unconditional")
    assert model["value"] == "tiny" and prompt == "a photo of a goldfish" and sampler == "DPM-Solver++"
    assert steps["value"] == 9 and (steps["minimum"], steps["maximum"]) == (1, 50)
    assert (guidance, seed, num, vseed, vstrength) == (4.5, 22, 1, 301, 0.25)  # image 1: seed + 1, variation + 1
    assert snap == 0.0 and "Restored" in message
    again = generate(client, sampler=sampler, steps=steps["value"], guidance=guidance, seed=seed, num_images=num,
                     variation_seed=vseed, variation_strength=vstrength)
    np.testing.assert_array_equal(pixels(paths(again[0])[0]), pixels(second))
    assert client.predict(handle_file(second), api_name="/reuse_seed") == 22


# =============================================================== Live: the few-step student draws
def test_live_draws_with_the_student_and_its_png_restores_to_the_same_pixels(client):
    """/live (what the Live switch calls) draws tiny's images with its student tiny-live in one forward
    per step; the PNG names the student and its sampler, and Restore + Generate make the same pixels."""
    from gradio_client import handle_file

    gallery, status = client.predict(True, "a photo of a goldfish", "tiny", 4.0, 11, 2, -1, 0.0, api_name="/live")
    assert status.startswith("Live: 2 image(s) in") and "tiny-live" in status and "LCM" in status, status
    pngs = paths(gallery)
    recipe = read_png_recipe(pngs[1])
    assert (recipe["model"], recipe["sampler"], recipe["steps"], recipe["guidance_scale"], recipe["seed"]) == (
        "tiny-live", "lcm", 4, 4.0, 12)
    # Live draws in bf16 where the CPU is fast at it (LIVE_PRECISION), and says which in the recipe
    assert recipe["precision"] == ("bf16" if fast_bf16("cpu") else "fp32") and recipe["precision"] in status
    restored = client.predict(handle_file(pngs[1]), "tiny", api_name="/restore")
    model, prompt, sampler, steps, guidance, seed, num, *_ = restored
    assert model["value"] == "tiny-live" and sampler == "LCM (few-step students)" and steps["value"] == 4
    assert restored[11] == recipe["precision"]  # the Precision radio
    again = generate(client, model="tiny-live", sampler=sampler, steps=4, guidance=guidance, seed=seed, num_images=1,
                     precision=restored[11])
    np.testing.assert_array_equal(pixels(paths(again[0])[0]), pixels(pngs[1]))
    # the same request through Live again: the same pixels (Live is deterministic given its inputs)
    twice, _ = client.predict(True, "a photo of a goldfish", "tiny", 4.0, 11, 2, -1, 0.0, api_name="/live")
    np.testing.assert_array_equal(pixels(paths(twice)[1]), pixels(pngs[1]))


def test_live_off_does_nothing_and_says_when_a_model_has_no_student(client):
    off = client.predict(False, "a photo of a goldfish", "tiny", 4.0, 11, 2, -1, 0.0, api_name="/live")
    assert off == ({"__type__": "update"}, {"__type__": "update"}), off  # both outputs left as they are
    assert "tiny-live" in client.predict(True, "tiny", api_name="/live_info")
    assert "no few-step student" in client.predict(True, "tiny_b", api_name="/live_info")
    assert client.predict(False, "tiny", api_name="/live_info") == ""
    gallery, status = client.predict(True, "a photo of a goldfish", "tiny_b", 3.0, 1, 1, -1, 0.0, api_name="/live")
    assert "tiny_b has no few-step student: full steps" in status and len(paths(gallery)) == 1
    _, status = client.predict(True, "goldfish |", "tiny", 3.0, 1, 1, -1, 0.0, api_name="/live")
    assert status.startswith("Live: Blended prompt"), status  # half-typed: said, not raised


def test_learn_compares_the_teacher_with_its_student_and_live_moves_along_an_interpolation(client):
    from gradio_client.exceptions import AppError

    table, caption = client.predict("a photo of a goldfish", "tiny", 3.0, 2, api_name="/learn_student")
    with Image.open(table) as im:
        w, h = im.size
    assert w > 300 and h > 200 and "same starting noise" in caption
    # from the student's side too: it names its teacher
    table2, _ = client.predict("a photo of a goldfish", "tiny-live", 3.0, 2, api_name="/learn_student")
    np.testing.assert_array_equal(pixels(table2), pixels(table))
    with pytest.raises(AppError, match="no few-step student"):
        client.predict("a photo of a goldfish", "tiny_b", 3.0, 2, api_name="/learn_student")
    # Live's position slider: the frame at 0 is seed A's plain image of prompt A, drawn by the student
    frame, status = client.predict(True, "a photo of a goldfish", "a photo of a ladybug", 3, 4, 0.0, "tiny", 3.0,
                                   api_name="/live_frame")
    assert status.startswith("Live: the frame at 0.00") and "tiny-live" in status
    plain, _ = client.predict(True, "a photo of a goldfish", "tiny", 3.0, 3, 1, -1, 0.0, api_name="/live")
    np.testing.assert_array_equal(pixels(frame), pixels(paths(plain)[0]))
    mid, _ = client.predict(True, "a photo of a goldfish", "a photo of a ladybug", 3, 4, 0.5, "tiny", 3.0,
                            api_name="/live_frame")
    assert not np.array_equal(pixels(mid), pixels(frame))


def test_a_student_works_in_every_studio_feature(client):
    """tiny-live (a few-step student) through variations, a blend, img2img, snap and the cascade in one
    request, then the grid (guidance axis: an input of the student) and the interpolation."""
    from gradio_client import handle_file

    first = generate(client, model="tiny-live", sampler="LCM (few-step students)", steps=4, seed=3)
    init = paths(first[0])[0]
    out = generate(client, model="tiny-live", prompt="goldfish:0.7 | ladybug:0.3", sampler="LCM (few-step students)",
                   steps=4, guidance=5.0, seed=3, num_images=2, variation_seed=9, variation_strength=0.3,
                   init_image=handle_file(init), strength=0.6, snap=0.5, upscale="tiny_sr")
    assert out[1].startswith("Done: 2 image(s)"), out[1]
    recipe = read_png_recipe(paths(out[0])[0])
    assert (recipe["model"], recipe["sampler"], recipe["steps"], recipe["upscaler"]) == ("tiny-live", "lcm", 4, "tiny_sr")
    image, files, status = client.predict("a photo of a goldfish", "tiny-live", "LCM (few-step students)", 4, 3.0, 11,
                                          "guidance", "1, 6", "steps", "1, 4", api_name="/grid")
    assert status.startswith("Done: 4 cells"), status
    cells = sorted((f for f in files if Path(f).name.startswith("cell_")), key=lambda f: Path(f).name)
    assert not np.array_equal(pixels(cells[0]), pixels(cells[2]))  # guidance 1 and 6 differ: w is an input
    gif, strip, files, status = client.predict("a photo of a goldfish", "a photo of a ladybug", 3, 4, 3, "tiny-live",
                                               "LCM (few-step students)", 4, 3.0, api_name="/interpolate")
    assert status.startswith("Done: 3 frames"), status


def test_guide_with_a_weaker_model_is_recorded_restored_and_repeatable(client):
    """"Guide with" another model of the store (autoguidance): the PNG names it, Restore brings it back,
    and the restored settings make the same pixels; unconditional guidance makes other ones."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    out = generate(client, seed=5, guide="tiny_b")
    png = paths(out[0])[0]
    assert read_png_recipe(png)["guide"] == "tiny_b" and "guided by tiny_b" in out[1]
    restored = client.predict(handle_file(png), "tiny", api_name="/restore")
    assert restored[-2] == "tiny_b"
    again = generate(client, seed=5, guide=restored[-2])
    np.testing.assert_array_equal(pixels(paths(again[0])[0]), pixels(png))
    plain = generate(client, seed=5, guide="unconditional")
    assert "guide" not in read_png_recipe(paths(plain[0])[0])
    assert np.abs(pixels(paths(plain[0])[0]).astype(int) - pixels(png).astype(int)).mean() > 1
    with pytest.raises(AppError, match="Guide with must be"):
        generate(client, guide="tiny_sr")  # an upscaler is not a guide


def test_restore_reads_an_automatic1111_chunk(client, tmp_path):
    from gradio_client import handle_file

    text = ("a goldfish in a bowl\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 7, "
            "Seed: 42, Size: 512x512, Model: sd15")
    out = client.predict(handle_file(str(png_with(tmp_path / "a1111.png", text))), "tiny", api_name="/restore")
    model, prompt, sampler, steps, guidance, seed, *_, message = out
    assert (prompt, sampler, steps["value"], guidance, seed) == ("a goldfish in a bowl", "DPM-Solver++", 12, 7.0, 42)
    assert model["value"] == "tiny"  # sd15 is not in this store: the current model stays
    assert "'sd15' is not in this store" in message and "negative prompt" in message


@pytest.mark.parametrize("name,text,words", [
    ("none.png", None, "no generation recipe"),
    ("nosettings.png", "just a prompt, no settings line", "no settings line"),
    ("badseed.png", "a fish\nSteps: 10, Sampler: ddim, Seed: many", "bad 'Seed'"),
    ("noseed.png", "a fish\nSteps: 10, CFG scale: 3", "lacks seed, sampler"),
])
def test_restore_explains_a_missing_or_malformed_chunk(client, tmp_path, name, text, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(handle_file(str(png_with(tmp_path / name, text))), "tiny", api_name="/restore")
    msg = str(e.value)
    assert "No recipe could be read" in msg and words in msg and "Traceback" not in msg
    assert str(tmp_path) not in msg  # the server's paths stay on the server
    with pytest.raises(AppError, match="No recipe could be read"):
        client.predict(handle_file(str(png_with(tmp_path / name, text))), api_name="/reuse_seed")


def test_restore_refuses_non_images_and_server_paths(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(notes)), "tiny", api_name="/restore")
    with pytest.raises(AppError, match="No file"):
        client.predict(None, "tiny", api_name="/restore")


# =============================================================== variations
def test_variation_strength_zero_is_the_seed_one_is_the_variation_seed(client):
    plain = pixels(paths(generate(client, seed=7)[0])[0])
    other = pixels(paths(generate(client, seed=50)[0])[0])
    zero = generate(client, seed=7, variation_seed=50, variation_strength=0.0)
    one = generate(client, seed=7, variation_seed=50, variation_strength=1.0)
    mid = generate(client, seed=7, variation_seed=50, variation_strength=0.3)
    np.testing.assert_array_equal(pixels(paths(zero[0])[0]), plain)
    np.testing.assert_array_equal(pixels(paths(one[0])[0]), other)
    m = pixels(paths(mid[0])[0])
    assert not np.array_equal(m, plain) and not np.array_equal(m, other)
    r = read_png_recipe(paths(mid[0])[0])
    assert (r["variation_seed"], r["variation_strength"]) == (50, 0.3)
    assert "variation seed 50 at 0.3" in mid[1]
    assert "variation_seed" not in read_png_recipe(paths(zero[0])[0])  # strength 0: no variation recorded
    rnd = generate(client, seed=7, variation_seed=-1, variation_strength=0.2)  # a random variation seed, reported
    assert 0 <= read_png_recipe(paths(rnd[0])[0])["variation_seed"] <= 2**32 - 1


def test_blended_prompt_is_recorded_and_bad_weights_are_clear(client):
    from gradio_client.exceptions import AppError

    out = generate(client, prompt="goldfish:0.7 | ladybug:0.3")
    assert read_png_recipe(paths(out[0])[0])["prompt"] == "goldfish:0.7 | ladybug:0.3"
    for bad, words in (("goldfish:x | ladybug", "bad weight"), ("goldfish | ", "empty part")):
        with pytest.raises(AppError, match=f"Blended prompt: .*{words}"):
            generate(client, prompt=bad)


# =============================================================== img2img
def test_img2img_records_strength_saves_the_init_image_and_is_repeatable(client, tmp_path):
    from gradio_client import handle_file

    rng = np.random.default_rng(3)
    src = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src)
    out = generate(client, init_image=handle_file(str(src)), strength=0.5, num_images=2)
    r = read_png_recipe(paths(out[0])[0])
    assert r["strength"] == 0.5 and r["init_image"] == "init.png" and "strength 0.5" in out[1]
    init = [f for f in out[5] if Path(f).name == "init.png"]
    assert init and pixels(init[0]).shape == (TINY_SIZE, TINY_SIZE, 3)
    again = generate(client, init_image=handle_file(str(src)), strength=0.5, num_images=2)
    np.testing.assert_array_equal(pixels(paths(again[0])[0]), pixels(paths(out[0])[0]))
    # strength too low to reach a step: the (resized) image itself comes back
    low = generate(client, init_image=handle_file(init[0]), strength=0.0005)
    np.testing.assert_array_equal(pixels(paths(low[0])[0]), pixels(init[0]))
    # the x_t sampling starts from, with its t: 6 trailing DDIM steps 999, 832, 666, 499, ... -> 499 at 0.5
    start, caption = client.predict(handle_file(str(src)), "tiny", "DDIM", 6, 7, 0.5, -1, 0,
                                    api_name="/img2img_start")
    assert "t=499" in caption and pixels(start).shape[0] >= 256


def test_img2img_bad_inputs(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    src = png_with(tmp_path / "ok.png", None)
    with pytest.raises(AppError, match="Denoising strength must be between 0 and 1"):
        generate(client, init_image=handle_file(str(src)), strength=1.5)
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    with pytest.raises(AppError, match="not an image"):
        generate(client, init_image=handle_file(str(notes)), strength=0.5)
    with pytest.raises(AppError, match="Upload an image under 'Start from an image'"):
        client.predict(None, "tiny", "DDIM", 6, 7, 0.5, -1, 0, api_name="/img2img_start")


def test_use_as_init_takes_a_result(client):
    from gradio_client import handle_file

    png = paths(generate(client)[0])[0]
    back = client.predict(handle_file(png), api_name="/use_as_init")
    np.testing.assert_array_equal(pixels(back), pixels(png))


# =============================================================== interpolation and grid
def test_interpolation_gif_strip_and_recipe(client):
    gif, strip, files, status = client.predict("a photo of a goldfish", "a photo of a ladybug", 3, 4, 5, "tiny",
                                               "DDIM", 6, 3.0, api_name="/interpolate")
    assert status.startswith("Done: 5 frames")
    with Image.open(gif) as g:
        assert g.n_frames == 8 and min(g.size) >= 256  # forward and back (0..4, 3..1), crisp and large
    with Image.open(strip) as s:
        recipe = json.loads(s.text["interpolation"])
    assert recipe == {"prompt_a": "a photo of a goldfish", "prompt_b": "a photo of a ladybug", "seed_a": 3,
                      "seed_b": 4, "frames": 5, "sampler": "ddim", "steps": 6, "guidance_scale": 3.0,
                      "model": "tiny", "size": TINY_SIZE}
    assert sorted(Path(f).name for f in files) == ["interpolation.gif", "interpolation.json",
                                                   "interpolation_strip.png"]


@pytest.mark.parametrize("change,words", [
    (dict(frames=17), "between 2 and 16"), (dict(frames=1), "between 2 and 16"),
    (dict(prompt_b="", seed_b=-1), "two different prompts or two different seeds"),
    (dict(sampler="DDPM", steps=1000, frames=16), "too large"), (dict(prompt_a=""), "prompt is empty"),
])
def test_interpolation_bad_inputs(client, change, words):
    from gradio_client.exceptions import AppError

    d = dict(prompt_a="a photo of a goldfish", prompt_b="a photo of a ladybug", seed_a=3, seed_b=4, frames=4,
             model="tiny", sampler="DDIM", steps=6, guidance=3.0)
    d.update(change)
    with pytest.raises(AppError, match=words):
        client.predict(*d.values(), api_name="/interpolate")


def test_grid_cells_share_the_noise_and_match_plain_generations(client):
    image, files, status = client.predict("a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 11, "guidance", "1, 4",
                                          "steps", "5, 7", api_name="/grid")
    assert status.startswith("Done: 4 cells")
    with Image.open(image) as g:
        settings = json.loads(g.text["grid"])
        assert g.size[0] > 2 * 96
    assert settings["x_values"] == [1.0, 4.0] and settings["y_values"] == [5, 7]
    assert [c["seed"] for c in settings["cells"]] == [11] * 4
    cells = sorted((f for f in files if Path(f).name.startswith("cell_")), key=lambda f: Path(f).name)
    assert [Path(f).name for f in cells] == ["cell_0_0.png", "cell_0_1.png", "cell_1_0.png", "cell_1_1.png"], files
    # cell (1, 1) = steps 7, guidance 4: the same pixels as /generate with those settings and the grid's seed
    plain = generate(client, steps=7, guidance=4.0, seed=11)
    np.testing.assert_array_equal(pixels(cells[3]), pixels(paths(plain[0])[0]))
    assert read_png_recipe(cells[3])["guidance_scale"] == 4.0


@pytest.mark.parametrize("axes,words", [
    (("guidance", "1,2,3,4,5", "steps", "5,6,7,8"), "limit is 16"),
    (("guidance", "1", "guidance", "2"), "must differ"),
    (("colour", "red", "none", ""), "Grid axis must be one of"),
    (("steps", ",".join(["1000"] * 8), "sampler", "DDPM, ddpm"), "too large"),  # 16 x 1000 steps at 16 px
])
def test_grid_bad_inputs(client, axes, words):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=words):
        client.predict("a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 11, *axes, api_name="/grid")


# =============================================================== coverage, snap, learn, history, models
def test_prompt_coverage(client):
    near = client.predict("a photo of a goldfish", "tiny", api_name="/prompt_coverage")
    assert near.startswith("Nearest training classes: goldfish (1.00)")
    far = client.predict("quarterly tax report spreadsheet", "tiny", api_name="/prompt_coverage")
    assert far.startswith("⚠ The model has not seen anything like this prompt")
    assert client.predict("goldfish | ", "tiny", api_name="/prompt_coverage").startswith("⚠ Blended prompt")
    assert client.predict("", "tiny", api_name="/prompt_coverage") == ""


def test_snap_to_classes_is_recorded_and_changes_free_text(client):
    free = "a small orange fish in a glass bowl"
    off = generate(client, prompt=free, snap=0)
    on = generate(client, prompt=free, snap=1)
    assert read_png_recipe(paths(on[0])[0])["snap"] == 1.0 and "snap" not in read_png_recipe(paths(off[0])[0])
    assert not np.array_equal(pixels(paths(on[0])[0]), pixels(paths(off[0])[0]))


def test_learn_endpoints(client):
    from gradio_client.exceptions import AppError

    plot = client.predict("tiny", "DDIM", 10, api_name="/learn_schedule")
    assert pixels(plot).shape[1] > 300
    table, caption = client.predict("a photo of a goldfish", "tiny", "DDIM", 6, 3.0, 1, api_name="/learn_steps")
    t = pixels(table)
    assert t.shape[0] > 3 * 96 and t.shape[1] > 6 * 96 and "6 of 6 steps" in caption
    # the cascade's second stage traced too: a second table below, at the SR model's 32 px
    both, caption2 = client.predict("a photo of a goldfish", "tiny", "DDIM", 6, 3.0, 1, "tiny_sr",
                                    api_name="/learn_steps")
    b = pixels(both)
    assert b.shape[0] > t.shape[0] + 3 * 96 and "the second stage, tiny_sr" in caption2
    np.testing.assert_array_equal(b[: t.shape[0], : t.shape[1]], t)  # the first stage's table is unchanged on top
    with pytest.raises(AppError, match="No upscaler 'tiny'"):
        client.predict("a photo of a goldfish", "tiny", "DDIM", 6, 3.0, 1, "tiny", api_name="/learn_steps")
    strip, _ = client.predict("a photo of a goldfish", "tiny", "DDIM", 6, 1, "1, 3, 7", api_name="/learn_guidance")
    assert pixels(strip).shape[1] > 3 * 128
    with pytest.raises(AppError, match="between 0 and 20"):
        client.predict("a photo of a goldfish", "tiny", "DDIM", 6, 1, "1, 30", api_name="/learn_guidance")
    with pytest.raises(AppError, match="Unknown sampler"):
        client.predict("tiny", "Euler", 10, api_name="/learn_schedule")


def test_history_keeps_this_sessions_results(tiny_app):
    c, other = tiny_app.client(), tiny_app.client()
    out = generate(c, seed=123, num_images=2)
    grid = c.predict("a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 1, "guidance", "1, 2", "none", "",
                     api_name="/grid")
    items = c.predict(api_name="/history")
    captions = [i["caption"] for i in items]
    assert captions[:3] == ["grid guidance x -", "seed 123", "seed 124"]  # newest first
    assert read_png_recipe(items[1]["image"])["seed"] == 123
    np.testing.assert_array_equal(pixels(items[1]["image"]), pixels(paths(out[0])[0]))
    assert grid[0]
    assert other.predict(api_name="/history") == []  # another session sees none of it


def test_examples_and_classes_follow_the_model(client):
    out = client.predict("tiny_b", api_name="/select_model")
    assert len(out) == 12
    classes, examples = out[1], out[10]
    assert classes["choices"] == [["goldfish", "goldfish"], ["jellyfish", "jellyfish"], ["ladybug", "ladybug"]]
    assert examples["samples"] == [["a photo of a goldfish"], ["a photo of a jellyfish"], ["a photo of a ladybug"]]


def test_mcp_flag_without_the_extra_is_a_clear_error(tmp_path):
    """An install without gradio's MCP extra (the requirements have it, so it is hidden here:
    ``sys.modules["mcp"] = None`` makes both ``import mcp`` and ``find_spec("mcp")`` see none)."""
    hide_mcp = ("import runpy, sys; sys.modules['mcp'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", hide_mcp, str(ROOT / "web.py"), "--mcp", "--store", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=server_env(), cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "gradio[mcp]" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_mcp_server_serves_generate_over_loopback(tmp_path):
    """python web.py --mcp: a real MCP client lists the tools and calls generate (``mcp`` comes with
    the pinned ``gradio[mcp]``, so this never skips)."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    from web_helpers import WebServer, make_tiny_store

    make_tiny_store(tmp_path / "store", "tiny")
    server = WebServer(["--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--threads", "1",
                        "--mcp"], tmp_path).start()
    try:
        server.wait_ready()

        async def run():
            async with streamablehttp_client(server.url + "gradio_api/mcp/") as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = {t.name: t for t in (await session.list_tools()).tools}
                    name = next(n for n in tools if n.endswith("generate"))
                    result = await session.call_tool(name, {"prompt": "a photo of a goldfish", "model": "tiny",
                                                            "sampler": "DDIM", "steps": 5, "guidance": 3.0, "seed": 3,
                                                            "num_images": 1, "show_strip": False})
                    return tools, result

        tools, result = asyncio.run(run())
        assert any(n.endswith("interpolate") for n in tools) and any(n.endswith("grid") for n in tools)
        text = " ".join(getattr(c, "text", "") or "" for c in result.content)
        assert not result.isError, text
        assert "Done: 1 image(s)" in text and "seed 3" in text
    finally:
        server.stop()


# =============================================================== the cascade's second stage
def test_upscale_a_result_with_a_store_sr_model(client, tiny_app, tmp_path):
    """/upscale: a 16 px result becomes 32 px with the store's tiny SR model, the result's own seed and
    the model's defaults (3 steps, level 0.05), and its recipe names both stages."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    import core as D
    from engine import store as ms

    out = generate(client, seed=31)
    low_png = paths(out[0])[0]
    up_path, status, files = client.predict(handle_file(low_png), "tiny_sr", api_name="/upscale")
    assert "Upscaled to 32 px" in status and "seed 31" in status
    sr = ms.load_sr_model("tiny_sr", store=tiny_app.store)
    want = D.upscale(sr.model, sr.diffusion, pixels(low_png)[None], steps=3, aug_level=0.05, seed=31).images[0]
    np.testing.assert_array_equal(pixels(up_path), want)
    r = read_png_recipe(up_path)
    assert (r["upscaler"], r["upscale_steps"], r["upscale_aug"], r["seed"], r["model"]) == ("tiny_sr", 3, 0.05, 31, "tiny")
    first = {k: v for k, v in r.items() if not k.startswith("upscale")}
    assert first == read_png_recipe(low_png)  # the first stage's settings stay as they were

    with pytest.raises(AppError, match="No upscaler 'tiny'"):  # a base model is not an upscaler
        client.predict(handle_file(low_png), "tiny", api_name="/upscale")
    big = png_with(tmp_path / "big.png", "a photo of a goldfish\nSteps: 5, Sampler: DDIM, Seed: 1, Model: tiny",
                   size=2 * TINY_SIZE)
    with pytest.raises(AppError, match="upscales 16 px images to 32 px"):
        client.predict(handle_file(str(big)), "tiny_sr", api_name="/upscale")
    with pytest.raises(AppError, match="No recipe could be read"):
        client.predict(handle_file(str(png_with(tmp_path / "plain.png", None))), "tiny_sr", api_name="/upscale")


def test_then_upscale_runs_both_stages_in_one_job(client, tiny_app):
    """/generate_studio with "then upscale": the results are the first stage's images (the same
    settings without upscaling) upscaled by the SR model with each image's own seed, the GIF holds
    both stages' frames, each recipe names both stages, and /restore brings the upscaler back."""
    from gradio_client import handle_file

    import core as D
    from engine import store as ms

    low = generate(client, seed=40, num_images=2)
    low_paths = paths(low[0])
    out = generate(client, seed=40, num_images=2, upscale="tiny_sr")
    gallery, status, seed, gif, strip, files = out
    assert "upscaled to 32 px by tiny_sr" in status and seed == 40
    sr = ms.load_sr_model("tiny_sr", store=tiny_app.store)
    for i, (lp, up) in enumerate(zip(low_paths, paths(gallery))):
        want = D.upscale(sr.model, sr.diffusion, pixels(lp)[None], steps=3, aug_level=0.05, seed=40 + i).images[0]
        np.testing.assert_array_equal(pixels(up), want)
        r = read_png_recipe(up)
        assert (r["upscaler"], r["upscale_steps"], r["upscale_aug"], r["seed"]) == ("tiny_sr", 3, 0.05, 40 + i)
        assert {k: v for k, v in r.items() if not k.startswith("upscale")} == read_png_recipe(lp)
    with Image.open(gif) as g:  # DDIM 6 steps, then 3 SR steps, every frame at 32 px
        assert g.n_frames == 6 + 3
    restored = client.predict(handle_file(paths(gallery)[1]), "tiny", api_name="/restore")
    assert restored[-3] == "tiny_sr" and restored[-2] == "unconditional" and "upscaled by tiny_sr" in restored[-1]

    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No upscaler 'tiny'"):  # a base model is not an upscaler
        generate(client, upscale="tiny")
    with pytest.raises(AppError, match="No upscaler 'nope'"):
        generate(client, upscale="nope")


def test_guidance_interval_and_precision(client):
    """An interval that holds every step's noise level is full guidance; one that holds none is
    no guidance at all (guidance 1): both pixel for pixel. bf16 is recorded and stays close."""
    plain = pixels(paths(generate(client, seed=5)[0])[0])
    everywhere = generate(client, seed=5, guidance_interval="0,1e9")
    np.testing.assert_array_equal(pixels(paths(everywhere[0])[0]), plain)
    assert read_png_recipe(paths(everywhere[0])[0])["guidance_interval"] == "0-1e+09"
    nowhere = pixels(paths(generate(client, seed=5, guidance_interval="1e8,1e9")[0])[0])
    unguided = pixels(paths(generate(client, seed=5, guidance=1.0)[0])[0])
    np.testing.assert_array_equal(nowhere, unguided)
    assert not np.array_equal(nowhere, plain)
    bf16 = generate(client, seed=5, precision="bf16")
    assert read_png_recipe(paths(bf16[0])[0])["precision"] == "bf16" and "bf16" in bf16[1]
    diff = np.abs(pixels(paths(bf16[0])[0]).astype(int) - plain.astype(int))
    assert diff.mean() < 12, diff.mean()

    from gradio_client.exceptions import AppError

    for bad, words in (("0.5", "two noise levels"), ("5,1", "0 <= LO < HI"), ("a,b", "two noise levels"),
                       ("1," * 40, "too long")):
        with pytest.raises(AppError, match=words):
            generate(client, guidance_interval=bad)
    with pytest.raises(AppError, match="Precision must be one of"):
        generate(client, precision="fp8")
