"""The Train tab's loss chart: ``metrics.csv``'s loss over steps, one line for all noise levels t
and one per band of t (its ``loss_tLO_HI`` columns), drawn in the browser as a Vega-Lite chart:
numeric step and loss axes, the loss on a log scale (the bands differ by tens of times), and a
legend that names each band. The bands are why the chart is there: high t (mostly noise: the
layout) is learnt early, low t (fine detail) late.

Why a Vega-Lite spec in a ``gr.Plot`` rather than ``gr.LinePlot``: LinePlot has no log axis, and
its page types each column from the first value it is sent and keeps that typing; the chart a run
shows before its first metrics is empty, so every column became a category (the loss axis one
label per value, no line drawn) until the page was reloaded. The spec below states every field's
type and the scale itself, each time it is sent.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

from gradio.components.plot import AltairPlotData

BAND_COLUMN = re.compile(r"^loss_t(\d+)_(\d+)$")  # training.loop's per-band losses: loss_t0_250 ...
ALL_T = "all t"
HEIGHT_PX = 280  # the whole chart: title, plot, axis labels
# all t thick and grey (seen on a light or a dark theme), the bands from fine detail (low t) to layout
# (high t) in a colour-blind-safe order (Okabe-Ito)
ALL_T_COLOR = "#777777"
BAND_COLORS = ("#0072b2", "#009e73", "#e69f00", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#999999")


def band_label(lo: int, hi: int) -> str:
    return f"t {lo}-{hi}"


def loss_points(rows: Iterable[Mapping[str, float]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(points, series): one point ``{"step", "loss", "noise level"}`` per row and loss column
    (steps as integers, losses as floats; a loss that a log axis cannot show, <= 0 or not finite,
    is left out), and the series names in legend order: all t, then the bands by their lowest t."""
    points: list[dict[str, Any]] = []
    bands: dict[str, int] = {}
    for row in rows:
        step = row.get("step")
        if step is None or not math.isfinite(step):
            continue
        for column, value in row.items():
            match = BAND_COLUMN.match(column)
            if column == "loss":
                series = ALL_T
            elif match:
                lo, hi = int(match[1]), int(match[2])
                series = band_label(lo, hi)
                bands[series] = lo
            else:
                continue
            if value is not None and math.isfinite(value) and value > 0:
                points.append({"step": int(step), "loss": float(value), "noise level": series})
    series = [ALL_T] + sorted(bands, key=bands.get)
    return points, series


def log_ticks(values: Iterable[float]) -> list[float]:
    """Tick values for a log axis over ``values`` (all > 0): 1, 2 and 5 times each power of ten from the
    decade below the smallest to the one above the largest (one label per value, none crowded)."""
    values = list(values)
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    return [float(f"{m}e{k}") for k in range(lo, hi + 1) for m in (1, 2, 5) if m * 10.0**k <= 10.0**hi]


def loss_chart_spec(rows: Iterable[Mapping[str, float]]) -> dict[str, Any] | None:
    """The Vega-Lite spec of the loss chart, or None before the run has logged a loss."""
    points, series = loss_points(rows)
    if not points:
        return None
    colors = [ALL_T_COLOR] + [BAND_COLORS[i % len(BAND_COLORS)] for i in range(len(series) - 1)]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        # drawn as SVG (text and paths a person, a screen reader and the browser test can read), no menu
        "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}},
        "title": "Training loss: all noise levels t, and each band of t",
        "height": HEIGHT_PX,
        "background": "transparent",  # the page's, light or dark (the theme colours the text to suit)
        "data": {"values": points},
        "encoding": {
            "x": {"field": "step", "type": "quantitative", "title": "step",
                  "axis": {"format": ",d", "tickMinStep": 1, "tickCount": 8, "labelOverlap": True},
                  "scale": {"zero": False}},
            "y": {"field": "loss", "type": "quantitative", "title": "loss (log scale)",
                  "scale": {"type": "log"},
                  "axis": {"format": "~g", "values": log_ticks(p["loss"] for p in points)}},
            "color": {"field": "noise level", "type": "nominal", "title": "noise level", "sort": series,
                      "scale": {"domain": series, "range": colors},
                      "legend": {"orient": "right", "symbolType": "stroke", "symbolStrokeWidth": 3, "labelFontSize": 13,
                                 "titleFontSize": 13, "symbolSize": 300}},
            "strokeWidth": {"field": "noise level", "type": "nominal", "sort": series, "legend": None,
                            "scale": {"domain": series, "range": [3] + [1.5] * (len(series) - 1)}},
            "tooltip": [{"field": "noise level", "type": "nominal"},
                        {"field": "step", "type": "quantitative", "format": ","},
                        {"field": "loss", "type": "quantitative", "format": ".4f"}],
        },
        # the encoding above is shared; gr.Plot's line-chart styling (theme colours, the width of the
        # page's column, kept as it resizes) walks ``layer`` and recolours only a layer's own colour
        "layer": [{"mark": {"type": "line", "clip": True}, "encoding": {}}],
    }


def loss_chart(rows: Iterable[Mapping[str, float]]) -> PlotData | None:
    """The chart as ``gr.Plot`` takes it (a PlotData is passed through to its Vega-Lite renderer;
    ``chart="line"`` gives it the page's theme and the column's width, also in a tab opened later),
    or None before the first loss."""
    spec = loss_chart_spec(rows)
    return None if spec is None else AltairPlotData(plot=json.dumps(spec), chart="line")
