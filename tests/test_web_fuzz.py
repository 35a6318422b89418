"""Fuzz the running app: 1000+ bad (and odd-but-valid) inputs over every API endpoint.

A seeded generator (deterministic: the same cases on every run) mutates a
valid request for each endpoint with values from pools of bad inputs (empty,
whitespace-only, 10,000-character, control-character, mojibake and
lone-surrogate prompts; steps 0 / -1 / 10^9; guidance NaN / inf / negative;
image counts over the cap; wrong types: None, bools, lists, dicts, numeric
strings ...), plus a set of hostile uploads for the forward tab (a 20000x20000
decompression bomb, corrupt bytes named .png, a text file named .jpg, a zero-byte
file, a file over the 10 MB limit, server-side paths ...).

Most cases go through ``gradio_client`` like any API user. Values it cannot
send (JSON NaN / Infinity, lone surrogates, which it refuses locally) and file
payloads it would upload for us (a server-side ``{"path": ...}``) go through
the REST API (``/gradio_api/call/<name>``) with the same JSON a client could
post. The oracle is written by hand and calls none of the app's code: the tables of
``tests/fuzz_studio_cases.py`` give every field of every endpoint rows of (value,
verdict, words the error must contain), and the hostile uploads carry their
declared outcome. The random inputs (no oracle) must each get a valid result or
a clear error. Then:

* a valid input must give a valid result, checked by what came back, through the
  client or the REST API alike (image count and sizes, each PNG's recipe, the
  status line; the strips' and plots' sizes ...);
* a bad input must give an error whose message is a clear sentence (no
  traceback, not gradio's generic "has raised an exception" text), naming what
  the table says is wrong (or exactly the declared message);
* gradio's generic refusal is accepted only for payloads gradio itself
  rejects before web.py runs (a file input that is not a file object, a
  server-side path carrying gradio's ``meta`` tag, a URL: its SSRF guard);
* nothing may hang (every call has a timeout) and nothing may crash the server:
  afterwards the process is alive, a normal request succeeds, and the server
  log shows no traceback through web.py (an exception that escaped a handler).

Runs on the shared tiny-model app (tests/web_helpers.py), four client threads.
``pytest tests/test_web_fuzz.py -s`` prints the tally by endpoint and category.
Running a case and judging it: tests/fuzz_runner.py; the hostile uploads: tests/fuzz_uploads.py.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

import web

pytest.register_assert_rewrite("web_helpers")
from web_helpers import ROOT, TINY_CLASSES, TINY_SIZE  # noqa: E402

import fuzz_studio_cases  # noqa: E402
import fuzz_train_cases  # noqa: E402
from fuzz_runner import (ANY, ERROR, HTTP_4XX, OK, SCHEMA, Case,  # noqa: E402
                         run_case, submit_once_more_if_the_stream_closed)
from fuzz_uploads import image_file, make_uploads  # noqa: E402

pytest_plugins = ["web_helpers"]  # the shared app (one per test session)

SEED = 20240611
MIN_CASES = 1000
THREADS = 4
MAX_RETRIED = 5  # client-side stream races tolerated (submit_once_more_if_the_stream_closed): 0-1 per run seen
# tiny has its data folder (Forward tab), tiny_b has none, tiny-live is tiny's few-step student (Live)
MODELS = ("tiny", "tiny-live", "tiny_b")
CLASSES = [c["name"] for c in TINY_CLASSES]
# The sampler picker's labels and their step ranges on a 1000-step model, written from the app's
# documented limits (README: DDPM / DDIM / DPM-Solver++; the LCM label for few-step students), not read
# from web.py: the oracle must not share the code it checks.
STEP_RANGES = {"DPM-Solver++": (1, 50), "DDIM": (1, 250), "DDPM": (10, 1000), "LCM (few-step students)": (1, 8)}
LABELS = list(STEP_RANGES)
MAX_SEED = 2**32 - 1  # seeds are 0 .. 4294967295


# =============================================================== pools of inputs
WRONG_TYPES = [None, True, False, [], ["a"], [1, 2], {}, {"a": 1}, {"path": "x"}, [[None]]]
NUMBERS = [0, -1, 1, 2, 4, 5, 9, 10, 16, 17, 50, 51, 250, 251, 999, 1000, 1001, 10**9, -10**9, 10**30, -10**30,
           2**63, 2**32 - 1, 2**32, 0.5, 5.5, 5 + 1e-12, 1e308, -1e308, 5e-324, -0.0, 3.0, 20.0, 20.0001, -0.1]
NUM_STRINGS = ["", " ", "5", " 7 ", "5.0", "1e3", "1e9", "0x10", "1_0", "\u0663", "\uff11\uff10", "nan", "NaN",
               "inf", "-inf", "Infinity", "-1", "abc", "5 steps", "\x00", "\u200b"]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]  # only through the REST API (JSON NaN / Infinity)
SAMPLERS = LABELS + ["ddim", "dpm++", "ddpm", " DDIM ", "DDIM\x00", "Euler", "euler a", "", " ", None, 5, [], {},
                     ["DDIM"], "x" * 10_000, "DPM-Solver++\n"]
MODEL_VALUES = list(MODELS) + [None, "", " ", " tiny ", "TINY", "tiny_c", "../etc", "/etc/passwd", "./tiny",
                                "tiny\x00", "x" * 10_000, 5, 0, [], {}, ["tiny"], "tiny; rm -rf /"]
SCHEDULE_VALUES = ["linear", "cosine", "", "Linear", "quadratic", None, 1, [], {}, "cosine\x00", "x" * 10_000]
TIMESTEP_VALUES = ["0", "0, 999", "0,250,500,999", "0;1;2", "0 1 2", "", " ", ",,,", "-1", "1000", "999.5", "1e2",
                   "abc", "0," * 13, ", ".join(str(i) for i in range(12)), "0" * 100_000, "\x00", [0, 999],
                   [], [1.5], None, 500, {"a": 1}, "nan", "inf", "\u0663"]

# Prompts the brief names, and other odd text; the oracle decides valid or not.
FIXED_PROMPTS = [
    "", " ", "   \n\t\r  ", "\x00", "\x00\x01\x02\x1b\x7f", "\u200b\u200c\u200d\ufeff", "\u2028\u2029",
    "x" * 10_000, "y" * 501, "\u00e9" * 501, "\U0001f41f" * 501, "a " * 1000, "a " * 1001, "\x85" * 50,
    "a\x00b", "goldfish\x1b[31m red", "\u00c3\u00a9\u00c3\u00a8 mojibake goldfish", "\ufffd\ufffd replacement",
    "\ufeffa photo of a goldfish", "\u202egoldfish RTL override", "e\u0301 combining accent",
    "\u91d1\u9b5a\u306e\u5199\u771f", "\U0001f41f" * 10, "a photo of a goldfish " * 22, "\ue000 private use",
    "\uffff\ufffe noncharacters", "a" * 500, "b" * 499 + "\x00", "%s %d {} {0} ${x} <script>", "'; DROP TABLE--",
    "\\u0000 escaped \\n", "C:\\Windows\\system32", "\t" * 10 + "goldfish",
]
SURROGATE_PROMPTS = ["\udcff", "a \udcff b", "\ud800", "\udc80\udc81 goldfish", "\ud83d"]  # REST API only
CHAR_RANGES = [(0x20, 0x7e), (0x00, 0x1f), (0x7f, 0x9f), (0xa0, 0xff), (0x300, 0x36f), (0x4e00, 0x4e80),
               (0x1f300, 0x1f5ff), (0x200b, 0x200f), (0x2028, 0x202e), (0xe000, 0xe010), (0xfff0, 0xffff)]


def rand_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 3, 20, 100, 499, 500, 501, 1999, 2000, 2001, 10_000])
    if rng.random() < 0.3:  # random bytes read as Latin-1: what a non-UTF-8 file pasted as text looks like
        return bytes(rng.randrange(256) for _ in range(n)).decode("latin-1")
    ranges = rng.sample(CHAR_RANGES, rng.randint(1, 4))
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def num_pool(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.55:
        return rng.choice(NUMBERS)
    if r < 0.85:
        return rng.choice(NUM_STRINGS)
    return rng.choice(WRONG_TYPES)


def roundtrip(args: list) -> list:
    """What the server receives (tuples become lists ...); NaN / Infinity survive as Python's json writes them."""
    return json.loads(json.dumps(args))


