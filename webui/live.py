"""Live mode: with the Live switch on, every change of the prompt, seed, guidance, number of images or
variation redraws the images with the model's few-step student, no click needed.

A store model NAME's student is the store model ``NAME-live`` (``python diffusion.py distill NAME``,
exported under that name); a student picked in the model picker is its own. The latest change wins:
each session's newest live request takes a ticket, and a request whose ticket is no longer the
newest stops at its next sampler step (``LiveMode.redraw``); gradio's ``trigger_mode="always_last"``
keeps at most one request waiting behind the running one, so a burst of changes runs at most two
jobs behind the first, and ends with the images of the last change.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import gradio as gr

from core.sampling import folds_guidance
from engine.request import GenerationRequest, generate, interpolation_at
from webui.jobs import JobCancelled, session_of
from webui.settings import generation_request, model_defaults
from webui.validation import (
    LIVE_PRECISION,
    InputError,
    clean_prompt,
    validate_blend,
    validate_fraction,
    validate_guidance,
    validate_request,
    validate_seed,
)

log = logging.getLogger("web")
LIVE_SUFFIX = "-live"  # a model's student in the store: NAME-live


class LiveMode:
    """The Live switch's handler: one short job per change, the newest one wins."""

    def __init__(self, app):
        self.app = app
        self._tickets: dict[str, int] = {}
        self._lock = threading.Lock()
        self.runs = 0  # live jobs started (the burst test counts them)

    def student_of(self, model_choice: Any) -> str | None:
        """The student that draws for ``model_choice`` in Live mode: itself if it is one, else NAME-live."""
        lm = self.app._model(model_choice)
        if folds_guidance(lm.model):
            return str(model_choice)
        name = f"{lm.name}{LIVE_SUFFIX}"
        return name if name in self.app.models.choices_values() else None

    @staticmethod
    def _typing(prompt: Any) -> str | None:
        """The status for a prompt still being typed (empty, a half-written blend); None when it is
        complete. Text that can never be a prompt (too long, not text) is an error."""
        try:
            validate_blend(clean_prompt(prompt))
        except InputError as e:
            if "empty" in str(e) or "Blended prompt" in str(e):
                return f"Live: {e}"
            raise gr.Error(str(e), print_exception=False) from None
        return None

    def describe(self, live: Any, model_choice: Any) -> str:
        """What the Live switch will do with this model (shown beside it)."""
        student = self.student_of(model_choice)  # an unknown model is an error, Live on or off
        if not live:
            return ""
        if student is None:
            return (f"**Live**: {model_choice} has no few-step student (make one with `python diffusion.py distill "
                    f"{model_choice}` and export it as `{model_choice}{LIVE_SUFFIX}`); Live redraws with the model "
                    "itself, at its full steps.")
        return f"**Live** draws with **{student}** as you change the settings."

    def _take_ticket(self, session: str) -> int:
        with self._lock:
            ticket = self._tickets.get(session, 0) + 1
            self._tickets[session] = ticket
            return ticket

    def _is_newest(self, session: str, ticket: int) -> bool:
        with self._lock:
            return self._tickets.get(session) == ticket

    def redraw(self, live, prompt, model_choice, guidance, seed, num_images, variation_seed=None,
               variation_strength=0.0, request=None):
        """(gallery, status): the images for these settings, or nothing when Live is off.

        An empty or half-written prompt is said in the status line, not raised: it is being typed.
        Every other bad input is an error, as in the Generate button's handler."""
        if not live:
            return gr.skip(), gr.skip()
        session = session_of(request)
        ticket = self._take_ticket(session)
        app = self.app
        t0 = time.monotonic()
        with app.errors("live generation"):
            lm, student_name, teacher = self._student_or_model(model_choice)
            T = lm.diffusion.num_train_timesteps
            d = model_defaults(lm)

            def checked(text):
                return validate_request(text, d["sampler"], d["steps"], guidance, seed, num_images,
                                        image_size=lm.image_size, num_train_timesteps=T,
                                        max_batch_pixels=app.args.max_batch_pixels, max_work=app.args.max_work,
                                        variation_seed=variation_seed, variation_strength=variation_strength,
                                        precision=LIVE_PRECISION, guidance_interval=d["guidance_interval"])
            checked("a prompt")  # every other field first: they are errors whatever the prompt
        typing = self._typing(prompt)
        if typing is not None:
            return gr.skip(), typing
        with app.errors("live generation"):
            req = checked(prompt)
        seed_used = req.seed if req.seed is not None else app.random_seed()
        var_seed = req.variation_seed
        if req.variation_strength > 0 and var_seed is None:
            var_seed = app.random_seed()
        gen_request = generation_request(req, seed_used, var_seed)

        res = self._sample(lm, gen_request, session, ticket)
        if res is None:
            return gr.skip(), gr.skip()
        sample_s = time.monotonic() - t0
        ex = app.exporter
        folder = ex.new_folder()
        names = [f"{i:02d}_seed{s}.png" for i, s in enumerate(res.seeds)]
        files = ex.save_images(folder, res.images, res.prompts, res.recipes, names)
        ex.prune()
        total = time.monotonic() - t0
        gallery = [(p, f"seed {s}") for p, s in zip(files, res.seeds)]
        status = (f"Live: {len(files)} image(s) in **{total * 1000:.0f} ms** ({sample_s * 1000:.0f} ms sampling) "
                  f"with {lm.name}, {req.sampler_label} {req.steps} steps, guidance {req.guidance:g}, seed {seed_used}, "
                  f"{res.recipe['precision']}"
                  + ("" if student_name else f" · {teacher.name} has no few-step student: full steps"))
        return gallery, status


    def _student_or_model(self, model_choice):
        """(the model Live draws with, its student's name or None, the model picked)."""
        app = self.app
        picked = app._model(model_choice)
        student_name = self.student_of(model_choice)
        return (app._model(student_name) if student_name else picked), student_name, picked

    def _sample(self, lm, gen_request: GenerationRequest, session: str, ticket: int):
        """Run one Live request on the device unless a newer one came; None when it was overtaken."""
        app = self.app

        def on_step(_info) -> None:
            if not self._is_newest(session, ticket):
                raise JobCancelled()

        with app.jobs.slots:  # the device, shared with every other job of the app
            if not self._is_newest(session, ticket):
                return None
            self.runs += 1
            log.info("live job %d: %s, %d image(s), seed %d", self.runs, lm.name, gen_request.num_images,
                     gen_request.seed)
            with app.errors("live generation"):
                try:
                    return app.jobs.device.run(generate, lm, gen_request, store=app.args.store,
                                               device=app.args.device, callback=on_step)
                except JobCancelled:  # a newer change arrived: its request draws instead
                    return None

    def frame(self, live, prompt_a, prompt_b, seed_a, seed_b, position, model_choice, guidance, request=None):
        """(image, status): the interpolation's frame at ``position``, drawn by the student, when Live is on."""
        if not live:
            return gr.skip(), gr.skip()
        session = session_of(request)
        ticket = self._take_ticket(session)
        t0 = time.monotonic()
        with self.app.errors("live interpolation"):
            sa = validate_seed(seed_a, "Seed A")
            sa = 0 if sa is None else sa
            sb = validate_seed(seed_b, "Seed B")
            sb = sa if sb is None else sb
            p = validate_fraction(position, "Position")
            g = validate_guidance(guidance)
            lm, student_name, picked = self._student_or_model(model_choice)
        typing = self._typing(prompt_a) or (self._typing(prompt_b) if str(prompt_b or "").strip() else None)
        if typing is not None:
            return gr.skip(), typing
        with self.app.errors("live interpolation"):
            a = validate_blend(clean_prompt(prompt_a))
            b = a if not str(prompt_b or "").strip() else validate_blend(clean_prompt(prompt_b))
            # the student's own sampler, steps and band: left to the engine's resolver
            req = replace(interpolation_at(lm, a, b, sa, sb, p), guidance=g, precision=LIVE_PRECISION)
        res = self._sample(lm, req, session, ticket)
        if res is None:
            return gr.skip(), gr.skip()
        ms = (time.monotonic() - t0) * 1000
        return res.images[0], (f"Live: the frame at {p:.2f} in **{ms:.0f} ms** with {lm.name}, {res.recipe['precision']}"
                               + ("" if student_name else f" · {picked.name} has no few-step student: full steps"))

    def frame_fn(self):
        live = self

        def live_frame(live_on, prompt_a, prompt_b, seed_a, seed_b, position, model, guidance,
                       request: gr.Request = None):
            return live.frame(live_on, prompt_a, prompt_b, seed_a, seed_b, position, model, guidance, request=request)

        live_frame.__annotations__["request"] = gr.Request
        return live_frame

    def redraw_fn(self):
        live = self

        def redraw(live_on, prompt, model, guidance, seed, num_images, variation_seed=None, variation_strength=None,
                   request: gr.Request = None):
            return live.redraw(live_on, prompt, model, guidance, seed, num_images,
                               -1 if variation_seed is None else variation_seed,
                               0.0 if variation_strength is None else variation_strength, request=request)

        redraw.__annotations__["request"] = gr.Request  # a class, not a string: gradio injects it
        return redraw
