"""Fuzz cases for every endpoint that takes user input, with an independent oracle.

The verdict of every input is written here by hand, per field: a table of
``(value, verdict, words)`` rows, where ``words`` must appear in the error
(the user's sentence). Nothing here calls the app's validation functions.
A case changes one field of a valid request (its row decides), or two or
three fields (then an error must name one of the failing rows' words, and
the request is valid only when every changed row is valid).

Used by tests/test_web_fuzz.py, which runs them with the rest.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

OK, ERR = "ok", "error"
SEED_RANGE = "between 0 and 4294967295"

# ---------------------------------------------------------------- field tables: (value, verdict, words)
PROMPT = [
    ("a photo of a goldfish", OK, None), ("goldfish:0.7 | ladybug:0.3", OK, None), ("a\x00 photo\u200b", OK, None),
    ("note: a fish", OK, None), ("x" * 500, OK, None), ("", ERR, "prompt is empty"), ("  \n\t ", ERR, "prompt is empty"),
    (None, ERR, "prompt is empty"), ("\x00\x01", ERR, "prompt is empty"), ("x" * 501, ERR, "too long"),
    ("y" * 10_000, ERR, "too long"), (123, ERR, "must be text"), (["a"], ERR, "must be text"),
    ({"a": 1}, ERR, "must be text"), ("goldfish |", ERR, "Blended prompt"), ("| goldfish", ERR, "Blended prompt"),
    ("goldfish:x", ERR, "Blended prompt"), ("a:0 | b:0", ERR, "Blended prompt"), ("a:-1 | b", ERR, "Blended prompt"),
    ("a:inf", ERR, "Blended prompt"), ("a:nan", ERR, "Blended prompt"), ("C:\\Windows\\system32", ERR, "Blended prompt"),
    ("a || b", ERR, "Blended prompt"),
]
MODEL = [
    ("tiny", OK, None), (None, OK, None), ("", OK, None), (" tiny ", OK, None), ("nope", ERR, "Unknown model"),
    ("TINY", ERR, "Unknown model"), ("../etc", ERR, "Unknown model"), ("/etc/passwd", ERR, "Unknown model"),
    (5, ERR, "Unknown model"), ("x" * 10_000, ERR, "Unknown model"), ("tiny\x00", ERR, "Unknown model"),
]
SAMPLER = [  # DDPM is left out: its steps range (10-1000) differs, and the tables keep fields independent
    ("DDIM", OK, None), ("ddim", OK, None), ("DPM-Solver++", OK, None), ("dpm++", OK, None), (" DDIM ", OK, None),
    ("DDPM\x00", ERR, "Unknown sampler"), ("Euler", ERR, "Unknown sampler"), ("", ERR, "Unknown sampler"),
    (None, ERR, "Unknown sampler"), (5, ERR, "Unknown sampler"), (["DDIM"], ERR, "Unknown sampler"),
    ("DDIM\x00", ERR, "Unknown sampler"),
]
UPSCALER = [  # only super-resolution models of the store; a base model is not one
    ("tiny_sr", OK, None), ("tiny", ERR, "No upscaler"), ("nope", ERR, "No upscaler"), (None, ERR, "No upscaler"),
    ("", ERR, "No upscaler"), (5, ERR, "No upscaler"), ("../tiny_sr", ERR, "No upscaler"),
    ("x" * 10_000, ERR, "No upscaler"), ("tiny_sr\x00", ERR, "No upscaler"), (["tiny_sr"], ERR, "No upscaler"),
]
THEN_UPSCALE = [  # "off" (or empty) keeps the first stage; else an SR model of the store for 16 px images
    ("tiny_sr", OK, None), ("off", OK, None), (None, OK, None), ("", OK, None), ("tiny", ERR, "No upscaler"),
    ("nope", ERR, "No upscaler"), (5, ERR, "No upscaler"), ("../tiny_sr", ERR, "No upscaler"),
    ("tiny_sr\x00", ERR, "No upscaler"), ("OFF", ERR, "No upscaler"),
]
GUIDE = [  # "unconditional" (or nothing) = classifier-free guidance; else a base model of the store (16 px)
    ("unconditional", OK, None), (None, OK, None), ("", OK, None), ("tiny_b", OK, None), ("tiny", OK, None),
    ("tiny_sr", ERR, "Guide with must be"), ("nope", ERR, "Guide with must be"), (5, ERR, "Guide with must be"),
    ("../tiny_b", ERR, "Guide with must be"), ("Unconditional", ERR, "Guide with must be"),
    (["tiny_b"], ERR, "Guide with must be"),
]
PRECISION = [  # case and surrounding spaces do not matter; empty = fp32
    ("fp32", OK, None), ("auto", OK, None), ("bf16", OK, None), (None, OK, None), ("", OK, None), (" FP32 ", OK, None),
    ("fp16", ERR, "Precision must be one of"), ("fp32\x00", ERR, "Precision must be one of"),
    (5, ERR, "Precision must be one of"), (["fp32"], ERR, "Precision must be one of"),
]
INTERVAL = [  # EDM sigma "LO,HI" (recipes write "LO-HI"), 0 <= LO < HI; empty = guidance everywhere
    ("", OK, None), (None, OK, None), ("0.28,5.42", OK, None), ("0.28-5.42", OK, None), (" 0 , inf ", OK, None),
    ("1e-3,1e9", OK, None), ("0.5", ERR, "two noise levels"), ("1,2,3", ERR, "two noise levels"),
    ("a,b", ERR, "two noise levels"), (5, ERR, "two noise levels"), ("5,1", ERR, "0 <= LO < HI"),
    ("-1,2", ERR, "0 <= LO < HI"), ("nan,1", ERR, "0 <= LO < HI"), ("1,nan", ERR, "0 <= LO < HI"),
    ("1," * 40, ERR, "too long"),
]
RANGE = "Steps must be between 1 and"  # 250 for DDIM, 50 for DPM-Solver++
STEPS = [  # valid for DDIM and DPM-Solver++ alike
    (5, OK, None), (10, OK, None), ("8", OK, None), (6.0, OK, None), (4, OK, None), (1, OK, None),
    (251, ERR, RANGE), (0, ERR, RANGE), (-1, ERR, RANGE), (10**9, ERR, RANGE), (5.5, ERR, "whole number"), ("abc", ERR, "must be a number"),
    (None, ERR, "required"), (True, ERR, "required"), ("", ERR, "required"), ([5], ERR, "must be a number"),
    ("nan", ERR, "finite"), ("inf", ERR, "finite"),
]
GUIDANCE = [
    (0, OK, None), (20, OK, None), (3.5, OK, None), ("7", OK, None), (-0.1, ERR, "between 0 and 20"),
    (20.01, ERR, "between 0 and 20"), (1e9, ERR, "between 0 and 20"), ("nan", ERR, "finite"),
    ("-inf", ERR, "finite"), (None, ERR, "required"), (False, ERR, "required"), ("x", ERR, "must be a number"),
    ({}, ERR, "must be a number"),
]
SEED = [
    (0, OK, None), (7, OK, None), (-1, OK, None), (None, OK, None), ("", OK, None), (2**32 - 1, OK, None),
    ("12", OK, None), (2**32, ERR, SEED_RANGE), (-2, ERR, SEED_RANGE), (10**30, ERR, SEED_RANGE),
    (1.5, ERR, "whole number"), ("abc", ERR, "must be a number"), (True, ERR, "required"),
    ([1], ERR, "must be a number"), ("nan", ERR, "finite"),
]
FRACTION = [  # strengths; None -> 0 where a default applies (see FRACTION_NONE_OK)
    (0, OK, None), (1, OK, None), (0.5, OK, None), ("0.25", OK, None), (1.01, ERR, "between 0 and 1"),
    (-0.01, ERR, "between 0 and 1"), (100, ERR, "between 0 and 1"), ("nan", ERR, "finite"), ("x", ERR, "must be a number"),
    (True, ERR, "required"), ([0.5], ERR, "must be a number"),
]
FRAMES = [  # 16 px images: the cap is 16
    (2, OK, None), (3, OK, None), ("4", OK, None), (1, ERR, "between 2 and 16"), (17, ERR, "between 2 and 16"),
    (0, ERR, "between 2 and 16"), (-3, ERR, "between 2 and 16"), (10**9, ERR, "between 2 and 16"),
    (2.5, ERR, "whole number"), (None, ERR, "required"), ("many", ERR, "must be a number"), ("inf", ERR, "finite"),
]
AXIS = [
    ("guidance", OK, None), ("steps", OK, None), ("seed", OK, None), ("size", ERR, "Grid axis must be one of"),
    ("", ERR, "Grid axis must be one of"), (None, ERR, "Grid axis must be one of"), (5, ERR, "Grid axis must be one of"),
    ("Guidance", ERR, "Grid axis must be one of"), (["guidance"], ERR, "Grid axis must be one of"),
]
GUIDANCE_VALUES = [  # x values when the x axis is guidance
    ("1, 3", OK, None), ("2", OK, None), ([1, 2], OK, None), ("0,20", OK, None), ("", ERR, "at least one"),
    (" , ,", ERR, "at least one"), ("1,2,3,4,5,6,7,8,9", ERR, "At most 8 values"), ("1, x", ERR, "must be a number"),
    ("1, 30", ERR, "between 0 and 20"), ("nan", ERR, "finite"), (None, ERR, "must be text"), ({}, ERR, "must be text"),
    ("1,2,3,4,5", ERR, "limit is 16"),  # x 4 steps values below: 20 cells
]
NUM_IMAGES = [  # 16 px images: the memory cap is 16 (at most 16 anyway); 5 steps are far from the work cap
    (1, OK, None), (2, OK, None), ("3", OK, None), (16, OK, None), (0, ERR, "between 1 and 16"),
    (17, ERR, "between 1 and 16"), (-1, ERR, "between 1 and 16"), (10**9, ERR, "between 1 and 16"),
    (2.5, ERR, "whole number"), (None, ERR, "required"), ("many", ERR, "must be a number"), ("inf", ERR, "finite"),
    (True, ERR, "required"), ([2], ERR, "must be a number"),
]
SHOW_STRIP = [(True, OK, None), (False, OK, None), (None, OK, None)]  # a tick box: anything truthy ticks it
SCHEDULE = [
    ("linear", OK, None), ("cosine", OK, None), ("", ERR, "Schedule must be one of"),
    ("Linear", ERR, "Schedule must be one of"), ("quadratic", ERR, "Schedule must be one of"),
    (None, ERR, "Schedule must be one of"), ("cosine\x00", ERR, "Schedule must be one of"),
    ("x" * 10_000, ERR, "Schedule must be one of"),
]
TIMESTEPS = [  # for T = 1000: each in [0, 999], at most 12 of them, separated by commas, semicolons or spaces
    ("0", OK, None), ("0, 999", OK, None), ("0;1;2", OK, None), ("0 1 2", OK, None), (" 7 ", OK, None),
    ("", ERR, "at least one timestep"), (",,,", ERR, "at least one timestep"), (None, ERR, "at least one timestep"),
    ("-1", ERR, "between 0 and 999"), ("1000", ERR, "between 0 and 999"), ("999.5", ERR, "whole number"),
    ("abc", ERR, "must be a number"), ("0," * 13, ERR, "At most 12 timesteps"), ("nan", ERR, "finite"),
]
DATA_MODEL = [  # /forward_data: tiny has its data folder on this machine, tiny_b has none
    ("tiny", OK, None), (None, OK, None), (" tiny ", OK, None), ("tiny_b", ERR, "not on this machine"),
    ("nope", ERR, "Unknown model"), ("../etc", ERR, "Unknown model"), (5, ERR, "Unknown model"),
]
DATA_CLASS = [  # no class: any image of the data (12 of them; 4 per class)
    ("goldfish", OK, None), ("ladybug", OK, None), (None, OK, None), ("", OK, None),
    ("shark", ERR, "Unknown class"), ("Goldfish", ERR, "Unknown class"), ("goldfish\x00", ERR, "Unknown class"),
    ("x" * 10_000, ERR, "Unknown class"),
]
DATA_INDEX = [  # invalid whatever the class: 12 is past every pool (4 per class, 12 in all)
    (0, OK, None), (3, OK, None), ("2", OK, None), (None, OK, None), ("", OK, None),
    (12, ERR, "Image number must be between 0 and"), (-1, ERR, "Image number must be between 0 and"),
    (10**9, ERR, "Image number must be between 0 and"), (1.5, ERR, "whole number"), ("x", ERR, "must be a number"),
    ("nan", ERR, "finite"), (True, ERR, "required"),
]
NUM_TRAIN_TIMESTEPS = [  # /schedule
    (2, OK, None), (1000, OK, None), (100_000, OK, None), ("1000", OK, None), (1, ERR, "between 2 and 100000"),
    (0, ERR, "between 2 and 100000"), (-5, ERR, "between 2 and 100000"), (100_001, ERR, "between 2 and 100000"),
    (2.5, ERR, "whole number"), (None, ERR, "required"), ("abc", ERR, "must be a number"), ("nan", ERR, "finite"),
    (True, ERR, "required"), ("", ERR, "required"),
]
SCALES = [  # the Learn tab's guidance list
    ("1, 3, 7", OK, None), ("2", OK, None), ("", ERR, "at least one"), ("1, x", ERR, "must be a number"),
    ("1, 21", ERR, "between 0 and 20"), ("1,2,3,4,5,6,7,8,9", ERR, "At most 8 values"), (None, ERR, "must be text"),
    ("-1", ERR, "between 0 and 20"),
]


@dataclass
class StudioCase:
    endpoint: str
    args: list
    category: str
    expect: str  # "ok" / "error"
    words: list[str]  # one of these must be in the error


@dataclass
class Endpoint:
    name: str
    base: list  # a valid request
    fields: dict[int, tuple[str, list]]  # index -> (name, table)
    kwargs_tail: int = 0  # unused


def files(d: Path) -> dict[str, Path]:
    """Files for the upload fields: a result with a recipe, a PNG without, a malformed chunk, not an image."""
    d.mkdir(parents=True, exist_ok=True)

    def png(name: str, text: str | None, size: int = 16) -> Path:
        info = PngImagePlugin.PngInfo()
        if text is not None:
            info.add_text("parameters", text)
        p = d / name
        Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(p, pnginfo=info)
        return p

    out = {
        "recipe": png("recipe.png", "a photo of a goldfish\nSteps: 6, Sampler: ddim, CFG scale: 3.0, Seed: 5, "
                                    "Size: 16x16, Model: tiny"),
        "a1111": png("a1111.png", "a fish\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                                  "Seed: 1, Model: sd15"),
        "bare": png("bare.png", None),
        "nosettings": png("nosettings.png", "only a prompt"),
        "badseed": png("badseed.png", "a fish\nSteps: 6, Sampler: ddim, Seed: x"),
        "noprompt": png("noprompt.png", "\nSteps: 6, Sampler: ddim, Seed: 3"),
        "big": png("big.png", "a photo of a goldfish\nSteps: 6, Sampler: ddim, Seed: 5, Model: tiny", size=32),
    }
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "photo.jpg")
    out["jpeg"] = d / "photo.jpg"
    (d / "text.png").write_text("not an image")
    out["text"] = d / "text.png"
    (d / "empty.png").write_bytes(b"")
    out["empty"] = d / "empty.png"
    return out


def recipe_file_table(f: dict[str, Path], handle) -> list:
    """/restore and /reuse_seed: the file field."""
    return [
        (handle(str(f["recipe"])), OK, None), (handle(str(f["a1111"])), OK, None),
        (handle(str(f["bare"])), ERR, "no generation recipe"), (handle(str(f["jpeg"])), ERR, "no generation recipe"),
        (handle(str(f["nosettings"])), ERR, "no settings line"), (handle(str(f["badseed"])), ERR, "bad 'Seed'"),
        (handle(str(f["noprompt"])), ERR, "lacks a prompt"), (handle(str(f["text"])), ERR, "not an image"),
        (handle(str(f["empty"])), ERR, "not an image"), (None, ERR, "No file"),
        # ("", ...) is left out: gradio itself refuses a string for a file input, before the app runs
    ]


def image_file_table(f: dict[str, Path], handle, none_words: str) -> list:
    """An image input (init image, use-as-init): any readable image is fine."""
    return [
        (handle(str(f["recipe"])), OK, None), (handle(str(f["jpeg"])), OK, None), (handle(str(f["bare"])), OK, None),
        (handle(str(f["text"])), ERR, "not an image"), (handle(str(f["empty"])), ERR, "not an image"),
        (None, ERR, none_words),
    ]


def endpoints(f: dict[str, Path], handle) -> list[Endpoint]:
    fr_none0 = FRACTION + [(None, OK, None)]  # None = the default 0 (variation strength, snap)
    init_table = image_file_table(f, handle, "unused")[:-1] + [(None, OK, None)]  # no init image: plain generation
    # with an init image, so that the strength field is checked (without one it is ignored)
    gen_base = ["a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 7, 1, False, -1, 0.0, handle(str(f["jpeg"])), 0.6, 0.0,
                "fp32", "", "off", "unconditional"]
    upload = handle(str(f["jpeg"]))
    return [
        # the original endpoints (tests/test_web_fuzz.py adds random inputs to these, judged for clarity only)
        Endpoint("/generate", ["a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 7, 1, False],
                 {0: ("prompt", PROMPT), 1: ("model", MODEL), 2: ("sampler", SAMPLER), 3: ("steps", STEPS),
                  4: ("guidance", GUIDANCE), 5: ("seed", SEED), 6: ("number of images", NUM_IMAGES),
                  7: ("show strip", SHOW_STRIP)}),
        Endpoint("/forward", [upload, "tiny", "cosine", "0, 500", 0],
                 {1: ("model", MODEL), 2: ("schedule", SCHEDULE), 3: ("timesteps", TIMESTEPS), 4: ("seed", SEED)}),
        Endpoint("/forward_data", ["tiny", "jellyfish", 1, "cosine", "0, 500, 999", 0],
                 {0: ("model", DATA_MODEL), 1: ("class", DATA_CLASS), 2: ("index", DATA_INDEX),
                  3: ("schedule", SCHEDULE), 4: ("timesteps", TIMESTEPS), 5: ("seed", SEED)}),
        Endpoint("/schedule", [1000], {0: ("num_train_timesteps", NUM_TRAIN_TIMESTEPS)}),
        Endpoint("/generate_studio", gen_base, {8: ("variation seed", SEED), 9: ("variation strength", fr_none0),
                                         10: ("init image", init_table), 11: ("strength", FRACTION),
                                         12: ("snap", fr_none0), 13: ("precision", PRECISION),
                                         14: ("guidance interval", INTERVAL), 15: ("then upscale", THEN_UPSCALE),
                                         16: ("guide with", GUIDE)}),
        Endpoint("/restore", [handle(str(f["a1111"])), "tiny"],  # its model (sd15) is not here: the picker's is used
                 # (not the "recipe" file here: its model is in the store, so the picker's would not matter)
                 {0: ("file", recipe_file_table(f, handle)[1:]), 1: ("model", MODEL)}),
        Endpoint("/reuse_seed", [handle(str(f["recipe"]))], {0: ("file", recipe_file_table(f, handle))}),
        Endpoint("/use_as_init", [handle(str(f["recipe"]))],
                 {0: ("image", image_file_table(f, handle, "Select an image in the gallery"))}),
        Endpoint("/img2img_start", [handle(str(f["jpeg"])), "tiny", "DDIM", 10, 3, 0.5, 9, 0.0],
                 {0: ("init image", image_file_table(f, handle, "Upload an image under")), 1: ("model", MODEL),
                  2: ("sampler", SAMPLER), 3: ("steps", STEPS), 4: ("seed", SEED),
                  5: ("strength", FRACTION + [(None, ERR, "required")]), 7: ("variation strength", fr_none0)}),
        Endpoint("/prompt_coverage", ["a photo of a goldfish", "tiny"],
                 {0: ("prompt", [(v, OK if (w is None or "Blended" in w or "empty" in w) and not
                                      (isinstance(v, str) and len(v) > 500) else ERR, w) for v, _, w in PROMPT]),
                  1: ("model", MODEL)}),
        # Live (tiny's student tiny-live draws): a prompt being typed (empty, a half-written blend) is said in
        # the status line, not an error; every other field is checked as the Generate button's
        Endpoint("/live", [True, "a photo of a goldfish", "tiny", 3.0, 7, 2, -1, 0.0],
                 {1: ("prompt", [(v, OK if (w is None or "Blended" in w or "empty" in w) and not
                                      (isinstance(v, str) and len(v) > 500) else ERR, w) for v, _, w in PROMPT]),
                  2: ("model", MODEL), 3: ("guidance", GUIDANCE), 4: ("seed", SEED), 5: ("number of images", NUM_IMAGES),
                  6: ("variation seed", SEED), 7: ("variation strength", fr_none0)}),
        Endpoint("/live_info", [True, "tiny"], {0: ("live", SHOW_STRIP), 1: ("model", MODEL)}),
        Endpoint("/live_frame", [True, "a photo of a goldfish", "a photo of a ladybug", 1, 2, 0.5, "tiny", 3.0],
                 {1: ("prompt A", [(v, OK if (w is None or "Blended" in w or "empty" in w) and not
                                        (isinstance(v, str) and len(v) > 500) else ERR, w) for v, _, w in PROMPT]),
                  3: ("seed A", SEED), 4: ("seed B", SEED), 5: ("position", FRACTION), 6: ("model", MODEL),
                  7: ("guidance", GUIDANCE)}),
        Endpoint("/interpolate", ["a photo of a goldfish", "a photo of a ladybug", 1, 2, 2, "tiny", "DDIM", 5, 3.0],
                 {0: ("prompt A", PROMPT), 1: ("prompt B", [r for r in PROMPT if r[0] not in (  # empty B = A: fine
                     None, "", "  \n\t ", "a photo of a goldfish")]),
                  2: ("seed A", SEED), 3: ("seed B", SEED), 4: ("frames", FRAMES), 5: ("model", MODEL),
                  6: ("sampler", SAMPLER), 7: ("steps", STEPS), 8: ("guidance", GUIDANCE)}),
        Endpoint("/grid", ["a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 7, "guidance", "1, 3", "steps", "5, 6, 7, 8"],
                 {0: ("prompt", PROMPT), 1: ("model", MODEL), 2: ("sampler", SAMPLER),
                  5: ("seed", SEED), 7: ("x values", GUIDANCE_VALUES)}),
        Endpoint("/upscale", [handle(str(f["recipe"])), "tiny_sr"],  # the store's tiny 16 -> 32 px SR model
                 {0: ("file", recipe_file_table(f, handle) + [(handle(str(f["big"])), ERR, "upscales 16 px images")]),
                  1: ("upscaler", UPSCALER)}),
        Endpoint("/learn_schedule", ["tiny", "DDIM", 10], {0: ("model", MODEL), 1: ("sampler", SAMPLER),
                                                           2: ("steps", STEPS)}),
        Endpoint("/learn_steps", ["a photo of a goldfish", "tiny", "DDIM", 5, 3.0, 1, "off"],
                 {0: ("prompt", PROMPT), 1: ("model", MODEL), 2: ("sampler", SAMPLER),
                  3: ("steps", STEPS), 4: ("guidance", GUIDANCE), 5: ("seed", SEED),
                  6: ("then trace the upscaler", THEN_UPSCALE)}),
        Endpoint("/learn_student", ["a photo of a goldfish", "tiny", 3.0, 1],  # tiny's student: tiny-live
                 {0: ("prompt", PROMPT), 1: ("model", MODEL), 2: ("guidance", GUIDANCE), 3: ("seed", SEED)}),
        Endpoint("/learn_guidance", ["a photo of a goldfish", "tiny", "DDIM", 5, 1, "1, 3"],
                 {0: ("prompt", PROMPT), 1: ("model", MODEL), 2: ("sampler", SAMPLER),
                  3: ("steps", STEPS), 4: ("seed", SEED), 5: ("scales", SCALES)}),
    ]


# Grid axis fields need their values to match: (x axis, x values, y axis, y values) rows, by hand.
GRID_AXES_ROWS = [
    (("guidance", "1, 3", "steps", "5, 6"), OK, None), (("seed", "0, 1", "none", ""), OK, None),
    (("sampler", "DDIM, dpm++", "guidance", "1"), OK, None), (("prompt", "a fish; a bug", "none", ""), OK, None),
    (("steps", ",".join(["1000"] * 8), "sampler", "DDPM, ddpm"), ERR, "too large"), (("seed", "0, -1", "none", ""), ERR, "no -1"),
    (("guidance", "1", "guidance", "2"), ERR, "must differ"), (("sampler", "DDIM, Euler", "none", ""), ERR,
                                                               "Unknown sampler"),
    (("steps", "0", "none", ""), ERR, "between 1 and 250"), (("prompt", "a; b |", "none", ""), ERR, "Blended prompt"),
    (("colour", "red", "none", ""), ERR, "Grid axis must be one of"), (("guidance", "1", "size", "2"), ERR,
                                                                       "Grid axis must be one of"),
    (("guidance", "1,2,3,4", "seed", "1,2,3,4,5"), ERR, "limit is 16"), ((None, None, None, None), ERR,
                                                                          "Grid axis must be one of"),
    (("steps", "5, x", "none", ""), ERR, "must be a number"), (("seed", "1, 2.5", "none", ""), ERR, "whole number"),
]


def build(f: dict[str, Path], handle, rng: random.Random, max_ok: int = 4) -> list[StudioCase]:
    """Single-field cases for every table row, then 2-3-field mixes, then the grid's axis rows."""
    cases: list[StudioCase] = []
    ok_count: dict[str, int] = {}

    def add(ep: Endpoint, args: list, cat: str, rows: list) -> None:
        bad = [w for _, v, w in rows if v == ERR]
        expect = ERR if bad else OK
        if expect == OK:  # valid requests sample: a few per endpoint
            if ok_count.get(ep.name, 0) >= max_ok:
                return
            ok_count[ep.name] = ok_count.get(ep.name, 0) + 1
        cases.append(StudioCase(ep.name, args, cat, expect, bad))

    eps = endpoints(f, handle)
    for ep in eps:
        for i, (name, table) in ep.fields.items():
            for value, verdict, words in table:
                args = list(ep.base)
                args[i] = value
                add(ep, args, f"{ep.name[1:]}: {name}", [(value, verdict, words)])
    for ep in eps:
        for _ in range(25 if len(ep.fields) > 1 else 0):
            picked = rng.sample(list(ep.fields), min(len(ep.fields), rng.randint(2, 3)))
            args, rows = list(ep.base), []
            for i in picked:
                value, verdict, words = rng.choice(ep.fields[i][1])
                args[i] = value
                rows.append((value, verdict, words))
            add(ep, args, f"{ep.name[1:]}: 2-3 fields", rows)
    grid = next(e for e in eps if e.name == "/grid")
    for axes, verdict, words in GRID_AXES_ROWS:
        args = list(grid.base)
        args[6:10] = list(axes)
        add(grid, args, "grid: axes", [(axes, verdict, words)])
    return cases