# =============================================================== expectations
# Exact verdicts come from the hand-written tables in tests/fuzz_studio_cases.py (every endpoint that
# takes user input, the original four included). The random inputs below have no oracle of their own:
# each must get a valid result or a clear error (ANY), never a crash, a hang or gradio's generic text.
def timestep_count(text: Any) -> int:
    """How many timesteps a valid field names (commas, semicolons or spaces between them)."""
    return len([p for p in re.split(r"[,; ]", str(text)) if p.strip()])


def choice_expect(values: list, choices_per_arg: list[tuple], none_ok: tuple[bool, ...] = (True, True)) -> str:
    """Helper endpoints with Dropdown / Radio inputs: gradio checks strings against the choices itself.
    None passes gradio; web.py takes it as "no class" / "the first model", but not as a sampler."""
    verdict = OK
    for v, choices, nok in zip(values, choices_per_arg, none_ok):
        if v is None and not nok:
            return ERROR
        if v is None or v in choices:
            continue
        if isinstance(v, str):
            return ERROR
        verdict = ANY  # lists, numbers, dicts: whether gradio or web.py refuses them is theirs to choose
    return verdict


# =============================================================== result checks
def image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def gallery_paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item[0] for item in gallery]


def check_generate(args: list) -> Callable[[Any], None]:
    """A /generate result for these inputs: one 16 px PNG per image, each with its recipe (the steps asked
    for, its own seed), and the status line."""
    def check(out) -> None:
        gallery, status, seed, gif, _strip, files = out
        paths = gallery_paths(gallery)
        assert str(status).startswith("Done"), status
        assert len(paths) == int(float(args[6])), out
        assert 0 <= int(seed) <= 2**32 - 1
        for i, p in enumerate(paths):
            assert image_size(p) == (TINY_SIZE, TINY_SIZE)
            _prompt, recipe = fuzz_studio_cases._recipe(p)  # parsed by hand, not by the app's reader
            assert int(recipe["Steps"]) == int(float(args[3])) and int(recipe["Seed"]) == int(seed) + i, recipe
        assert gif and image_size(gif)[0] >= TINY_SIZE
    return check


