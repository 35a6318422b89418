"""Fuzz cases for the Train tab's endpoints, with a hand-written oracle (rows of value -> words).

Nothing here calls the app's code; the rows say, per field, what a person reading the README's
Train section and the field's label expects. The fuzz never starts a training run or prepares
data: every ``/train_start`` request names ``EMPTY``, a prepared folder with no images (the fuzz
creates it), so even a request whose every field is valid is refused, after all its fields were
checked, with the empty folder's own words (``START_BASE_WORDS``): a valid field row expects
those, a bad one its own. Likewise ``/train_prepare`` and ``/train_prepare_tiny`` rows for a bad
size or fraction use a folder (or no Tiny ImageNet zip) that would otherwise be prepared, and
``/train_export`` asks for runs that have no checkpoint.

Used by tests/test_web_fuzz.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

OK, ERR = "ok", "error"
EMPTY = "fuzz_empty"  # a prepared data folder with no images (train_images.npy of length 0)
PICTURES = "shapes"  # the shared app's folder of pictures, not prepared
DEFAULT_RUN = "my_model"  # the run the Train tab shows when none is named (its run-name box's default)
LIMIT_STEPS, LIMIT_MINUTES = 10**9, 10**9  # far above any cap on one session of a run

# what a request whose every field is valid gets back, per endpoint (the base requests below)
START_BASE_WORDS = ["no training images"]
PREPARE_TINY_BASE_WORDS = ["press Download"]  # the app has no Tiny ImageNet zip (and never downloads one)
EXPORT_BASE_WORDS = ["no checkpoint yet"]

# ---------------------------------------------------------------- names
# data folder names: a folder of the data root, by its name (letters, digits, spaces, '_', '.', '-')
NOT_A_NAME = ["not a data folder name"]
PICK = ["Pick a data folder"]
FOLDER = [  # (value, words of the error for it, or None: a name the endpoint goes on with)
    ("../", NOT_A_NAME), ("..", NOT_A_NAME), ("/etc", NOT_A_NAME), ("/etc/passwd", NOT_A_NAME),
    ("shapes/../../x", NOT_A_NAME), ("shapes/..", NOT_A_NAME), ("a\\b", NOT_A_NAME), ("~", NOT_A_NAME),
    ("\x00", NOT_A_NAME), ("x" * 500, NOT_A_NAME), ("shapes/red_disc/../../..", NOT_A_NAME), ("%2e%2e%2f", NOT_A_NAME),
    (["a"], NOT_A_NAME), ([1, 2], NOT_A_NAME), ({"a": 1}, NOT_A_NAME), ({"path": "x"}, NOT_A_NAME), ([[None]], NOT_A_NAME),
    ("", PICK), ("   ", PICK), (None, PICK), (False, PICK), ([], PICK), ({}, PICK),
]
# run names: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (spaces around are trimmed)
RUN_NAME_WORDS = ["run name"]
GOOD_RUNS = ["my_model", "no_such_run", " padded ", "x" * 64, "my.run-1", "5x"]
BAD_RUNS = ["x" * 65, "../", "..", "/etc", "/etc/passwd", "a b", "-x", "_x", ".x", "\x00", "a/b", "shapes/../../x",
            "%2e%2e%2f", "run\nname"]
EMPTY_RUNS = ["", "   ", None]  # no name: /train_status shows the default run; Start and Export need one
# other types, where the endpoint takes its inputs unprocessed (Start): the name is their text
TYPED_RUNS = [(5, None), (True, None), (["a"], RUN_NAME_WORDS), ({}, RUN_NAME_WORDS), (False, RUN_NAME_WORDS)]


def run_name(value: Any) -> str:
    """The name a good run-name value stands for (the box's text, trimmed)."""
    return str(value).strip()


# ---------------------------------------------------------------- options
SIZE = [  # image size: 16, 32 or 64 px
    (13, ["choose 16, 32 or 64"]), (10**9, ["choose 16, 32 or 64"]), (None, ["choose 16, 32 or 64"]),
    ("", ["choose 16, 32 or 64"]), ("big", ["must be a number"]), (-1, [">= 0"]), ("nan", ["finite"]),
    (2.5, ["whole number"]), (True, ["required"]), ([16], ["must be a number"]),
]
FRACTION = [  # held-out fraction: from 0 up to (not including) 0.5
    (0.9, ["up to 0.5"]), (0.5, ["up to 0.5"]), (-1, [">= 0"]), ("nan", ["finite"]), ("x", ["must be a number"]),
    ([0.1], ["must be a number"]), (True, ["required"]), ("inf", ["finite"]),
]
PRESET = [("smoke", None), ("default", None), ("imagenet64", ["preset"]), ("sr64", ["preset"]), ("Smoke", ["preset"]),
          ("", ["preset"]), (None, ["preset"]), (5, ["preset"])]
MINUTES = [  # 0 or empty: no time limit
    (0, None), (None, None), ("", None), (2.5, None), ("3", None), (-5, ["minutes"]), ("nan", ["finite"]),
    ("x", ["must be a number"]), (True, ["required"]), ([1], ["must be a number"]),
    (LIMIT_MINUTES, ["minutes"]),  # over the cap on minutes (its error names the limit)
]
STEPS = [  # 0 or empty: the preset's
    (0, None), (None, None), (7, None), ("12", None), (-1, ["steps"]), (2.5, ["whole number"]), ("nan", ["finite"]),
    ("x", ["must be a number"]), (True, ["required"]), (LIMIT_STEPS, ["steps"]),  # over the cap on steps
]
PRECISION = [("fp32", None), ("bf16", None), ("auto", None), (None, None), ("", None), ("fp8", ["auto, bf16 or fp32"]),
             ("FP32", ["auto, bf16 or fp32"]), ("fp32\x00", ["auto, bf16 or fp32"]), (5, ["auto, bf16 or fp32"])]
SAMPLE_EVERY = [(0, None), (None, None), (100, None), ("often", ["must be a number"]), (-1, [">= 0"]),
                (2.5, ["whole number"]), ("inf", ["finite"])]
RESUME = [(True, None), (False, None), ("yes", ["true or false"]), ("true", ["true or false"]), (None, ["true or false"]),
          (1, ["true or false"]), (0, ["true or false"])]
TINY_NAMES = [  # comma-separated Tiny ImageNet class names
    ("goldfish, tabby", None), ("goldfish", None), (5, None), ("x" * 5000, None), ("../etc", None),
    ("", ["Name some Tiny ImageNet classes"]), ("   ", ["Name some Tiny ImageNet classes"]),
    (",,,", ["Name some Tiny ImageNet classes"]), (None, ["Name some Tiny ImageNet classes"]),
    (", ".join(f"c{i}" for i in range(201)), ["Tiny ImageNet has 200"]),
]
MODEL_NAME = [  # the exported model's name: a plain folder name; empty = the run's name
    ("fuzz_model", None), ("", None), (None, None), ("m.v2-1", None), ("../x", ["invalid model name"]),
    ("/etc", ["invalid model name"]), ("a b", ["invalid model name"]), ("..", ["invalid model name"]),
    ("x" * 65, ["invalid model name"]), ("-m", ["invalid model name"]),
]


@dataclass
class TrainCase:
    endpoint: str
    args: list
    category: str
    expect: str          # OK / ERR
    words: list[str]     # one must be in the error (ERR)
    check: Callable[[Any], None] | None = None  # what a result must be (OK)


def make_empty_prepared(root: Path) -> Path:
    """``root/EMPTY``: a prepared folder (as Prepare writes) holding no images."""
    folder = root / EMPTY
    folder.mkdir()
    np.save(folder / "train_images.npy", np.zeros((0, 16, 16, 3), np.uint8))
    np.save(folder / "train_labels.npy", np.zeros((0,), np.int64))
    return folder


# ---------------------------------------------------------------- what a valid request returns
def check_status(name: str) -> Callable[[Any], None]:
    """/train_status of a run that does not exist: its one line, no grid (the placeholder that says the
    first one comes after the first sample interval), no timeline, no log."""
    def check(out) -> None:
        text, _curve, grid, timeline, log = out
        assert str(text).startswith(f"{name}: no run yet."), text
        assert "No samples yet" in str(grid) and "<img" not in str(grid), out
        assert not timeline and not log, out
    return check


def check_stop(out) -> None:
    assert out == "Nothing is training.", out


def check_folders(current: Any) -> Callable[[Any], None]:
    """/train_folders: the data root's folders, the one asked for kept. The prepared folder with no
    images is not offered (a preparation that kept no picture is not a data folder), so only the
    unprepared pictures folder is listed."""
    def check(out) -> None:
        names = [c[1] for c in out["choices"]]
        assert names == [PICTURES], out
        assert out["value"] == (current if current in names else PICTURES), out
    return check


# ---------------------------------------------------------------- the cases
def build(png: Any, rng) -> list[TrainCase]:
    """One changed field per case, every row of every table, for each Train endpoint."""
    cases: list[TrainCase] = []

    def add(endpoint: str, args: list, field: str, words: list[str] | None, base_words: list[str] | None = None,
            check: Callable[[Any], None] | None = None) -> None:
        if words is None and base_words is None:
            cases.append(TrainCase(endpoint, args, f"{endpoint[1:]}: {field}", OK, [], check))
        else:
            cases.append(TrainCase(endpoint, args, f"{endpoint[1:]}: {field}", ERR, words or base_words))

    def each(endpoint: str, base: list, index: int, field: str, table, base_words=None):
        for value, words in table:
            args = list(base)
            args[index] = value
            add(endpoint, args, field, words, base_words)

    # /train_prepare: folder, size, held-out fraction. A bad option is refused before anything is prepared;
    # the folder rows use good options, the option rows the unprepared folder of pictures.
    prep = [PICTURES, 16, 0.25]
    each("/train_prepare", prep, 0, "folder", FOLDER + [("nonexistent", ["not a folder"]),
                                                        (EMPTY, ["already prepared"])])
    each("/train_prepare", prep, 1, "size", SIZE)
    each("/train_prepare", prep, 2, "held-out fraction", FRACTION)

    # /train_start: run, data folder, preset, minutes, steps, precision, sample every, resume
    start = ["fuzz_run", EMPTY, "smoke", 1, 5, "fp32", 5, True]
    each("/train_start", start, 0, "run name", [(r, None) for r in GOOD_RUNS] + TYPED_RUNS
         + [(r, RUN_NAME_WORDS) for r in BAD_RUNS + EMPTY_RUNS], START_BASE_WORDS)
    each("/train_start", start, 1, "data folder", FOLDER + [(PICTURES, ["not prepared yet"]),
                                                             ("nonexistent", ["not prepared yet"]),
                                                             (EMPTY, None)], START_BASE_WORDS)
    for index, field, table in ((2, "preset", PRESET), (3, "minutes", MINUTES), (4, "steps", STEPS),
                                (5, "precision", PRECISION), (6, "sample every", SAMPLE_EVERY), (7, "resume", RESUME)):
        each("/train_start", start, index, field, table, START_BASE_WORDS)

    # /train_status: any good name shows that run (none exists: "no run yet"); no name, the default run
    for r in GOOD_RUNS:
        add("/train_status", [r], "run name", None, check=check_status(run_name(r)))
    for r in EMPTY_RUNS:
        add("/train_status", [r], "no run name", None, check=check_status(DEFAULT_RUN))
    for r in BAD_RUNS:
        add("/train_status", [r], "bad run name", RUN_NAME_WORDS)

    # /train_export: run, model name, the model picker's model; no run has a checkpoint
    export = [DEFAULT_RUN, "fuzz_model", "tiny"]
    each("/train_export", export, 0, "run name", [(r, None) for r in GOOD_RUNS] + [(r, RUN_NAME_WORDS) for r in
                                                                              BAD_RUNS + EMPTY_RUNS], EXPORT_BASE_WORDS)
    each("/train_export", export, 1, "model name", MODEL_NAME, EXPORT_BASE_WORDS)

    # Tiny ImageNet: names, size, fraction; the app has no zip and its mirror is unreachable
    tiny = ["goldfish, tabby", 16, 0.1]
    each("/train_prepare_tiny", tiny, 0, "class names", TINY_NAMES, PREPARE_TINY_BASE_WORDS)
    each("/train_prepare_tiny", tiny, 1, "size", SIZE, PREPARE_TINY_BASE_WORDS)
    each("/train_prepare_tiny", tiny, 2, "held-out fraction", FRACTION, PREPARE_TINY_BASE_WORDS)
    add("/train_download_tiny", [], "unreachable mirror", ["download failed", "Tiny ImageNet needs"])

    # a zip upload: a PNG is not a zip; nothing is nothing
    add("/train_upload", [png], "a PNG, not a zip", ["not a zip"])
    add("/train_upload", [None], "nothing", ["Upload a .zip"])

    # no inputs / the folder picker: junk arguments are ignored or kept out of the choices
    for _ in range(5):
        junk = [rng.choice([None, True, [], {}, "5", "x", 0]) for _ in range(rng.randint(0, 2))]
        add("/train_stop", junk, "nothing running", None, check=check_stop)
    for current in (PICTURES, EMPTY, None, "../", 5, "nonexistent"):
        add("/train_folders", [current], "folders", None, check=check_folders(current))
    return cases