def judge(case: StudioCase, outcome: str, message: str) -> str | None:
    """None when the outcome is the table's verdict (an error naming one of its rows' words)."""
    if case.expect == OK:
        return None if outcome == "ok" else f"expected a result, got {outcome}: {message[:200]!r}"
    if outcome != "error":
        return f"expected an error ({case.words}), got {outcome}: {message[:120]!r}"
    if not any(w and w in message for w in case.words):
        return f"expected an error naming one of {case.words}, got {message[:200]!r}"
    return None


# ---------------------------------------------------------------- what a valid request must return
FORWARD_SIZE = 128  # the Forward tab draws an upload at 128 px, strips with a 2 px gap and a 16 px caption row
DATA_FRAME = 96  # a 16 px image of the model's data is drawn at 96 px (plot_func's smallest frame)
TINY = 16  # the test store's models make 16 px images; its SR model makes 32 px


def _size(path: Any) -> tuple[int, int]:
    with Image.open(str(path)) as im:
        im.load()
        return im.size


def _count(text: Any, sep: str = r"[,; ]") -> int:
    return len([p for p in re.split(sep, str(text)) if p.strip()])


def _files_are_images(files: Any) -> None:
    assert files, "no files"
    for f in files:
        if str(f).endswith((".png", ".gif")):
            assert min(_size(f)) > 0, f