FORWARD_SIZE = 128  # the Forward tab draws uploads at 128 px, with a 2 px gap and a 16 px caption row
DATA_FRAME = 96  # ... and a 16 px image of the model's data at 96 px (plot_func's smallest frame)


def is_plot(path: Any) -> bool:
    w, h = image_size(path)
    return w > h > 100  # a matplotlib figure, wider than tall


def check_forward(timesteps: Any) -> Callable[[Any], None]:
    k = timestep_count(timesteps)

    def check(out) -> None:
        strip, plot = out
        assert image_size(strip) == (k * FORWARD_SIZE + (k - 1) * 2, FORWARD_SIZE + 16)
        assert is_plot(plot)
    return check


def check_forward_data(timesteps: Any) -> Callable[[Any], None]:
    k = timestep_count(timesteps)

    def check(out) -> None:
        image, strip, plot = out
        assert image_size(image) == (TINY_SIZE, TINY_SIZE)
        assert image_size(strip) == (k * DATA_FRAME + (k - 1) * 2, DATA_FRAME + 16)
        assert is_plot(plot)
    return check


def check_class_prompt(cls: Any) -> Callable[[Any], None]:
    def check(out) -> None:
        if cls in CLASSES:
            assert out == f"a photo of a {cls}", out
        else:  # no class: gr.skip() leaves the prompt alone
            assert out is None or isinstance(out, (str, dict)), out
    return check


def check_sampler_steps(sampler: Any) -> Callable[[Any], None]:
    def check(out) -> None:
        assert isinstance(out, dict) and out.get("__type__") == "update", out
        if sampler in LABELS:
            assert (out["minimum"], out["maximum"]) == STEP_RANGES[sampler], out
    return check


def check_select_model(model: Any) -> Callable[[Any], None]:
    def check(out) -> None:
        assert len(out) == 12, out  # the last two: the examples and the guidance interval, which follow the model
        name = model if model in MODELS else MODELS[0]
        assert f"**{name}**" in out[0], out[0]
        assert out[-1]["value"] == ("0,100" if name == "tiny_b" else ""), out[-1]
    return check


