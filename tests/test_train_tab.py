"""The Train tab's view, without a server: the loss chart's spec (numbers on both axes, a log loss
axis, one line per band of t and one for all t), the pictures at a whole-number zoom with their
captions as text, and Start's caps on steps and minutes."""
from __future__ import annotations

import json
import re
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from webui import train_chart, train_pictures
from webui.tab_train import MAX_MINUTES, MAX_STEPS, TrainTab
from webui.validation import InputError

ROWS = [{"step": 10.0, "loss": 0.25, "lr": 5e-4, "loss_t0_250": 0.21, "loss_t250_500": 0.53,
         "loss_t500_750": 0.15, "loss_t750_1000": 0.018},
        {"step": 20.0, "loss": 0.17, "lr": 1e-3, "loss_t0_250": 0.2, "loss_t250_500": 0.43,
         "loss_t500_750": 0.12, "loss_t750_1000": 0.0}]  # a loss of 0 cannot sit on a log axis: left out


def test_the_loss_chart_types_steps_and_losses_as_numbers_on_a_log_axis():
    spec = train_chart.loss_chart_spec(ROWS)
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"]) == ("step", "quantitative")
    assert (enc["y"]["field"], enc["y"]["type"], enc["y"]["scale"]["type"]) == ("loss", "quantitative", "log")
    assert enc["color"]["type"] == "nominal"
    series = ["all t", "t 0-250", "t 250-500", "t 500-750", "t 750-1000"]
    assert enc["color"]["scale"]["domain"] == series and len(enc["color"]["scale"]["range"]) == 5
    assert enc["color"]["legend"]["orient"] == "right"
    points = spec["data"]["values"]
    assert len(points) == 9 and all(type(p["step"]) is int and type(p["loss"]) is float for p in points)
    assert {p["noise level"] for p in points} == set(series) and min(p["loss"] for p in points) > 0
    assert enc["y"]["axis"]["values"] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert spec["usermeta"]["embedOptions"]["renderer"] == "svg" and spec["background"] == "transparent"

    chart = train_chart.loss_chart(ROWS)  # what gr.Plot is given: its Vega-Lite line chart
    assert (chart.type, chart.chart) == ("altair", "line") and json.loads(chart.plot) == spec
    assert train_chart.loss_chart([]) is None and train_chart.loss_chart([{"lr": 1.0}]) is None


def test_bands_are_ordered_by_their_noise_level_not_by_name():
    rows = [{"step": 5, "loss": 0.1, "loss_t500_1000": 0.05, "loss_t0_100": 0.2, "loss_t100_500": 0.1}]
    _, series = train_chart.loss_points(rows)
    assert series == ["all t", "t 0-100", "t 100-500", "t 500-1000"]


def strip(size: int, k: int = 6) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 255, (size, k * size, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, zoom", [(16, 6), (32, 3), (64, 2)])
def test_example_strips_are_whole_uncropped_at_a_whole_number_zoom_with_their_names(size, zoom):
    html = train_pictures.examples_html([(strip(size), "goldfish"), (strip(size), "school <bus>")])
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"', html)
    assert len(imgs) == 2
    for data, w, h in imgs:
        assert (int(w), int(h)) == (6 * size * zoom, size * zoom)
    assert re.findall(r"<figcaption[^>]*>([^<]*)</figcaption>", html) == ["goldfish", "school &lt;bus&gt;"]
    assert "object-fit" not in html and "max-width:none" in html  # never cut or shrunk to a tile


def test_grids_and_the_timeline_keep_their_pixels_and_say_their_step(tmp_path):
    paths = []
    for step in (50, 100):
        paths.append((step, tmp_path / f"grid_{step:07d}.png"))
        Image.fromarray(np.zeros((82, 134, 3), np.uint8)).save(paths[-1][1])
    html = train_pictures.timeline_html(paths + [(150, tmp_path / "being_written.png")])
    assert re.findall(r'width="(\d+)" height="(\d+)"', html) == [("268", "164")] * 2
    assert re.findall(r"<figcaption[^>]*>([^<]*)</figcaption>", html) == ["step 50", "step 100"]
    assert 'width="402" height="246"' in train_pictures.grid_html(paths[-1][1], "step 100")
    assert "No samples yet" in train_pictures.grid_html(None)
    assert train_pictures.zoom_for(1000, 400) == 1  # a grid larger than its place is never shrunk


@pytest.fixture()
def tab(tmp_path, monkeypatch) -> tuple[TrainTab, list]:
    """The tab on a prepared folder, its runner's start recording the spec instead of training."""
    data = tmp_path / "data" / "pics_16px"
    data.mkdir(parents=True)
    np.save(data / "train_images.npy", np.zeros((4, 16, 16, 3), np.uint8))
    np.save(data / "train_labels.npy", np.zeros(4, np.int64))
    t = TrainTab(SimpleNamespace(args=Namespace(data_root=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"))))
    started = []
    monkeypatch.setattr(t.runner, "start", lambda spec: started.append(spec) or SimpleNamespace(summary=lambda: ""))
    return t, started


@pytest.mark.parametrize("minutes, steps, every, message", [
    (0, 10**12, 5, f"steps must be at most {MAX_STEPS:,}"),
    (0, MAX_STEPS + 1, 5, f"steps must be at most {MAX_STEPS:,}"),
    (MAX_MINUTES + 1, 0, 5, f"minutes must be at most {MAX_MINUTES:,}"),
    (1e9, 0, 5, f"minutes must be at most {MAX_MINUTES:,}"),
    (0, 100, 10**12, f"samples every N steps must be at most {MAX_STEPS:,}"),
])
def test_start_caps_steps_minutes_and_the_sample_interval(tab, minutes, steps, every, message):
    t, started = tab
    with pytest.raises(InputError, match=re.escape(message)):
        t.start("capped", "pics_16px", "smoke", minutes, steps, "fp32", every, True)
    assert not started


def test_start_takes_the_caps_themselves(tab):
    t, started = tab
    t.start("at_the_caps", "pics_16px", "smoke", MAX_MINUTES, MAX_STEPS, "fp32", MAX_STEPS, True)
    assert (started[0].steps, started[0].minutes, started[0].sample_every) == (MAX_STEPS, MAX_MINUTES, MAX_STEPS)


def test_the_step_cap_leaves_room_for_every_preset():
    from training.loop import PRESETS

    assert all(p["max_steps"] <= MAX_STEPS for p in PRESETS.values())