def _frames(path: Any) -> int:
    with Image.open(str(path)) as im:
        return getattr(im, "n_frames", 1)


def _recipe(path: Any) -> tuple[str, dict[str, str]]:
    """A result PNG's recipe as the README describes it (A1111's text in the ``parameters`` chunk): the
    prompt, then one line of ``Key: value`` fields. Parsed here, by hand."""
    with Image.open(str(path)) as im:
        text = im.info.get("parameters")
    assert text, f"{path}: no recipe"
    prompt, _, settings = text.rpartition("\n")
    return prompt, dict(part.split(": ", 1) for part in settings.split(", "))


def _number_of(value: Any) -> float:
    return float(str(value).strip())


SAMPLER_NAMES = {"ddim": "ddim", "dpm++": "dpm++", "dpm-solver++": "dpm++"}  # the recipe's names for the labels


def _check_images_and_recipes(paths: list, args: list, seed: Any, side: int, upscaler: str | None) -> None:
    """Each image: its size, and its recipe: the steps, sampler, guidance and model asked for, seed + i."""
    for i, path in enumerate(paths):
        assert _size(path) == (side, side), (path, _size(path))
        prompt, fields = _recipe(path)
        assert prompt.strip(), fields
        assert int(fields["Steps"]) == int(_number_of(args[3])), fields
        assert fields["Sampler"] == SAMPLER_NAMES[str(args[2]).strip().lower()], fields
        assert float(fields["CFG scale"]) == _number_of(args[4]), fields
        assert int(fields["Seed"]) == int(seed) + i and fields["Model"] == "tiny", fields
        assert fields["Size"] == f"{TINY}x{TINY}", fields  # the first stage's size
        assert fields.get("Upscaler") == upscaler, fields