def check_list_models(out) -> None:
    assert isinstance(out, dict) and [c[1] for c in out["choices"]] == list(MODELS), out


def check_schedule(out) -> None:
    assert is_plot(out)


def check_random_seed(out) -> None:
    assert isinstance(out, int) and 0 <= out <= MAX_SEED, out


def check_stop(out) -> None:
    assert out in ("Nothing is running.", "Stopping at the next step..."), out


# =============================================================== building the cases
# Over 100 lines on purpose: the hand-written table of cases, one endpoint after another.
def build_cases(uploads: list[tuple[str, Path, str, str | None]], server_url: str,
                studio_dir: Path | None = None) -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []

    # ---------------------------------------------------------------- /generate (client)
    base = ["a photo of a goldfish", "tiny", "DPM-Solver++", 5, 3.0, 7, 1, False]
    fields = {0: ("prompt", None), 1: ("model", MODEL_VALUES), 2: ("sampler", SAMPLERS), 3: ("steps", None),
              4: ("guidance", None), 5: ("seed", None), 6: ("num_images", None),
              7: ("show_strip", [True, "yes", "false", 0, None, [], {}, "x" * 10_000])}
    named = [  # the brief's list, one field at a time
        (0, ""), (0, "   \t\n "), (0, "x" * 10_000), (0, "\x00\x01\x02"), (0, "\u00c3\u00a9\u00c3\u00a8"),
        (3, 0), (3, -1), (3, 10**9), (4, -1.0), (4, "nan"), (4, "inf"), (4, "-inf"), (6, 17), (6, 10**9),
        (6, 0), (0, 123), (0, ["a"]), (0, {"a": 1}), (3, "five"), (3, [5]), (4, None), (5, "seed"), (1, 123),
    ]
    for i, v in named:
        args = list(base)
        args[i] = v
        cases.append(_generate_case(args, f"generate: {fields[i][0]} (named)"))
    tries = 0
    while sum(c.endpoint == "/generate" for c in cases) < 250 and tries < 10_000:
        tries += 1
        args = list(base)
        k = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        picked = rng.sample(range(8), k)
        for i in picked:
            pool = fields[i][1]
            if i == 0:
                args[i] = rng.choice(FIXED_PROMPTS) if rng.random() < 0.5 else (
                    rand_text(rng) if rng.random() < 0.85 else rng.choice(WRONG_TYPES + [1, 2.5]))
            elif pool is None:
                args[i] = num_pool(rng)
            else:
                args[i] = rng.choice(pool)
        if not cheap(args):  # a request that may be valid and costly: the tables cover the valid ones
            continue
        cases.append(_generate_case(args, f"generate: {fields[picked[0]][0]}" if k == 1 else "generate: 2-3 fields"))

    # ---------------------------------------------------------------- /generate (REST: NaN, Infinity, surrogates)
    for i, name in ((3, "steps"), (4, "guidance"), (5, "seed"), (6, "num_images")):
        for v in NON_FINITE:
            args = list(base)
            args[i] = v
            cases.append(_generate_case(args, f"generate: {name} non-finite (REST)", via="raw", expect=ERROR,
                                        message="must be a finite number"))
    # valid requests through the REST API too: what comes back is checked as a client's result is
    for args in (list(base), [*base[:6], 2, base[7]]):
        cases.append(_generate_case(args, "generate: valid (REST)", via="raw", expect=OK))
    for p in SURROGATE_PROMPTS:
        args = list(base)
        args[0] = p
        cases.append(_generate_case(args, "generate: lone surrogate prompt (REST)", via="raw"))
    for i in (1, 2):
        args = list(base)
        args[i] = "\udcff"
        cases.append(_generate_case(args, "generate: lone surrogate model/sampler (REST)", via="raw"))

    # ---------------------------------------------------------------- /forward: uploads, then parameters
    from gradio_client import handle_file

    ok_png = next(p for _, p, _, _ in uploads if p.name == "ok.png")
    big = next(p for _, p, _, _ in uploads if p.name == "big.png")
    for cat, path, expect, msg in uploads:
        cases.append(Case("/forward", [handle_file(str(path)), "tiny", "cosine", "0, 500", 0], cat, expect,
                          message=msg, check=check_forward("0, 500")))
    cases.append(Case("/forward", [None, "tiny", "cosine", "0", 0], "upload: none", ERROR,
                      message="Upload an image first (or pick one from the model's data)."))
    fwd_fields = {1: MODEL_VALUES, 2: SCHEDULE_VALUES, 3: TIMESTEP_VALUES, 4: None}
    while sum(c.endpoint == "/forward" and c.category.startswith("forward:") for c in cases) < 45:
        args = [None, "tiny", "linear", "0, 999", 3]
        i = rng.choice(list(fwd_fields))
        args[i] = num_pool(rng) if fwd_fields[i] is None else rng.choice(fwd_fields[i])
        args[0] = handle_file(str(ok_png))
        cases.append(Case("/forward", args, f"forward: {('model', 'schedule', 'timesteps', 'seed')[i - 1]}", ANY,
                          check=check_forward(args[3])))
    # payloads gradio_client would never send: server paths, not-a-file values, URLs (REST)
    outside = "Upload the image to this app; a file path on the server is not accepted."
    for cat, image, expect, msg in [
        ("upload: server path (REST)", {"path": "/etc/passwd"}, ERROR, outside),
        ("upload: server path (REST)", {"path": "/etc/shadow"}, ERROR, outside),
        ("upload: server path (REST)", {"path": "/nonexistent/x.png"}, ERROR, outside),
        ("upload: server path (REST)", {"path": str(ok_png)}, ERROR, outside),
        ("upload: server path (REST)", {"path": str(ROOT / "web.py")}, ERROR, outside),
        ("upload: server path (REST)", {"path": "/tmp/gradio/../../etc/passwd"}, ERROR, outside),
        ("upload: server path (REST)", {"path": "../../../../etc/hostname"}, ERROR, outside),
        ("upload: server path (REST)", {"path": ""}, ERROR, "Upload an image first (or pick one from the model's "
                                                           "data)."),
        ("upload: gradio refuses (REST)", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, SCHEMA,
         None),
        ("upload: gradio refuses (REST)", {"path": server_url + "gradio_api/info",
                                           "meta": {"_type": "gradio.FileData"}}, SCHEMA, None),
        ("upload: gradio refuses (REST)", "/etc/passwd", SCHEMA, None),
        ("upload: gradio refuses (REST)", 12345, SCHEMA, None),
        ("upload: gradio refuses (REST)", [1, 2, 3], SCHEMA, None),
        ("upload: gradio refuses (REST)", {"path": None}, SCHEMA, None),
    ]:
        cases.append(Case("/forward", [image, "tiny", "cosine", "0", 0], cat, expect, message=msg, via="raw"))

    # ---------------------------------------------------------------- /forward_data
    fd_fields = {0: MODEL_VALUES, 1: CLASSES + ["", None, "Goldfish", "shark", 5, [], {}, ["goldfish"], "x" * 10_000],
                 2: None, 3: SCHEDULE_VALUES, 4: TIMESTEP_VALUES, 5: None}
    while sum(c.endpoint == "/forward_data" for c in cases) < 60:
        args = ["tiny", "jellyfish", 1, "cosine", "0, 500, 999", 0]
        for i in rng.sample(list(fd_fields), 1 if rng.random() < 0.8 else 2):
            args[i] = num_pool(rng) if fd_fields[i] is None else rng.choice(fd_fields[i])
        cases.append(Case("/forward_data", args, "forward_data", ANY, check=check_forward_data(args[4])))
    for args in (["tiny", "jellyfish", 1, "cosine", "0, 500", 0], ["tiny", None, 7, "linear", "999", 3]):
        cases.append(Case("/forward_data", args, "forward_data: valid (REST)", OK, via="raw",
                          check=check_forward_data(args[4])))
    for i, v in ((2, float("nan")), (2, float("inf")), (5, float("-inf")), (1, "\udcff"), (4, "\udcff")):
        args = ["tiny", "jellyfish", 1, "cosine", "0, 500", 0]
        args[i] = v
        cases.append(Case("/forward_data", args, "forward_data (REST)", ANY, via="raw",
                          check=check_forward_data(args[4])))

    # ---------------------------------------------------------------- helper endpoints
    odd = [None, "", " ", "x" * 10_000, "\x00", 5, 1.5, True, [], {}, {"a": 1}, "goldfish\x00"]
    for _ in range(35):
        cls = rng.choice(CLASSES + odd)
        model = rng.choice(list(MODELS) + [None] + odd) if rng.random() < 0.4 else "tiny"
        cases.append(Case("/class_prompt", [cls, model], "class_prompt",
                          choice_expect([cls, model], [tuple(CLASSES), MODELS]), check=check_class_prompt(cls)))
    for _ in range(35):
        s = rng.choice(LABELS) if rng.random() < 0.4 else rng.choice(SAMPLERS + odd)
        model = rng.choice(list(MODELS) + [None] + odd) if rng.random() < 0.4 else "tiny"
        cases.append(Case("/sampler_steps", [s, model], "sampler_steps",
                          choice_expect([s, model], [tuple(LABELS), MODELS], (False, True)),
                          check=check_sampler_steps(s)))
    for _ in range(25):
        m = rng.choice(MODEL_VALUES + odd)
        cases.append(Case("/select_model", [m], "select_model", choice_expect([m], [MODELS]),
                          check=check_select_model(m)))
    for _ in range(15):
        m = rng.choice(MODEL_VALUES + odd)
        cases.append(Case("/list_models", [m], "list_models", choice_expect([m], [MODELS]), check=check_list_models))
    for T in [10**9, [], {}, "1e3", "\u0663\u0663"] + [num_pool(rng) for _ in range(15)]:
        cases.append(Case("/schedule", [T], "schedule", ANY, check=check_schedule))
    for T in NON_FINITE:
        cases.append(Case("/schedule", [T], "schedule (REST)", ERROR, message="must be a finite number", via="raw"))
    cases.append(Case("/schedule", [1000], "schedule: valid (REST)", OK, via="raw", check=check_schedule))
    for _ in range(10):  # no inputs: extra junk arguments are ignored
        junk = [rng.choice(WRONG_TYPES + NUM_STRINGS) for _ in range(rng.randint(0, 3))]
        cases.append(Case("/random_seed", junk, "random_seed", OK, check=check_random_seed))
        cases.append(Case("/stop", list(junk), "stop", OK, check=check_stop))

    # ---------------------------------------------------------------- the Train tab (its own oracle)
    for tc in fuzz_train_cases.build(handle_file(str(ok_png)), rng):
        cases.append(Case(tc.endpoint, tc.args, tc.category, OK if tc.expect == "ok" else ERROR, words=tc.words,
                          check=tc.check))
    # a gr.File input: gradio validates the payload as FileData (and its path) before web.py runs
    for v in WRONG_TYPES[1:6]:
        cases.append(Case("/train_upload", [v], "train_upload: gradio refuses a wrong type", SCHEMA))
    for path in ("/etc/passwd", "/nonexistent/x.zip", "../../x.zip"):
        cases.append(Case("/train_upload", [{"path": path, "meta": {"_type": "gradio.FileData"}}],
                          "train_upload: gradio refuses a server path (REST)", SCHEMA, via="raw"))

    # ---------------------------------------------------------------- malformed HTTP bodies
    for body in (b"not json", b"{", b"[]", b'{"data": 5}', b"{}", b'{"data": null}', b'{"data": []}',
                 b'{"data": ["only one"]}', b'{"data": [' + b'"x",' * 20 + b'"x"]}', b"\xff\xfe\x00garbage",
                 b'{"data": ["' + b"a" * (2 * 2**20) + b'"]}'):
        cases.append(Case("/generate", [], "protocol: malformed body", HTTP_4XX, via="body", body=body))
    cases.append(Case("/upload", [], "upload: over the limit (HTTP)", HTTP_4XX, via="upload",
                      body=big.read_bytes()))

    # ---------------------------------------------------------------- the studio endpoints (their own oracle)
    if studio_dir is not None:
        for sc in fuzz_studio_cases.build(fuzz_studio_cases.files(studio_dir), handle_file, random.Random(SEED + 1)):
            check = check_generate(sc.args) if sc.endpoint == "/generate" else None  # else check_result's
            cases.append(Case(sc.endpoint, sc.args, sc.category, OK if sc.expect == "ok" else ERROR, words=sc.words,
                              check=check))
        for _ in range(5):
            cases.append(Case("/history", [], "history", OK, words=[]))  # checked by check_result
    return cases


