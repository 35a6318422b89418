"""The Learn tab: why the pictures look as they do.

* ``/learn_schedule``: the schedule's log-SNR over t, with the timesteps the
  chosen sampler and step count visit marked on it;
* ``/learn_steps``: one image's denoising step by step: x_t (what the network
  sees), its x_0 estimate and the noise it predicts; with an upscaler, the
  cascade's second stage too, step by step at the higher resolution;
* ``/learn_guidance``: the same noise under several guidance scales;
* ``/learn_student``: the teacher's steps and its few-step student's 4, 2 and 1 from the same noise.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import gradio as gr
from PIL import Image

import drawing
from core.prompting import encode_weighted
from core.samplers import SAMPLER_DEFAULTS
from core.sampling import sampler_timesteps
from core.schedules import log_snr
from engine import upscaling
from engine.request import GenerationRequest, generate, resolve_settings, trace
from models.text_encoder import encode_prompts
from webui.cascade import UPSCALE_OFF
from webui.jobs import Cancelled, Done, session_of
from webui.settings import model_defaults
from webui.validation import (
    DEFAULT_PRECISION,
    GUIDANCE_RANGE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    SAMPLER_CHOICES,
    InputError,
    check_budget,
    clean_prompt,
    parse_guidance_list,
    parse_sampler,
    steps_range,
    validate_blend,
    validate_guidance,
    validate_seed,
    validate_steps,
)

STUDENT_STEPS = (4, 2, 1)  # the student's step counts the comparison shows
STUDENT_SAMPLER = "lcm"  # multistep consistency sampling: what the comparison shows a student doing
MAX_STEP_COLUMNS = 10  # the per-step table shows at most this many steps (spread evenly, first and last kept)


def pick_columns(n: int, k: int = MAX_STEP_COLUMNS) -> list[int]:
    """Indices of ``k`` steps out of ``n``, evenly spread, always the first and the last."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