COVERAGE_LINE = re.compile(r"(?:Nearest training classes|Nearest classes): (.*)$")
CLASS_PROMPTS = {"a photo of a goldfish": "goldfish", "a photo of a jellyfish": "jellyfish",
                 "a photo of a ladybug": "ladybug"}  # the test store's classes (tests/web_helpers.py)


def _check_coverage(prompt: Any, out: Any) -> None:
    """Empty prompt: nothing. A bad blend: a warning naming it. Else every class of the model once, by
    cosine similarity (in [-1, 1], highest first); a class's own prompt is nearest to that class (1.00)."""
    assert isinstance(out, str), out
    text = " ".join(str(prompt or "").split())
    if not text.strip("\x00\x01\u200b"):
        return
    if "Blended prompt" in out:
        assert out.startswith("\u26a0"), out
        return
    m = COVERAGE_LINE.search(out)
    assert m, out
    pairs = re.findall(r"(\w+) \((-?\d\.\d\d)\)", m.group(1))
    names, sims = [n for n, _ in pairs], [float(v) for _, v in pairs]
    assert sorted(names) == sorted(CLASS_PROMPTS.values()), out
    assert all(-1 <= v <= 1 for v in sims) and sims == sorted(sims, reverse=True), out
    assert out.startswith("\u26a0") == ("has not seen anything like" in out), out
    if text in CLASS_PROMPTS:
        assert names[0] == CLASS_PROMPTS[text] and sims[0] == 1.0, out


