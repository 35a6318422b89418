"""The Generate tab: prompt (class picker, blended prompts, coverage), sampler,
seed, variations, start from an image (SDEdit), and the results with their
recipes, laid out with the result actions of ``webui.restore`` (restore from a
PNG, reuse a seed, use as init) and ``webui.cascade`` (upscale 2x).

Endpoints: ``/generate`` (the original eight inputs), ``/generate_studio`` (those, then variation
seed and strength, init image, denoising strength, snap, precision, guidance interval, and "then
upscale with" an SR model: the cascade in one job), ``/img2img_start``, ``/prompt_coverage``,
``/class_prompt``, ``/sampler_steps``, ``/random_seed``; wired here, served by the other two
modules: ``/restore``, ``/reuse_seed``, ``/use_as_init``, ``/upscale``.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import gradio as gr
from PIL import Image

import drawing
from core.noise import sdedit_start
from core.prompting import (
    COVERAGE_MARGIN,
    PROMPT_BLEND_HELP,
    coverage_message,
    encode_weighted,
)
from core.sampling import sampler_timesteps
from dataprep.images import load_init_image
from engine.request import Generation, check_guide, generate
from models.text_encoder import encode_prompts
from webui.cascade import UPSCALE_OFF
from webui.jobs import Cancelled, Done, Tick, session_of
from webui.restore import DEFAULT_STRENGTH
from webui.settings import generation_request, model_defaults
from webui.uploads import file_path, upload_folder
from webui.validation import (
    DEFAULT_PRECISION,
    GUIDANCE_RANGE,
    GUIDE_UNCONDITIONAL,
    MAX_INTERVAL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    PRECISION_CHOICES,
    SAMPLER_CHOICES,
    GenerateRequest,
    InputError,
    check_upload,
    clean_prompt,
    interval_text,
    max_images_for,
    parse_sampler,
    steps_range,
    validate_blend,
    validate_fraction,
    validate_guide,
    validate_request,
    validate_seed,
    validate_steps,
    validate_variation,
)

log = logging.getLogger("web")



class GenerateTab:
    def __init__(self, app):
        self.app = app

    # ----------------------------------------------------------------- generate
    def generate(self, prompt, model_choice, sampler, steps, guidance, seed, num_images, show_strip,
                 variation_seed=None, variation_strength=0.0, init_image=None, strength=DEFAULT_STRENGTH,
                 snap=0.0, precision=DEFAULT_PRECISION, guidance_interval=None, upscale=UPSCALE_OFF,
                 guide=GUIDE_UNCONDITIONAL, request=None, progress=None) -> Iterator[tuple]:
        """Stream (gallery, status, seed, gif, strip, files): previews while sampling, then the results.

        With ``upscale`` (an SR model of the store) the cascade runs both stages in one job, as
        ``python diffusion.py sample --upscale``: the previews go on into the second stage, and the
        results are the upscaled images, each PNG's recipe naming both stages. ``guidance_interval``
        None (``/generate``, which has no such input) is the model's own default band; "" is none."""
        yield from self.app.guarded("generation", self._generate(
            prompt, model_choice, sampler, steps, guidance, seed, num_images, show_strip, variation_seed,
            variation_strength, init_image, strength, snap, precision, guidance_interval, upscale, guide, request,
            progress))

    def _generate(self, prompt, model_choice, sampler, steps, guidance, seed, num_images, show_strip,
                  variation_seed, variation_strength, init_image, strength, snap, precision, guidance_interval,
                  upscale, guide, request, progress):

        app = self.app
        lm = app._model(model_choice)
        has_init = file_path(init_image) is not None
        if guidance_interval is None:
            guidance_interval = interval_text(lm.guidance_interval)
        req = validate_request(prompt, sampler, steps, guidance, seed, num_images, image_size=lm.image_size,
                               num_train_timesteps=lm.diffusion.num_train_timesteps,
                               max_batch_pixels=app.args.max_batch_pixels, max_work=app.args.max_work,
                               variation_seed=variation_seed, variation_strength=variation_strength,
                               strength=strength if has_init else None, snap=snap, precision=precision,
                               guidance_interval=guidance_interval)
        stage2 = app.cascade.stage(upscale, lm, req.num_images)
        guide_name = validate_guide(guide, app.models.choices_values())
        init = self.init_array(init_image, lm.image_size) if has_init else None
        seed_used = req.seed if req.seed is not None else app.random_seed()
        var_seed = req.variation_seed
        if req.variation_strength > 0 and var_seed is None:
            var_seed = app.random_seed()
        session = session_of(request)
        work = self._work(lm, req, seed_used, var_seed, init, stage2, guide_name)
        what = (f"Sampling {req.num_images} image(s) with {req.sampler_label}, {req.steps} steps"
                + (f" from an image at strength {req.strength:g}" if init is not None else "")
                + (f", then upscaling with {stage2[0]} ({stage2[1]} steps)" if stage2 else "") + "...")
        total = self.steps_run(lm, req) + (stage2[1] if stage2 else 0)
        for ev in app.jobs.run(work, session=session, total_steps=total, start_text=what, progress=progress):
            if isinstance(ev, Tick):
                first = ev.step == 0
                yield (ev.preview if ev.preview else gr.skip()), ev.status, (seed_used if first else gr.skip()), \
                    gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, Cancelled):
                yield gr.skip(), f"Stopped after {ev.elapsed:.1f} s.", gr.skip(), None, None, None
            elif isinstance(ev, Done):
                gallery, gif, strip, files = self._export(lm, ev.result, req, bool(show_strip), init, var_seed)
                app.remember(session, gallery)
                n = len(ev.result.images)
                yield (gallery,
                       f"Done: {n} image(s) in {ev.elapsed:.1f} s · seed {seed_used}"
                       + (f"..{seed_used + n - 1}" if n > 1 else "")
                       + f" · {req.sampler_label}, {req.steps} steps, guidance {req.guidance:g}"
                       + (f" · variation seed {var_seed} at {req.variation_strength:g}" if var_seed is not None
                          else "")
                       + (f" · from an image at strength {req.strength:g}" if init is not None else "")
                       + (f" · guidance only for sigma in ({req.guidance_interval[0]:g}, "
                          f"{req.guidance_interval[1]:g}]" if req.guidance_interval else "")
                       + (f" · {ev.result.recipe['precision']}" if req.precision != "fp32" else "")
                       + (f" · guided by {guide_name}" if guide_name else "")
                       + (f" · upscaled to {ev.result.images.shape[2]} px by {stage2[0]}" if stage2 else ""),
                       seed_used, gif, strip, files)

    def steps_run(self, lm, req: GenerateRequest) -> int:
        if req.strength is None:
            return req.steps
        return max(1, len(sampler_timesteps(lm.diffusion, req.sampler, req.steps, strength=req.strength)))

    def init_array(self, value: Any, size: int):
        """An uploaded init image as uint8 (size, size, 3), prepared exactly as the CLI's --init-image."""

        path = file_path(value)
        check_upload(path, max_bytes=self.app.max_upload, upload_dir=upload_folder())
        try:
            return load_init_image(path, size)
        except (OSError, ValueError):
            raise InputError("That file is not an image this app can read; upload a PNG, JPEG or WebP.") from None

    def _work(self, lm, req: GenerateRequest, seed_used: int, var_seed: int | None, init,
              stage2: tuple[str, int] | None = None, guide: str | None = None):
        """The job: one generation request (``engine.request``), as ``python diffusion.py sample`` makes it."""
        app = self.app
        targets = None
        if req.snap > 0:
            targets = app.snap_targets(lm)  # cached per model
            if targets is None:
                raise InputError("This model has no classes to snap toward; set 'Snap to classes' to 0.")
        request = generation_request(
            req, seed_used, var_seed, init_image=init,
            init_name="init.png",  # saved next to the images: --init-image init.png regenerates them
            guide=guide, upscale=stage2[0] if stage2 else None)
        if guide:  # load it now: a guide that does not fit this model is the user's error, before the queue
            try:
                check_guide(lm, app._model(guide))
            except ValueError as e:
                raise InputError(f"Guide with {guide}: {e}.") from None

        def work(on_step):
            return generate(lm, request, store=app.args.store, device=app.args.device, snap_to=targets,
                            return_frames=True, callback=on_step, load_guide=app._model)
        return work

    def _export(self, lm, res: Generation, req: GenerateRequest, show_strip: bool, init, var_seed: int | None):
        ex = self.app.exporter
        folder = ex.new_folder()
        names = [f"{i:02d}_seed{s}.png" for i, s in enumerate(res.seeds)]
        files = ex.save_images(folder, res.images, res.prompts, res.recipes, names)
        gallery = [(p, f"seed {s}") for p, s in zip(files, res.seeds)]
        if init is not None:
            Image.fromarray(init).save(folder / "init.png")
            files.append(str(folder / "init.png"))
        nrow = min(4, len(res.images))
        if res.frames:
            gif = ex.denoising_gif(folder, res.frames, res.frame_timesteps, nrow)
            files.append(gif)
        else:  # img2img at a strength too low to reach a step: nothing was sampled
            gif = None
        strip = None
        if show_strip and res.frames:
            strip = ex.denoising_strip(folder, res.frames, res.frame_timesteps)
            files.append(strip)
        ex.prune()
        return gallery, gif, strip, files

    def img2img_start(self, init_image, model_choice, sampler, steps, seed, strength, variation_seed=None,
                      variation_strength=0.0):
        """The x_t sampling starts from for these settings (first image), and its t: what the Forward tab shows."""

        with self.app.errors("img2img preview"):
            lm = self.app._model(model_choice)
            label = parse_sampler(sampler)
            n_steps = validate_steps(steps, label, lm.diffusion.num_train_timesteps)
            s = validate_seed(seed)
            st = validate_fraction(strength, "Denoising strength")

            v_seed, v_strength = validate_variation(variation_seed, variation_strength)
            if v_strength > 0 and v_seed is None:
                raise InputError("Set a variation seed to preview a variation (or strength 0).")
            if file_path(init_image) is None:
                raise InputError("Upload an image under 'Start from an image' first.")
            init = self.init_array(init_image, lm.image_size)
            x, t = sdedit_start(lm.diffusion, init, [0 if s is None else s], st, SAMPLER_CHOICES[label][0], n_steps,
                                  variation_seed=v_seed, variation_strength=v_strength)

            img = drawing.as_uint8(x)[0]
            caption = (f"x_t at t={t}: sampling starts here ({len(sampler_timesteps(lm.diffusion, SAMPLER_CHOICES[label][0], n_steps, strength=st))} "
                       f"of {n_steps} steps left)" if t is not None else
                       "strength too low to reach a step: the image comes back unchanged")
            return drawing.upscale_nearest(img, 256), caption

    # ----------------------------------------------------------------- prompt coverage
    def coverage(self, prompt, model_choice) -> str:
        """The model's nearest training classes to the prompt (cosine similarity), with a plain warning when far."""

        with self.app.errors("prompt coverage"):
            lm = self.app._model(model_choice)  # a bad model is an error whatever the prompt
            try:
                text = clean_prompt(prompt)
            except InputError as e:
                if "empty" in str(e):  # nothing typed yet: nothing to say
                    return ""
                raise
            try:
                validate_blend(text)
            except InputError as e:
                return f"⚠ {e}"
            index = self.app.coverage_index(lm)
            if index is None:
                return "This model has no classes to compare with."
            matches, margin, nearer = index.judge(encode_weighted([text], encode_prompts)[0])
            msg = coverage_message(matches, margin, nearer)
            return ("⚠ " + msg) if margin < COVERAGE_MARGIN else msg

    # ----------------------------------------------------------------- layout
    # Over 100 lines on purpose: the tab's layout declared top to bottom as it appears on the page.
    def build(self, ui) -> None:

        app, lm = self.app, ui.lm
        recipes = app.recipe_actions
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm)
        lo, hi, _ = steps_range(d["sampler"], T)
        cap = max_images_for(lm.image_size, app.args.max_batch_pixels)
        # the prompt, the Live switch and Generate together at the top: the first screen is enough to draw
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="Prompt", placeholder="a photo of a goldfish", lines=2,
                                max_length=MAX_PROMPT_CHARS, elem_id="prompt", scale=5)
            with gr.Column(scale=1, min_width=180):
                live = gr.Checkbox(False, label="Live", elem_id="live",
                                   info="redraw as you change the settings, with the model's few-step student")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        live_md = gr.Markdown("", elem_id="live-info")
        with gr.Row():
            with gr.Column(scale=1):
                coverage = gr.Markdown("", elem_id="coverage")
                with gr.Accordion("Prompt syntax: blends", open=False):
                    gr.Markdown(PROMPT_BLEND_HELP + " Example: `goldfish:0.7 | coral reef:0.3`.",
                                elem_id="blend-help")
                class_dd = gr.Dropdown(lm.class_names, value=None, label="Class (fills the prompt; type to search)",
                                       filterable=True, elem_id="class")
                examples = gr.Examples(app.examples_for(lm), inputs=[prompt], label="Examples")
                with gr.Row():
                    sampler = gr.Radio(list(SAMPLER_CHOICES), value=d["sampler"], label="Sampler", elem_id="sampler")
                steps = gr.Slider(lo, hi, value=d["steps"], step=1, label="Steps", info=f"{lo}-{hi}", elem_id="steps")
                guidance = gr.Slider(GUIDANCE_RANGE[0], GUIDANCE_RANGE[1], value=d["guidance_scale"], step=0.1,
                                     label="Guidance scale", info="1 = no guidance", elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed (-1 = random)", minimum=-1, maximum=MAX_SEED,
                                     scale=3, elem_id="seed")
                    dice = gr.Button("Random seed", scale=1, size="sm", elem_id="random-seed")
                num = gr.Slider(1, cap, value=min(4, cap), step=1, label="Number of images", info=f"1-{cap}",
                                elem_id="num-images")
                show_strip = gr.Checkbox(False, label="Also show a strip of intermediate steps")
                with gr.Accordion("Variations", open=False, elem_id="variations"):
                    gr.Markdown("Slerp each image's starting noise toward the noise of another seed: strength 0 is "
                                "the seed's own image, 1 the variation seed's own image. Small strengths "
                                "(0.05-0.3) give 'this one, but slightly different'.")
                    with gr.Row():
                        var_seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED,
                                             label="Variation seed (-1 = random)", elem_id="variation-seed")
                        var_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                 elem_id="variation-strength")
                with gr.Accordion("Start from an image (img2img)", open=False, elem_id="img2img"):
                    gr.Markdown("The image is noised with q(x_t | x_0) to t = strength x T and sampled from there "
                                "with the prompt: low strength keeps its layout, 1 ignores it.")
                    init_image = gr.Image(label="Init image", type="filepath", sources=["upload", "clipboard"],
                                          format="png", height=200, elem_id="init-image", elem_classes=["pixelated"])
                    strength = gr.Slider(0, 1, value=DEFAULT_STRENGTH, step=0.01, label="Denoising strength",
                                         elem_id="strength")
                    with gr.Row():
                        start_btn = gr.Button("Show where sampling starts (x_t)", size="sm", elem_id="show-start")
                    start_img = gr.Image(label="x_t: what the sampler starts from", type="numpy", format="png",
                                         height=200, elem_id="start-image", elem_classes=["pixelated"],
                                         interactive=False)
                    start_md = gr.Markdown("")
                with gr.Accordion("Snap to known classes", open=False):
                    snap = gr.Slider(0, 1, value=0, step=0.05, label="Snap strength", elem_id="snap",
                                     info="Pull a free-text prompt toward the class that the texts the model was "
                                          "trained under read it as (0 = off, 1 = that class's own prompt)")
                sr_models = app.cascade.upscalers()
                with gr.Accordion("Speed, precision and upscaling", open=False, elem_id="advanced"):
                    precision = gr.Radio(list(PRECISION_CHOICES), value=DEFAULT_PRECISION, label="Precision",
                                         elem_id="precision",
                                         info="auto = bf16 where this machine is fast at it (AVX512-BF16/AMX CPUs, "
                                              "recent GPUs), else fp32; bf16 images differ slightly from fp32 ones")
                    g_interval = gr.Textbox(d["guidance_interval"], label="Guidance interval (EDM sigma LO,HI)",
                                            placeholder="0.28,5.42", max_length=MAX_INTERVAL_CHARS,
                                            elem_id="guidance-interval",
                                            info="guidance only for noise levels in (LO, HI]: fewer network calls; "
                                                 "empty = at every step; a model may bring its own (BENCHMARKS.md)")
                    guide = gr.Dropdown([GUIDE_UNCONDITIONAL, *app.models.choices_values()], value=GUIDE_UNCONDITIONAL,
                                        label="Guide with", elem_id="guide-with",
                                        info="unconditional = classifier-free guidance; a weaker model of the same "
                                             "size = autoguidance (Karras et al. 2024): an early checkpoint or a "
                                             "smaller network")
                    upscale = gr.Dropdown([UPSCALE_OFF, *sr_models], value=UPSCALE_OFF, elem_id="then-upscale",
                                          label="Then upscale 2x with (the cascade's second stage)",
                                          info="the results are the upscaled images; previews show both stages",
                                          visible=bool(sr_models))
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="status")
                gallery = gr.Gallery(label="Images (click one to select it)", format="png", columns=4,
                                     height="auto", object_fit="contain", elem_id="gallery",
                                     elem_classes=["pixelated"])
                with gr.Row():
                    selected = gr.Image(label="Selected", type="filepath", format="png", height=128,
                                        interactive=False, elem_id="selected", elem_classes=["pixelated"], scale=1)
                    with gr.Column(scale=3):
                        reuse_btn = gr.Button("Reuse this seed", size="sm", elem_id="reuse-seed")
                        to_init_btn = gr.Button("Use as init image", size="sm", elem_id="use-as-init")
                        restore_sel_btn = gr.Button("Restore all its settings", size="sm", elem_id="restore-selected")
                        with gr.Row(visible=bool(sr_models)):
                            upscaler = gr.Dropdown(sr_models, value=sr_models[0] if sr_models else None,
                                                   label="Upscaler (super-resolution model)", elem_id="upscaler",
                                                   scale=2)
                            upscale_btn = gr.Button("Upscale 2x (32 -> 64 px)", size="sm", elem_id="upscale",
                                                    scale=1)
                upscaled = gr.Image(label="Upscaled (PNG with both stages' recipe)", type="filepath", format="png",
                                    height=256, interactive=False, elem_id="upscaled", elem_classes=["pixelated"],
                                    visible=bool(sr_models))
                with gr.Row():
                    gif = gr.Image(label="Denoising (GIF)", type="filepath", elem_id="gif", height=384,
                                   elem_classes=["pixelated"])
                    strip = gr.Image(label="Intermediate steps (optional, see the tick box)", type="filepath",
                                     elem_id="strip", height=384, elem_classes=["pixelated"])
                files = gr.File(label="Downloads (PNG with recipe at native size, GIF)", file_count="multiple")
                with gr.Accordion("Restore from PNG", open=True, elem_id="restore"):
                    restore_file = gr.File(label="Drop a PNG made by this app, its CLI or AUTOMATIC1111",
                                           file_types=[".png"], type="filepath", elem_id="restore-file")
                    restore_md = gr.Markdown("", elem_id="restore-status")

        inputs = [prompt, ui.model, sampler, steps, guidance, seed, num, show_strip, var_seed, var_strength,
                  init_image, strength, snap, precision, g_interval, upscale, guide]
        outputs = [gallery, status, seed, gif, strip, files]
        common = dict(preprocess=False, concurrency_limit=app.args.concurrency, concurrency_id="sampling",
                      show_progress="full", show_progress_on=[status], time_limit=app.args.time_limit)
        gen_event = go.click(self.generate_fn(), inputs, outputs, api_name="generate_studio", **common)
        enter_event = prompt.submit(self.generate_fn(), inputs, outputs, api_name="generate_on_enter",
                                    api_visibility="private", **common)
        # /generate keeps its original eight inputs, so REST callers that post exactly those still work
        # (gradio refuses a request with fewer values than inputs); /generate_studio adds variations,
        # img2img and snap. Same handler, same queue.
        api_btn = gr.Button(visible=False)
        api_event = api_btn.click(self.generate_fn(), inputs[:8], outputs, api_name="generate", **common)
        # Live: every change redraws with the student; always_last keeps one request waiting at most, and
        # a newer request stops the running one at its next step (webui/live.py)
        live_inputs = [live, prompt, ui.model, guidance, seed, num, var_seed, var_strength]
        live_common = dict(preprocess=False, trigger_mode="always_last", show_progress="hidden",
                           concurrency_limit=2, concurrency_id="live")  # 2: a newer one stops the running one
        live.change(app.live.describe, [live, ui.model], [live_md], api_name="live_info", queue=False,
                    preprocess=False)
        ui.model.change(app.live.describe, [live, ui.model], [live_md], api_visibility="private", queue=False,
                        preprocess=False)
        for i, trigger in enumerate((live.change, prompt.input, seed.change, guidance.change, num.change,
                                     var_seed.change, var_strength.change, ui.model.change)):
            trigger(app.live.redraw_fn(), live_inputs, [gallery, status], api_name="live" if i == 0 else None,
                    api_visibility="public" if i == 0 else "private", **live_common)
        dice.click(app.random_seed, None, [seed], api_name="random_seed", queue=False)
        class_dd.change(app.class_to_prompt, [class_dd, ui.model], [prompt], api_name="class_prompt", queue=False)
        # .input: a person's pick; Restore from PNG sets the sampler and its steps together
        sampler.input(app.sampler_changed, [sampler, ui.model], [steps], api_name="sampler_steps", queue=False)
        prompt.change(self.coverage, [prompt, ui.model], [coverage], api_name="prompt_coverage", preprocess=False,
                      trigger_mode="always_last", show_progress="hidden", concurrency_limit=2,
                      concurrency_id="coverage")
        restore_out = [ui.model, prompt, sampler, steps, guidance, seed, num, var_seed, var_strength, strength, snap,
                       precision, g_interval, upscale, guide, restore_md]
        restore_event = restore_file.upload(recipes.restore, [restore_file, ui.model], restore_out, api_name="restore",
                                            preprocess=False, concurrency_limit=2, concurrency_id="restore")
        restore_sel = restore_sel_btn.click(recipes.restore, [selected, ui.model], restore_out,
                                            api_name="restore_selected", api_visibility="private", preprocess=False,
                                            concurrency_limit=2, concurrency_id="restore")
        gallery.select(recipes.selected_fn(), None, [selected], api_visibility="private", queue=False)
        reuse_btn.click(recipes.reuse_seed, [selected], [seed], api_name="reuse_seed", preprocess=False, queue=False)
        to_init_btn.click(recipes.use_as_init, [selected], [init_image], api_name="use_as_init", preprocess=False,
                          queue=False)
        upscale_event = upscale_btn.click(app.cascade.upscale_fn(), [selected, upscaler], [upscaled, status, files],
                                          api_name="upscale", **common)
        start_btn.click(self.img2img_start, [init_image, ui.model, sampler, steps, seed, strength, var_seed,
                                             var_strength], [start_img, start_md], api_name="img2img_start",
                        preprocess=False, concurrency_limit=1, concurrency_id="forward")
        for ev in (restore_event, restore_sel):  # a restored model's class list, examples and info follow it
            ev.success(self.model_side_fn(), [ui.model], [ui.model_md, class_dd, examples.dataset],
                       api_visibility="private", queue=False)
        ui.__dict__.update(prompt=prompt, class_dd=class_dd, examples=examples, sampler=sampler, steps=steps,
                           guidance=guidance, g_interval=g_interval, seed=seed, num=num, status=status,
                           gallery=gallery, stop_btn=stop_btn, live=live)
        ui.result_events += [gen_event, enter_event, api_event, restore_event, upscale_event]
        ui.cancellable += [gen_event, enter_event, api_event, upscale_event]
        ui.stop_buttons.insert(0, (stop_btn, status))  # the first one is the API's /stop

    def model_side_fn(self):
        """After a restore: the model's info, classes and examples (not its sampler defaults: those were restored)."""

        app = self.app

        def model_side(model):
            lm = app._model(model)
            return app.model_info(lm), gr.update(choices=lm.class_names, value=None), \
                gr.Dataset(samples=app.examples_for(lm))
        return model_side

    # gradio reads these signatures (type hints, gr.Request / gr.Progress / gr.SelectData defaults)
    def generate_fn(self):
        tab = self

        def generate(prompt, model, sampler, steps, guidance, seed, num_images, show_strip, variation_seed=None,
                     variation_strength=None, init_image=None, strength=None, snap=None, precision=None,
                     guidance_interval=None, upscale=None, guide=None, request: gr.Request = None,
                     progress=gr.Progress()):
            yield from tab.generate(prompt, model, sampler, steps, guidance, seed, num_images, show_strip,
                                    -1 if variation_seed is None else variation_seed,
                                    0.0 if variation_strength is None else variation_strength, init_image,
                                    DEFAULT_STRENGTH if strength is None else strength, 0.0 if snap is None else snap,
                                    DEFAULT_PRECISION if precision is None else precision, guidance_interval,
                                    UPSCALE_OFF if upscale is None else upscale,
                                    GUIDE_UNCONDITIONAL if guide is None else guide, request=request, progress=progress)

        generate.__annotations__["request"] = gr.Request  # a class, not a string: gradio injects it
        return generate