class LearnTab:
    def __init__(self, app):
        self.app = app

    def _settings(self, model_choice, sampler, steps):
        """(model, sampler label, the engine's request with the checked sampler and steps, the steps)."""
        lm = self.app._model(model_choice)
        label = parse_sampler(sampler)
        n = validate_steps(steps, label, lm.diffusion.num_train_timesteps)
        return lm, label, GenerationRequest(sampler=SAMPLER_CHOICES[label][0], steps=n, precision=DEFAULT_PRECISION), n

    def schedule(self, model_choice, sampler, steps):
        """log-SNR(t) of the model's schedule, the sampler's timesteps marked."""

        with self.app.errors("the schedule plot"):
            lm, label, base, n = self._settings(model_choice, sampler, steps)
            ts = sampler_timesteps(lm.diffusion, base.sampler, n)
            return drawing.log_snr_plot(log_snr(lm.diffusion), ts, label=f"{label}, {n} steps",
                                        title=f"{lm.name}: {lm.diffusion.beta_schedule} schedule, log-SNR over t")

    def _run(self, work, total: int, gr_request, what: str):
        """A job through the shared runner (device slots, Stop), waited for: its result."""

        for ev in self.app.jobs.run(work, session=session_of(gr_request), total_steps=total, start_text=what):
            if isinstance(ev, Cancelled):
                raise InputError("Stopped.")
            if isinstance(ev, Done):
                return ev.result
        raise RuntimeError("the job ended without a result")

    def steps(self, prompt, model_choice, sampler, steps, guidance, seed, upscaler=None, gr_request=None):
        """(table of x_t / x_0 estimate / predicted noise per step, caption); with an upscaler (an SR
        model of the store, as Generate's "Then upscale"), a second table traces the cascade's second
        stage on the first stage's image."""

        with self.app.errors("the step table"):
            lm, label, base, n = self._settings(model_choice, sampler, steps)
            text = validate_blend(clean_prompt(prompt))
            g = validate_guidance(guidance)
            s = validate_seed(seed)
            s = 0 if s is None else s
            check_budget(1, lm.image_size, n, self.app.args.max_work)
            stage2 = self.app.cascade.stage(upscaler, lm, 1)
            request = replace(base, prompts=[text], guidance=g, seed=s)  # the model's band (Generate's default)

            def work(on_step):
                first = trace(lm, request, device=self.app.args.device, callback=on_step)
                if stage2 is None:
                    return first, None

                second = upscaling.trace_upscale_image(
                    first.result.images[0], stage2[0], seed=s, store=self.app.args.store,
                    device=self.app.args.device, cond=encode_weighted(first.result.prompts, encode_prompts),
                    callback=on_step)
                return first, second

            first, second = self._run(work, n + (stage2[1] if stage2 else 0), gr_request, "Tracing the steps...")
            title = f"{text[:60]} · {label} {n} steps · w={g:g} · seed {s}"
            tables = [self.step_table(first, f"{lm.image_size} px: {title}", ["x_t", "x0 est.", "noise est."])]
            if second is not None:
                size = second.result.images.shape[1]
                rows = ["x_t + bicubic" if self._residual(stage2[0]) else "x_t", "x0 est.", "noise est."]
                tables.append(self.step_table(second, f"{size} px: {stage2[0]}, DPM-Solver++ {len(second.timesteps)} "
                                                      f"steps from the image above, seed {s}", rows))
            caption = ("Each column is one sampler step (t = the model's timestep). Row 1: the sample the network "
                       "is given; row 2: its estimate of the clean image; row 3: the noise it predicts (scaled). "
                       f"{min(len(first.timesteps), MAX_STEP_COLUMNS)} of {len(first.timesteps)} steps shown.")
            if second is not None:
                caption += (f" Below: the second stage, {stage2[0]}, which starts again from noise at "
                            f"{second.result.images.shape[1]} px and denoises it with the first stage's image "
                            "(upsampled, lightly noised) as its guide"
                            + ("; it predicts the detail the bicubic upsampling misses, so its rows show the "
                               "bicubic image added back." if self._residual(stage2[0]) else "."))
            return drawing.stack_pictures(tables), caption

    def _residual(self, upscaler: str) -> bool:
        sr = upscaling.load_upscaler(upscaler, store=self.app.args.store, device=self.app.args.device)
        return bool(getattr(sr.model.config, "residual", False))

    @staticmethod
    def step_table(tr, title: str, row_labels: list[str]):
        cols = pick_columns(len(tr.timesteps))
        return drawing.labelled_grid(
            [[tr.x_t[i] for i in cols], [tr.x0[i] for i in cols], [tr.eps[i] for i in cols]],
            col_labels=[f"t={tr.timesteps[i]}" for i in cols], row_labels=row_labels, title=title,
            min_side=96 if tr.x_t[0].shape[0] < 96 else tr.x_t[0].shape[0])

    def guidance(self, prompt, model_choice, sampler, steps, seed, scales, gr_request=None):
        """(one row: the same noise under each guidance scale, caption)."""

        with self.app.errors("the guidance comparison"):
            lm, label, base, n = self._settings(model_choice, sampler, steps)
            text = validate_blend(clean_prompt(prompt))
            s = validate_seed(seed)
            s = 0 if s is None else s
            ws = parse_guidance_list(scales)
            check_budget(len(ws), lm.image_size, n, self.app.args.max_work)

            def work(on_step):
                return [generate(lm, replace(base, prompts=[text], guidance=w, seed=s), device=self.app.args.device,
                                 callback=on_step).images[0] for w in ws]

            images = self._run(work, n * len(ws), gr_request, "Sampling each guidance scale...")
            strip = drawing.labelled_grid([images], col_labels=[f"w={w:g}" for w in ws], min_side=128,
                                          title=f"{text[:60]} · seed {s} · {label} {n} steps")
            return strip, ("The same starting noise, sampled with each guidance scale: w=1 is the plain conditional "
                           "model, larger w pushes harder toward the prompt (and, too far, to saturated colours).")

    def teacher_and_student(self, model_choice):
        """(teacher, student name) for a model choice: a model and its NAME-live, or a student and its teacher."""
        app = self.app
        lm = app._model(model_choice)
        student = app.live.student_of(model_choice)
        if student is None:
            raise InputError(f"{lm.name} has no few-step student: make one with `python diffusion.py distill "
                             f"{lm.name}` and export it as {lm.name}-live.")
        if student != str(model_choice):
            return lm, student
        teacher = str(lm.config.get("distill", {}).get("teacher", ""))
        if teacher not in app.models.choices_values():
            raise InputError(f"{lm.name} is a few-step student whose teacher ({teacher or 'unnamed'}) is not in this "
                             "store: pick the teacher to compare them.")
        return app._model(teacher), student

    def student(self, prompt, model_choice, guidance, seed, gr_request=None):
        """(the teacher's steps above its student's 4, 2 and 1 steps, all from the same noise; caption)."""

        with self.app.errors("the teacher/student comparison"):
            text = validate_blend(clean_prompt(prompt))
            g = validate_guidance(guidance)
            s = validate_seed(seed)
            s = 0 if s is None else s
            teacher, student_name = self.teacher_and_student(model_choice)
            student = self.app._model(student_name)
            # the teacher at its own sampler, steps and band; the student by consistency sampling, guided at every step
            t_request = GenerationRequest(prompts=[text], guidance=g, seed=s, precision=DEFAULT_PRECISION)
            t_settings = resolve_settings(teacher, t_request)
            t_label, t_steps = SAMPLER_DEFAULTS[t_settings.sampler].label, t_settings.steps
            device = self.app.args.device

            def work(on_step):
                t_trace = trace(teacher, t_request, device=device, callback=on_step)
                s_traces = [trace(student, replace(t_request, sampler=STUDENT_SAMPLER, steps=k,
                                                   guidance_interval="none"), device=device, callback=on_step)
                            for k in STUDENT_STEPS]
                return t_trace, s_traces

            t_trace, s_traces = self._run(work, t_steps + sum(STUDENT_STEPS), gr_request,
                                          "Sampling the teacher and its student...")
            cols = pick_columns(len(t_trace.timesteps))
            top = drawing.labelled_grid(
                [[t_trace.x0[i] for i in cols]], col_labels=[f"t={t_trace.timesteps[i]}" for i in cols],
                row_labels=["x0 est."], min_side=96,
                title=f"teacher {teacher.name}: {t_label} {t_steps} steps, two network evaluations per guided step")
            bottom = drawing.labelled_grid(
                [[tr.x0[i] for i in range(len(tr.timesteps))] for tr in s_traces],
                col_labels=[f"step {i + 1}" for i in range(max(STUDENT_STEPS))],
                row_labels=[f"{k} step{'s' if k > 1 else ''}" for k in STUDENT_STEPS], min_side=96,
                title=f"student {student_name}: one network evaluation per step (guidance {g:g} is an input)")
            caption = (f"The same starting noise (seed {s}), the prompt {text[:60]!r}. Above: the teacher's estimate "
                       f"of the clean image along its {t_steps} steps ({len(cols)} shown). Below: its student, "
                       "distilled to jump to the end of the teacher's path; each step re-noises its estimate to a "
                       "lower noise level and jumps again, so 4 steps refine what 1 step draws.")
            return drawing.stack_pictures([top, bottom]), caption

    def build(self, ui) -> None:
        lm = ui.lm
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm)
        lo, hi, _ = steps_range(d["sampler"], T)
        gr.Markdown("How the sampler gets from noise to an image. The log-SNR (signal-to-noise ratio of q(x_t | x_0), "
                    "in log scale) falls from high at t=0 to very low at t=T-1; the dots are the timesteps the sampler "
                    "visits with these settings.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value="a photo of a goldfish", max_length=MAX_PROMPT_CHARS,
                                    elem_id="learn-prompt")
                sampler = gr.Radio(list(SAMPLER_CHOICES), value=d["sampler"], label="Sampler", elem_id="learn-sampler")
                steps = gr.Slider(lo, hi, value=d["steps"], step=1, label="Steps", elem_id="learn-steps")
                guidance = gr.Slider(GUIDANCE_RANGE[0], GUIDANCE_RANGE[1], value=d["guidance_scale"], step=0.1,
                                     label="Guidance scale (step table)")
                seed = gr.Number(0, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed")
                sr_models = self.app.cascade.upscalers()
                upscaler = gr.Dropdown([UPSCALE_OFF, *sr_models], value=UPSCALE_OFF, elem_id="learn-upscale",
                                       label="Then trace the upscaler (step table)", visible=bool(sr_models),
                                       info="the cascade's second stage, step by step, on the image the first makes")
                scales = gr.Textbox("1, 2, 3, 5, 8", label="Guidance scales to compare", elem_id="learn-scales")
                with gr.Row():
                    steps_btn = gr.Button("Show each step", variant="primary", elem_id="learn-steps-go")
                    guidance_btn = gr.Button("Compare guidance scales", elem_id="learn-guidance-go")
                student_btn = gr.Button("Teacher 20 steps vs its few-step student", elem_id="learn-student-go")
            with gr.Column(scale=2):
                plot = gr.Image(self.schedule(self.app.models.first, d["sampler"], d["steps"]), type="numpy",
                                format="png", label="log-SNR over t", elem_id="learn-snr")
                table = gr.Image(label="Per step: x_t, x0 estimate, predicted noise", type="numpy", format="png",
                                 elem_id="learn-table", elem_classes=["pixelated"])
                caption = gr.Markdown("")
        sampler.input(self.app.sampler_changed, [sampler, ui.model], [steps], api_visibility="private", queue=False)
        for i, trigger in enumerate((sampler.change, steps.release, ui.model.change)):
            trigger(self.schedule, [ui.model, sampler, steps], [plot], api_name=f"learn_plot_{i}",
                    api_visibility="private", queue=False)
        gr.api(self.schedule_fn(), api_name="learn_schedule")
        steps_btn.click(self.steps_fn(), [prompt, ui.model, sampler, steps, guidance, seed, upscaler], [table, caption],
                        api_name="learn_steps", preprocess=False, concurrency_limit=self.app.args.concurrency,
                        concurrency_id="sampling", time_limit=self.app.args.time_limit)
        student_btn.click(self.student_fn(), [prompt, ui.model, guidance, seed], [table, caption],
                          api_name="learn_student", preprocess=False, concurrency_limit=self.app.args.concurrency,
                          concurrency_id="sampling", time_limit=self.app.args.time_limit)
        guidance_btn.click(self.guidance_fn(), [prompt, ui.model, sampler, steps, seed, scales], [table, caption],
                           api_name="learn_guidance", preprocess=False, concurrency_limit=self.app.args.concurrency,
                           concurrency_id="sampling", time_limit=self.app.args.time_limit)

    # gradio reads these signatures
    def schedule_fn(self):
        tab = self

        def learn_schedule(model: str = "", sampler: str = "DPM-Solver++", steps: float = 20) -> str:
            """log-SNR over t with the sampler's timesteps marked, as a PNG file path."""

            img = tab.schedule(model or None, sampler, steps)
            tab.app.out.mkdir(parents=True, exist_ok=True)
            key = hashlib.sha1(repr((model, sampler, steps)).encode()).hexdigest()[:16]
            path = tab.app.out / f"log_snr_{key}.png"  # the same request, the same file (no folder per call)
            Image.fromarray(img).save(path)
            return str(path)

        return learn_schedule

    def steps_fn(self):
        tab = self

        def learn_steps(prompt, model, sampler, steps, guidance, seed, upscaler="off", request: gr.Request = None):
            return tab.steps(prompt, model, sampler, steps, guidance, seed, upscaler, gr_request=request)

        learn_steps.__annotations__["request"] = gr.Request
        return learn_steps

    def guidance_fn(self):
        tab = self

        def learn_guidance(prompt, model, sampler, steps, seed, scales, request: gr.Request = None):
            return tab.guidance(prompt, model, sampler, steps, seed, scales, gr_request=request)

        learn_guidance.__annotations__["request"] = gr.Request
        return learn_guidance

    def student_fn(self):
        tab = self

        def learn_student(prompt, model, guidance, seed, request: gr.Request = None):
            return tab.student(prompt, model, guidance, seed, gr_request=request)

        learn_student.__annotations__["request"] = gr.Request
        return learn_student