def cheap(args: list) -> bool:
    """False for inputs that could pass as many images or many steps (a random case must stay quick)."""
    def at_most(v: Any, limit: float) -> bool:
        try:
            return not float(v) > limit  # NaN and junk are refused before any work
        except (TypeError, ValueError, OverflowError):
            return True
    return at_most(args[6], 4) and at_most(args[3], 50) and (at_most(args[6], 1) or at_most(args[3], 15))


def _generate_case(args: list, category: str, via: str = "client", expect: str = ANY,
                   message: str | None = None) -> Case:
    return Case("/generate", args, category, expect, message=message, via=via, check=check_generate(args))


# =============================================================== the test
@pytest.mark.slow
def test_fuzz_every_endpoint(tiny_app, tmp_path, request):
    from gradio_client import Client

    url = tiny_app.url
    # the oracle expects the app as it started: its models (two, and the cascade's tiny_sr) and an
    # unprepared "shapes" folder
    # (tests that train or export use train_app, an app of their own)
    train_root = tiny_app.data.parent / "train_data"
    added = sorted({p.name for p in tiny_app.store.iterdir() if p.is_dir()} - {*MODELS, "tiny_sr"})
    assert not added, f"another test added models to the shared app's store: {added}"
    assert sorted(p.name for p in train_root.iterdir()) == ["shapes"], sorted(train_root.iterdir())
    # the Train cases' prepared-but-empty folder (Start refuses it after checking every field), for this test only
    empty = fuzz_train_cases.make_empty_prepared(train_root)
    request.addfinalizer(lambda: shutil.rmtree(empty, ignore_errors=True))
    probe = tiny_app.client()
    endpoints = set(probe.view_api(return_format="dict", print_info=False)["named_endpoints"])
    t_build = time.monotonic()
    uploads = make_uploads(tmp_path / "uploads")
    cases = build_cases(uploads, url, tmp_path / "studio")
    t_build = time.monotonic() - t_build
    assert len(cases) >= MIN_CASES
    assert endpoints <= {c.endpoint for c in cases}, endpoints - {c.endpoint for c in cases}
    assert [c.short() for c in cases] == [c.short() for c in build_cases(uploads, url, tmp_path / "studio")]  # seeded
    n_studio = sum(c.words is not None for c in cases)
    print(f"\n[fuzz] {n_studio} studio cases (hand-written oracle), {len(cases) - n_studio} others")
    rng = random.Random(SEED)
    order = list(range(len(cases)))
    rng.shuffle(order)  # valid generate runs spread over the whole batch

    log_offset = tiny_app.server.log_path.stat().st_size
    local = threading.local()

    def client():
        if not hasattr(local, "c"):
            local.c = Client(url, verbose=False, analytics_enabled=False,
                             download_files=str(tmp_path / "downloads" / threading.current_thread().name))
        return local.c

    t0 = time.monotonic()
    with ThreadPoolExecutor(THREADS, thread_name_prefix="fuzz") as pool:
        results = list(pool.map(lambda i: run_case(cases[i], client(), url), order))
    wall = time.monotonic() - t0

    # ------------------------------------------------------------ the tally
    by_endpoint: dict[str, Counter] = defaultdict(Counter)
    by_category: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_endpoint[r.case.endpoint][r.outcome] += 1
        by_category[r.case.category][r.outcome] += 1
    lat = sorted(r.seconds for r in results)
    print(f"\n[fuzz] {len(cases)} cases built in {t_build:.1f} s")
    print(f"[fuzz] {len(results)} inputs in {wall:.1f} s ({len(results) / wall:.1f}/s, {THREADS} threads); "
          f"per-call latency p50 {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s")
    for title, table in (("endpoint", by_endpoint), ("category", by_category)):
        for k in sorted(table):
            print(f"[fuzz]   {title} {k:45s} {sum(table[k].values()):4d}  {dict(table[k])}")
    total = Counter(r.outcome for r in results)
    print(f"[fuzz]   total {dict(total)}")
    for r in sorted(results, key=lambda r: -r.seconds)[:5]:
        print(f"[fuzz]   slowest {r.seconds:5.2f} s {r.outcome:6s} {r.case.short()[:110]}")

    retried = [r for r in results if r.retried]
    print(f"[fuzz]   {len(retried)} submitted twice (the client's stream closed under the first): "
          + ", ".join(r.case.short()[:60] for r in retried[:5]))
    assert len(retried) <= MAX_RETRIED, f"{len(retried)} jobs lost their event stream: more than a rare race"

    failures = [r for r in results if r.problem]
    for r in failures[:25]:
        print(f"[fuzz] FAIL {r.case.short()}\n         -> {r.problem}")
    assert not failures, f"{len(failures)} of {len(results)} inputs mishandled; first: " \
                         f"{failures[0].case.short()} -> {failures[0].problem}"

    # ------------------------------------------------------------ still up, still serving, nothing escaped
    assert tiny_app.server.proc.poll() is None, "the server died"
    runs = tiny_app.data.parent / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"the fuzz started a training run: {list(runs.iterdir())}"
    out = tiny_app.client().predict("a photo of a goldfish", "tiny", "DPM-Solver++", 5, 3.0, 1, 1, False,
                                    api_name="/generate")
    assert out[1].startswith("Done") and len(out[0]) == 1
    with open(tiny_app.server.log_path, errors="replace") as f:
        f.seek(log_offset)
        new_log = f.read()
    escaped = [line for line in new_log.splitlines() if 'web.py"' in line or "webui/" in line or "ERROR web" in line]
    assert not escaped, "tracebacks through web.py in the server log during the fuzz run:\n" + "\n".join(escaped[:20])


