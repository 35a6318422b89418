"""The Train tab's endpoints on the tiny app: prepare a folder of pictures, start a real training
process, refuse a second start, stop, resume, export, and generate with the new model; hostile
folder and run names; the tab is off where the app is reachable by others without a login."""
from __future__ import annotations

import json
import re
import time
from argparse import Namespace

import pytest

from webui.tab_train import MAX_MINUTES, MAX_STEPS, train_disabled_reason

pytest_plugins = ["web_helpers"]
pytestmark = pytest.mark.slow  # a real training process: python3 dev.py test --full


def call(client, api: str, *args):
    return client.predict(*args, api_name=api)


def captions(html: str) -> list[str]:
    return re.findall(r"<figcaption[^>]*>([^<]*)</figcaption>", html or "")


def chart_points(plot) -> list:
    """The loss chart's points (its Vega-Lite spec's data), [] before the first loss."""
    return json.loads(plot["plot"])["data"]["values"] if plot else []


def wait_status(client, run: str, words: tuple[str, ...], timeout: float = 180.0) -> tuple:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = call(client, "/train_status", run)
        if any(w in st[0] for w in words):
            return st
        time.sleep(0.5)
    raise AssertionError(f"{run} never showed {words}: {st[0]!r}\n{st[4]}")


def test_prepare_train_stop_resume_export_and_generate(train_app):
    from gradio_client.exceptions import AppError

    c = train_app.client()
    listed = call(c, "/train_folders", None)
    assert ["shapes (pictures: prepare first)", "shapes"] in [list(x) for x in listed["choices"]]
    folder, summary, examples = call(c, "/train_prepare", "shapes", 16, 0.25)
    assert folder["value"] == "shapes_16px" and "2 class(es), 12 training + 4 held-out images at 16 px" in summary
    assert "| blue square | 6 | 2 |" in summary and "| red disc | 6 | 2 |" in summary
    assert captions(examples) == ["blue square", "red disc"] and examples.count("<img") == 2

    started = call(c, "/train_start", "endpoint_run", "shapes_16px", "smoke", 0, 2000, "fp32", 5, True)
    assert "Started endpoint_run" in started
    with pytest.raises(AppError, match="endpoint_run is training: stop it first"):
        call(c, "/train_start", "other_run", "shapes_16px", "smoke", 0, 10, "fp32", 5, True)
    st = wait_status(c, "endpoint_run", ("step 1", "step 2", "step 3", "step 4", "step 5"))
    end = time.monotonic() + 120
    while not ("<img" in st[2] and chart_points(st[1])) and time.monotonic() < end:  # a loss point and a grid
        time.sleep(0.5)
        st = call(c, "/train_status", "endpoint_run")
    assert "<img" in st[2] and chart_points(st[1]), st
    assert {type(p["step"]) for p in chart_points(st[1])} == {int} and "all t" in {p["noise level"] for p in
                                                                                     chart_points(st[1])}
    assert "Stopping endpoint_run" in call(c, "/train_stop")
    st = wait_status(c, "endpoint_run", ("stopped",), timeout=60)
    stopped_at = int(st[0].split("step ")[1].split("/")[0].replace(",", ""))
    assert 0 < stopped_at < 2000 and "last checkpoint at step" in st[0]
    assert call(c, "/train_stop") == "Nothing is training."

    with pytest.raises(AppError, match="has checkpoints"):
        call(c, "/train_start", "endpoint_run", "shapes_16px", "smoke", 0, stopped_at + 5, "fp32", 5, False)
    call(c, "/train_start", "endpoint_run", "shapes_16px", "smoke", 0, stopped_at + 5, "fp32", 5, True)
    st = wait_status(c, "endpoint_run", ("finished",))
    assert f"step {stopped_at + 5:,}/{stopped_at + 5:,}" in st[0] and len(captions(st[3])) >= 2  # the timeline

    msg, picker = call(c, "/train_export", "endpoint_run", "my_shapes", "tiny")
    assert "as **my_shapes**" in msg and ["my_shapes", "my_shapes"] in [list(x) for x in picker["choices"]]
    assert (train_app.store / "my_shapes" / "model.safetensors").exists()
    assert "my_shapes" in [x[1] for x in call(c, "/list_models", "tiny")["choices"]]


@pytest.mark.parametrize("folder", ["../", "/etc", "shapes/../..", "shapes/..", "", "nope"])
def test_hostile_or_missing_folders_are_refused(train_app, folder):
    from gradio_client.exceptions import AppError

    c = train_app.client()
    with pytest.raises(AppError) as e:
        call(c, "/train_prepare", folder, 16, 0.1)
    assert any(w in str(e.value) for w in ("data root", "Pick a data folder", "not a folder", "data folder name")), \
        str(e.value)
    with pytest.raises(AppError):
        call(c, "/train_start", "x", folder, "smoke", 1, 5, "fp32", 5, True)


@pytest.mark.parametrize("minutes, steps, message", [(0, 10**12, f"steps must be at most {MAX_STEPS:,}"),
                                                     (10**9, 0, f"minutes must be at most {MAX_MINUTES:,}")])
def test_start_refuses_steps_and_minutes_past_the_caps(train_app, minutes, steps, message):
    from gradio_client.exceptions import AppError

    c = train_app.client()
    with pytest.raises(AppError, match=re.escape(message)):
        call(c, "/train_start", "capped_run", "shapes", "smoke", minutes, steps, "fp32", 5, True)


def test_stop_with_nothing_running_and_status_of_no_run(train_app):
    c = train_app.client()
    assert call(c, "/train_stop") == "Nothing is training."
    assert "no_such_run: no run yet." in call(c, "/train_status", "no_such_run")[0]


@pytest.mark.parametrize("host, share, auth, off", [
    ("127.0.0.1", False, None, False), ("0.0.0.0", False, None, True), ("127.0.0.1", True, None, True),
    ("0.0.0.0", False, [("u", "p")], False), ("127.0.0.1", True, [("u", "p")], False)])
def test_train_tab_needs_a_login_when_others_can_reach_the_app(host, share, auth, off):
    reason = train_disabled_reason(Namespace(host=host, share=share, auth=auth))
    assert (reason is not None) == off
    if off:
        assert "--auth" in reason


def test_zip_uploads_are_checked_then_kept_and_listed(train_app, tmp_path):
    import zipfile

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c = train_app.client()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escape.png", b"x")
    with pytest.raises(AppError, match="outside its own folder"):
        call(c, "/train_upload", handle_file(str(evil)))
    good = tmp_path / "zipped shapes.zip"
    shapes = train_app.data.parent / "train_data" / "shapes"
    with zipfile.ZipFile(good, "w") as z:
        for f in sorted(shapes.rglob("*.png")):
            z.write(f, f.relative_to(shapes).as_posix())
    folder, summary, _ = call(c, "/train_upload", handle_file(str(good)))
    assert folder["value"].startswith("zipped_shapes") and folder["value"].endswith(".zip")
    assert "an uploaded zip of pictures" in summary
    assert not (train_app.data.parent / "train_data" / "escape.png").exists()