def check_result(endpoint: str, args: list):
    """An independent check of a valid request's result (sizes and counts from the request itself)."""
    def check(out: Any) -> None:
        if endpoint == "/generate_studio":
            gallery, status, seed, gif, _strip, files = out
            upscaler = "tiny_sr" if args[15] == "tiny_sr" else None
            n, side = int(float(args[6])), TINY * (2 if upscaler else 1)
            assert str(status).startswith(f"Done: {n} image(s)") and len(gallery) == n, (status, gallery)
            _check_images_and_recipes([g["image"] for g in gallery], args, seed, side, upscaler)
            assert _frames(gif) >= 2, gif  # the denoising GIF: frames of the sampling
            _files_are_images(files)
        elif endpoint == "/forward":
            strip, plot = out
            k = _count(args[3])
            assert _size(strip) == (k * FORWARD_SIZE + (k - 1) * 2, FORWARD_SIZE + 16) and min(_size(plot)) > 0
        elif endpoint == "/forward_data":
            image, strip, plot = out
            k = _count(args[4])
            assert _size(image) == (TINY, TINY) and min(_size(plot)) > 0
            assert _size(strip) == (k * DATA_FRAME + (k - 1) * 2, DATA_FRAME + 16)
        elif endpoint in ("/schedule", "/learn_schedule"):
            w, h = _size(out)
            assert w > h > 100, (w, h)  # a plot, wider than tall
        elif endpoint == "/restore":
            assert len(out) == 16 and isinstance(out[-1], str) and out[-1].strip(), out
        elif endpoint == "/reuse_seed":
            assert isinstance(out, int) and 0 <= out < 2**32, out
        elif endpoint == "/use_as_init":
            assert min(_size(out)) > 0
        elif endpoint == "/img2img_start":
            image, caption = out
            assert _size(image) == (256, 256) and ("x_t" in caption or "unchanged" in caption), caption
        elif endpoint == "/prompt_coverage":
            _check_coverage(args[0], out)
        elif endpoint == "/live":
            gallery, status = out
            if "empty" in str(status) or "Blended prompt" in str(status):  # a prompt being typed
                return
            n = int(float(args[5]))
            assert str(status).startswith(f"Live: {n} image(s) in") and "tiny-live" in str(status), status
            assert len(gallery) == n and all(_size(g["image"]) == (TINY, TINY) for g in gallery), gallery
        elif endpoint == "/live_frame":
            image, status = out
            if "empty" in str(status) or "Blended prompt" in str(status):  # a prompt being typed
                return
            assert str(status).startswith("Live: the frame at") and "tiny-live" in str(status), status
            assert _size(image) == (TINY, TINY), image
        elif endpoint == "/live_info":
            assert isinstance(out, str) and (("tiny-live" in out) == bool(args[0])), out
        elif endpoint == "/interpolate":
            gif, strip, files, status = out
            k = int(_number_of(args[4]))
            assert str(status).startswith(f"Done: {k} frames"), status
            assert _size(gif)[0] >= 256 and _frames(gif) == (2 * k - 2 if k > 2 else k), _frames(gif)  # forth and back
            assert _size(strip)[0] // 128 == k, _size(strip)  # one 128 px column per frame
            with Image.open(str(strip)) as im:
                recipe = json.loads(im.info["interpolation"])
            assert (recipe["frames"], recipe["steps"], recipe["guidance_scale"], recipe["model"]) == (
                k, int(_number_of(args[7])), _number_of(args[8]), "tiny"), recipe
            assert recipe["sampler"] == SAMPLER_NAMES[str(args[6]).strip().lower()], recipe
            _files_are_images(files)
        elif endpoint == "/grid":
            image, files, status = out
            cells = _count(args[7], r"[,;]") * max(1, _count(args[9], r"[,;]") if args[8] != "none" else 1)
            assert str(status).startswith(f"Done: {cells} cells"), (status, cells)
            assert len([f for f in files if "cell_" in str(f)]) == cells
            _files_are_images(files)
        elif endpoint == "/upscale":
            image, status, files = out
            assert _size(image) == (2 * TINY, 2 * TINY), _size(image)
        elif endpoint == "/learn_steps":  # one column per sampler step, three rows (x_t, x_0 estimate, noise)
            table, caption = out
            steps = int(_number_of(args[3]))
            shown = int(re.search(r"(\d+) of (\d+) steps shown", caption).group(1))
            assert f"{shown} of {steps} steps shown" in caption and 1 <= shown <= steps, caption
            w, h = _size(table)
            assert w > h and w // shown >= TINY, (w, h, caption)
        elif endpoint == "/learn_guidance":  # one 128 px column per guidance scale (16 px images drawn at 128)
            table, caption = out
            scales = _count(args[5], r"[,;]")
            w, h = _size(table)
            assert "guidance scale" in caption and w // 128 == scales, (w, h, scales, caption)
        elif endpoint == "/learn_student":  # the teacher's path above, its student's below, from one seed
            table, caption = out
            seed = args[3]
            assert "teacher" in caption and "student" in caption, caption
            if seed not in (None, "", -1):
                assert f"(seed {int(_number_of(seed))})" in caption, caption
            w, h = _size(table)
            assert w > h > 2 * TINY, (w, h)
        elif endpoint == "/history":  # this session's results so far: pictures with their captions
            assert isinstance(out, list) and all(min(_size(item["image"])) > 0 for item in out), out
        else:
            raise AssertionError(f"no result check for {endpoint}")
    return check
