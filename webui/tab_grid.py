"""The Parameter grid tab: two axes chosen from guidance, steps, sampler, seed
and prompt; one labelled grid image (same starting noise in every cell unless
seed is an axis), each cell also a PNG with its own recipe. Endpoint: ``/grid``."""
from __future__ import annotations

import json
from typing import Iterator

import gradio as gr

import drawing
from engine.recipe import save_png
from engine.request import GenerationRequest, generate
from webui.jobs import Cancelled, Done, Tick, session_of
from webui.settings import model_defaults
from webui.validation import (
    GRID_AXES,
    GRID_EXAMPLES,
    GUIDANCE_RANGE,
    MAX_GRID_CELLS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    SAMPLER_CHOICES,
    GridRequest,
    steps_range,
    validate_grid,
)


def axis_label(axis: str, value) -> str:
    if axis == "guidance":
        return f"w={value:g}"
    if axis == "steps":
        return f"{value} steps"
    if axis == "seed":
        return f"seed {value}"
    return str(value)


class GridTab:
    def __init__(self, app):
        self.app = app

    def grid(self, prompt, model_choice, sampler, steps, guidance, seed, x_axis, x_values, y_axis, y_values,
             request=None, progress=None) -> Iterator[tuple]:
        """Stream (grid image, files, status)."""
        yield from self.app.guarded("the grid", self._grid(prompt, model_choice, sampler, steps, guidance, seed,
                                                            x_axis, x_values, y_axis, y_values, request, progress))

    def _grid(self, prompt, model_choice, sampler, steps, guidance, seed, x_axis, x_values, y_axis, y_values,
              request, progress):

        app = self.app
        lm = app._model(model_choice)
        req = validate_grid(prompt, sampler, steps, guidance, seed, x_axis, x_values, y_axis, y_values,
                            image_size=lm.image_size, num_train_timesteps=lm.diffusion.num_train_timesteps,
                            max_work=app.args.max_work)
        grid_seed = app.random_seed()  # for cells without a seed of their own: one draw, so the same noise in all
        cells = [dict(c, seed=grid_seed if c["seed"] is None else c["seed"]) for row in req.cells for c in row]
        total = sum(c["steps"] for c in cells)
        session = session_of(request)
        start = f"Sampling a {len(req.cells[0])} x {len(req.cells)} grid ({total} steps in all)..."
        for ev in app.jobs.run(self._work(lm, cells), session=session, total_steps=total, start_text=start,
                               progress=progress):
            if isinstance(ev, Tick):
                yield gr.skip(), gr.skip(), ev.status
            elif isinstance(ev, Cancelled):
                yield gr.skip(), gr.skip(), f"Stopped after {ev.elapsed:.1f} s."
            elif isinstance(ev, Done):
                image, files = self._export(lm, req, cells, ev.result)
                app.remember(session, [(image, f"grid {req.x_axis} x {req.y_axis or '-'}")])
                yield image, files, f"Done: {len(cells)} cells in {ev.elapsed:.1f} s."

    def _work(self, lm, cells: list[dict]):
        app = self.app

        def work(on_step):
            # One cell at a time: cells differ in sampler or steps, which one batch cannot mix. A cell's
            # noise depends only on its seed, so cells that share a seed share their starting noise.
            return [generate(lm, GenerationRequest(prompts=[c["prompt"]], seed=c["seed"], sampler=c["sampler"],
                                                   steps=c["steps"], guidance=c["guidance"], precision="fp32"),
                             device=app.args.device, callback=on_step) for c in cells]
        return work

    def _export(self, lm, req: GridRequest, cells: list[dict], results):
        ex = self.app.exporter
        folder = ex.new_folder()
        ncol = len(req.x_values)
        images = [r.images[0] for r in results]
        rows = [images[i:i + ncol] for i in range(0, len(images), ncol)]
        files = []
        for k, (c, r) in enumerate(zip(cells, results)):
            recipe = r.recipe
            files.append(str(save_png(folder / f"cell_{k // ncol}_{k % ncol}.png", r.images[0], c["prompt"], recipe)))
        grid_img = drawing.labelled_grid(
            rows, col_labels=[axis_label(req.x_axis, v) for v in req.x_values],
            row_labels=[axis_label(req.y_axis, v) for v in req.y_values] if req.y_axis else (),
            title=f"{req.x_axis} x {req.y_axis}" if req.y_axis else req.x_axis, min_side=96)
        settings = {"x_axis": req.x_axis, "x_values": req.x_values, "y_axis": req.y_axis, "y_values": req.y_values,
                    "model": lm.name, "cells": [{k: c[k] for k in ("prompt", "sampler", "steps", "guidance", "seed")}
                                                for c in cells]}
        base = results[0].recipe
        path = save_png(folder / "grid.png", grid_img, cells[0]["prompt"], base, extra={"grid": json.dumps(settings)})
        ex.prune()
        return str(path), [str(path), *files]

    def build(self, ui) -> None:
        lm = ui.lm
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm)
        lo, hi, _ = steps_range(d["sampler"], T)
        gr.Markdown(f"Compare settings side by side: pick two axes and their values (comma-separated; prompts "
                    f"separated by ';'). Every cell starts from the same noise (unless seed is an axis). At most "
                    f"{MAX_GRID_CELLS} cells.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value="a photo of a goldfish", max_length=MAX_PROMPT_CHARS,
                                    elem_id="grid-prompt")
                with gr.Row():
                    x_axis = gr.Dropdown(list(GRID_AXES), value="guidance", label="X axis", elem_id="grid-x-axis")
                    x_values = gr.Textbox(GRID_EXAMPLES["guidance"], label="X values", elem_id="grid-x-values")
                with gr.Row():
                    y_axis = gr.Dropdown(["none", *GRID_AXES], value="steps", label="Y axis", elem_id="grid-y-axis")
                    y_values = gr.Textbox("10, 20", label="Y values", elem_id="grid-y-values")
                gr.Markdown("Base settings (an axis overrides its own):")
                sampler = gr.Radio(list(SAMPLER_CHOICES), value=d["sampler"], label="Sampler")
                steps = gr.Slider(lo, hi, value=d["steps"], step=1, label="Steps")
                guidance = gr.Slider(GUIDANCE_RANGE[0], GUIDANCE_RANGE[1], value=d["guidance_scale"], step=0.1,
                                     label="Guidance scale")
                seed = gr.Number(0, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)")
                with gr.Row():
                    go = gr.Button("Make the grid", variant="primary", elem_id="grid-go")
                    stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="grid-status")
                image = gr.Image(label="Grid (PNG with the settings)", type="filepath", elem_id="grid-image",
                                 elem_classes=["pixelated"])
                files = gr.File(label="Downloads (the grid, and each cell with its recipe)", file_count="multiple")
        sampler.input(self.app.sampler_changed, [sampler, ui.model], [steps], api_visibility="private", queue=False)
        x_axis.input(lambda a: GRID_EXAMPLES.get(a, ""), [x_axis], [x_values], api_visibility="private", queue=False)
        y_axis.input(lambda a: GRID_EXAMPLES.get(a, ""), [y_axis], [y_values], api_visibility="private", queue=False)
        event = go.click(self.grid_fn(), [prompt, ui.model, sampler, steps, guidance, seed, x_axis, x_values, y_axis,
                                          y_values], [image, files, status], api_name="grid", preprocess=False,
                         concurrency_limit=self.app.args.concurrency, concurrency_id="sampling",
                         time_limit=self.app.args.time_limit)
        ui.result_events.append(event)
        ui.cancellable.append(event)
        ui.stop_buttons.append((stop, status))

    def grid_fn(self):
        tab = self

        def grid(prompt, model, sampler, steps, guidance, seed, x_axis, x_values, y_axis, y_values,
                 request: gr.Request = None, progress=gr.Progress()):
            yield from tab.grid(prompt, model, sampler, steps, guidance, seed, x_axis, x_values, y_axis, y_values,
                                request=request, progress=progress)

        grid.__annotations__["request"] = gr.Request
        return grid
