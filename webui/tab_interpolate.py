"""The Interpolate tab: from prompt A / seed A to prompt B / seed B in N frames
(the starting noise and the text embedding both slerped, ``diffusion.interpolation_inputs``),
as a GIF and a strip whose PNG carries the settings. Endpoint: ``/interpolate``."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Iterator

import gradio as gr

import drawing
from engine.recipe import save_png
from engine.request import generate, interpolation
from webui.jobs import Cancelled, Done, Tick, session_of
from webui.settings import model_defaults
from webui.validation import (
    GUIDANCE_RANGE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    SAMPLER_CHOICES,
    InterpolateRequest,
    steps_range,
    validate_interpolation,
)


def interpolation_recipe(req: InterpolateRequest, seed_a: int, seed_b: int, model: str, size: int) -> dict:
    """Everything that makes the interpolation again (stored in the strip PNG's ``interpolation`` chunk)."""
    return {"prompt_a": req.prompt_a, "prompt_b": req.prompt_b, "seed_a": seed_a, "seed_b": seed_b,
            "frames": req.frames, "sampler": req.sampler, "steps": req.steps, "guidance_scale": req.guidance,
            "model": model, "size": size}


class InterpolateTab:
    def __init__(self, app):
        self.app = app

    def interpolate(self, prompt_a, prompt_b, seed_a, seed_b, frames, model_choice, sampler, steps, guidance,
                    request=None, progress=None) -> Iterator[tuple]:
        """Stream (gif, strip, files, status)."""
        yield from self.app.guarded("interpolation", self._interpolate(
            prompt_a, prompt_b, seed_a, seed_b, frames, model_choice, sampler, steps, guidance, request, progress))

    def _interpolate(self, prompt_a, prompt_b, seed_a, seed_b, frames, model_choice, sampler, steps, guidance,
                     request, progress):

        app = self.app
        lm = app._model(model_choice)
        req = validate_interpolation(prompt_a, prompt_b, seed_a, seed_b, frames, sampler, steps, guidance,
                                     image_size=lm.image_size, num_train_timesteps=lm.diffusion.num_train_timesteps,
                                     max_batch_pixels=app.args.max_batch_pixels, max_work=app.args.max_work)
        sa = req.seed_a if req.seed_a is not None else app.random_seed()
        sb = req.seed_b if req.seed_b is not None else sa
        session = session_of(request)
        work = self._work(lm, req, sa, sb)
        start = f"Interpolating {req.frames} frames with {req.sampler_label}, {req.steps} steps..."
        for ev in app.jobs.run(work, session=session, total_steps=req.steps, start_text=start, progress=progress):
            if isinstance(ev, Tick):
                yield gr.skip(), gr.skip(), gr.skip(), ev.status
            elif isinstance(ev, Cancelled):
                yield gr.skip(), gr.skip(), gr.skip(), f"Stopped after {ev.elapsed:.1f} s."
            elif isinstance(ev, Done):
                res, fractions = ev.result
                gif, strip, files = self._export(lm, req, sa, sb, res, fractions)
                app.remember(session, [(strip, f"interpolation, {req.frames} frames")])
                yield gif, strip, files, (f"Done: {req.frames} frames in {ev.elapsed:.1f} s · seeds {sa} -> {sb} · "
                                          f"{req.sampler_label}, {req.steps} steps, guidance {req.guidance:g}")

    def _work(self, lm, req: InterpolateRequest, seed_a: int, seed_b: int):
        app = self.app

        def work(on_step):
            request, fractions = interpolation(lm, req.prompt_a, req.prompt_b, seed_a, seed_b, req.frames)
            request = replace(request, sampler=req.sampler, steps=req.steps, guidance=req.guidance,
                                    precision="fp32")
            return generate(lm, request, device=app.args.device, callback=on_step), fractions
        return work

    def _export(self, lm, req: InterpolateRequest, seed_a: int, seed_b: int, res, fractions):
        ex = self.app.exporter
        folder = ex.new_folder()
        labels = [f"{f:.2f}" for f in fractions]
        gif = drawing.frames_gif(res.images, folder / "interpolation.gif", labels=labels, min_side=256)
        strip_img = drawing.labelled_grid([list(res.images)], col_labels=labels, min_side=128,
                                          title=f"{req.prompt_a} (seed {seed_a}) -> {req.prompt_b} (seed {seed_b})")
        recipe = interpolation_recipe(req, seed_a, seed_b, lm.name, lm.image_size)
        base = res.recipe  # the first frame's: seed a, and the model
        strip = save_png(folder / "interpolation_strip.png", strip_img, req.prompt_a, base,
                         extra={"interpolation": json.dumps(recipe)})
        (folder / "interpolation.json").write_text(json.dumps(recipe, indent=1))
        ex.prune()
        return str(gif), str(strip), [str(gif), str(strip), str(folder / "interpolation.json")]

    def build(self, ui) -> None:
        lm = ui.lm
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm)
        lo, hi, _ = steps_range(d["sampler"], T)
        gr.Markdown("Walk from prompt A / seed A to prompt B / seed B: the starting noise and the text embedding "
                    "both move along the great circle (slerp), so every frame is as noisy as a fresh draw. Leave "
                    "prompt B empty to vary only the seed, or seed B at -1 to vary only the prompt.")
        with gr.Row():
            with gr.Column(scale=1):
                pa = gr.Textbox(label="Prompt A", value=ui.prompt.value or "", lines=1, max_length=MAX_PROMPT_CHARS,
                                elem_id="interp-prompt-a")
                pb = gr.Textbox(label="Prompt B (empty = A)", lines=1, max_length=MAX_PROMPT_CHARS,
                                elem_id="interp-prompt-b")
                with gr.Row():
                    sa = gr.Number(0, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed A (-1 = random)",
                                   elem_id="interp-seed-a")
                    sb = gr.Number(1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed B (-1 = A)",
                                   elem_id="interp-seed-b")
                frames = gr.Slider(2, 16, value=8, step=1, label="Frames", elem_id="interp-frames")
                sampler = gr.Radio(list(SAMPLER_CHOICES), value=d["sampler"], label="Sampler")
                steps = gr.Slider(lo, hi, value=d["steps"], step=1, label="Steps")
                guidance = gr.Slider(GUIDANCE_RANGE[0], GUIDANCE_RANGE[1], value=d["guidance_scale"], step=0.1,
                                     label="Guidance scale")
                with gr.Row():
                    go = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
                    stop = gr.Button("Stop", variant="stop")
                position = gr.Slider(0, 1, value=0.5, step=0.01, label="Position (with Live on)",
                                     elem_id="interp-position",
                                     info="Live (the switch beside Generate) draws the frame at this point of the "
                                          "walk as you move it, with the model's few-step student")
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="interp-status")
                gif = gr.Image(label="Interpolation (GIF)", type="filepath", height=320, elem_id="interp-gif",
                               elem_classes=["pixelated"])
                strip = gr.Image(label="Frames (PNG with the settings)", type="filepath", elem_id="interp-strip",
                                 elem_classes=["pixelated"])
                files = gr.File(label="Downloads", file_count="multiple")
                live_status = gr.Markdown("", elem_id="interp-live-status")
                live_frame = gr.Image(label="Live: the frame at the position", type="numpy", format="png",
                                      height=256, elem_id="interp-live", elem_classes=["pixelated"], interactive=False)
        sampler.input(self.app.sampler_changed, [sampler, ui.model], [steps], api_visibility="private", queue=False)
        event = go.click(self.interpolate_fn(), [pa, pb, sa, sb, frames, ui.model, sampler, steps, guidance],
                         [gif, strip, files, status], api_name="interpolate", preprocess=False,
                         concurrency_limit=self.app.args.concurrency,
                         concurrency_id="sampling", time_limit=self.app.args.time_limit)
        live_inputs = [ui.live, pa, pb, sa, sb, position, ui.model, guidance]
        for i, trigger in enumerate((position.change, ui.live.change, pa.input, pb.input, sa.change, sb.change,
                                     guidance.change)):
            trigger(self.app.live.frame_fn(), live_inputs, [live_frame, live_status],
                    api_name="live_frame" if i == 0 else None, api_visibility="public" if i == 0 else "private",
                    preprocess=False, trigger_mode="always_last", show_progress="hidden", concurrency_limit=2,
                    concurrency_id="live")
        ui.result_events.append(event)
        ui.cancellable.append(event)
        ui.stop_buttons.append((stop, status))

    def interpolate_fn(self):
        tab = self

        def interpolate(prompt_a, prompt_b, seed_a, seed_b, frames, model, sampler, steps, guidance,
                        request: gr.Request = None, progress=gr.Progress()):
            yield from tab.interpolate(prompt_a, prompt_b, seed_a, seed_b, frames, model, sampler, steps, guidance,
                                       request=request, progress=progress)

        interpolate.__annotations__["request"] = gr.Request
        return interpolate