def test_check_upload_only_opens_files_in_the_upload_folder(tmp_path):
    """The guard behind /forward: a path outside gradio's upload folder is refused before it is touched."""
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    inside = image_file(uploads / "ok.png", "RGB", (8, 8), "PNG")
    outside = image_file(tmp_path / "secret.png", "RGB", (8, 8), "PNG")
    assert web.check_upload(str(inside), upload_dir=uploads).size == (8, 8)
    assert web.check_upload({"path": str(inside)}, upload_dir=uploads).mode == "RGB"
    (uploads / "link.png").symlink_to(outside)
    for bad in (outside, uploads / ".." / "secret.png", uploads / "link.png", "/etc/passwd", "/nonexistent.png",
                "relative/x.png"):
        with pytest.raises(web.InputError, match="file path on the server is not accepted"):
            web.check_upload({"path": str(bad)}, upload_dir=uploads)
    assert web.check_upload(str(outside)).size == (8, 8)  # no upload_dir: any path (the CLI / tests)


def test_a_job_whose_event_stream_closed_is_submitted_once_more_and_only_once():
    """The fuzz's guard against gradio_client's stream race: a client-side CancelledError gets one
    more try; a second one, or any other error, is the case's outcome."""
    import concurrent.futures

    class FakeJob:
        def __init__(self, outcome):
            self.outcome = outcome

        def result(self, timeout=None):
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    class FakeClient:
        def __init__(self, *outcomes):
            self.outcomes, self.calls = list(outcomes), 0

        def submit(self, *args, api_name=None):
            self.calls += 1
            return FakeJob(self.outcomes.pop(0))

    case = Case("/forward_data", ["tiny"], "forward_data", ANY)
    assert submit_once_more_if_the_stream_closed(FakeClient("ok"), case) == ("ok", False)
    flaky = FakeClient(concurrent.futures.CancelledError(), "ok")
    assert submit_once_more_if_the_stream_closed(flaky, case) == ("ok", True) and flaky.calls == 2
    with pytest.raises(concurrent.futures.CancelledError):
        submit_once_more_if_the_stream_closed(FakeClient(*[concurrent.futures.CancelledError()] * 2), case)
    with pytest.raises(ValueError):  # not a stream race: no second try
        submit_once_more_if_the_stream_closed(FakeClient(ValueError("refused"), "ok"), case)
