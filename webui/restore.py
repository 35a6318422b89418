"""A result's recipe put back to work: ``/restore`` (every setting from a PNG of this app, its CLI
or AUTOMATIC1111), ``/reuse_seed``, ``/use_as_init``, and the gallery's selection they act on."""
from __future__ import annotations

import gradio as gr

from webui.cascade import UPSCALE_OFF
from webui.settings import model_defaults, sampler_steps
from webui.uploads import file_path, recipe_of, upload_folder
from webui.validation import (
    DEFAULT_PRECISION,
    GUIDANCE_RANGE,
    GUIDE_UNCONDITIONAL,
    PRECISION_CHOICES,
    InputError,
    check_upload,
    clean_prompt,
    interval_text,
    parse_sampler,
    steps_range,
    validate_guidance_interval,
    validate_seed,
    validate_steps,
)

DEFAULT_STRENGTH = 0.6  # img2img's denoising strength when a recipe has none


class RecipeActions:
    def __init__(self, app):
        self.app = app

    def restore(self, png, model_choice):
        """A PNG's recipe -> every setting: (model, prompt, sampler, steps, guidance, seed, number of
        images, variation seed, variation strength, denoising strength, snap, precision, guidance
        interval, upscaler, guide, message)."""

        with self.app.errors("restore"):
            r = recipe_of(png, self.app.max_upload)
            notes = []
            model = r.get("model")
            if model not in self.app.models.choices_values():
                notes.append(f"model {str(model)[:60]!r} is not in this store; kept {model_choice or 'the current'}"
                             if model else "the recipe names no model; kept the current one")
                model = model_choice or self.app.models.first
            lm = self.app._model(model)
            T = lm.diffusion.num_train_timesteps
            d = model_defaults(lm)  # what a recipe leaves out is the model's, as the CLI's --from-png
            try:
                label = parse_sampler(r.get("sampler"))
            except InputError:
                label = d["sampler"]
                notes.append(f"sampler {str(r.get('sampler'))[:40]!r} is not available here; using {label}")
            lo, hi, _ = steps_range(label, T)
            default = sampler_steps(lm, label)
            try:
                steps = validate_steps(r.get("steps", default), label, T)
            except InputError:
                steps = max(lo, min(hi, int(r.get("steps", default))))
                notes.append(f"steps {r.get('steps')} are outside {lo}-{hi} for {label}; using {steps}")
            guidance = float(r.get("guidance_scale", d["guidance_scale"]))
            if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
                guidance = min(max(guidance, GUIDANCE_RANGE[0]), GUIDANCE_RANGE[1])
                notes.append(f"guidance clipped to {guidance:g}")
            seed = validate_seed(r.get("seed"))
            var_seed = r.get("variation_seed")
            var_strength = float(r.get("variation_strength", 0.0)) if var_seed is not None else 0.0
            strength = r.get("strength")
            if strength is not None:
                notes.append(f"it was made from an init image ({r.get('init_image', 'not named')}) at denoising "
                             f"strength {strength:g}: put that image under 'Start from an image'")
            if r.get("negative_prompt"):
                notes.append(f"its negative prompt ({str(r['negative_prompt'])[:40]}) is not an app setting")
            precision = r.get("precision") or DEFAULT_PRECISION
            if precision not in PRECISION_CHOICES:
                notes.append(f"precision {str(precision)[:20]!r} is not available here; using {DEFAULT_PRECISION}")
                precision = DEFAULT_PRECISION
            interval = ""
            if r.get("guidance_interval"):
                try:
                    interval = interval_text(validate_guidance_interval(r["guidance_interval"]))
                except InputError:
                    notes.append(f"its guidance interval {str(r['guidance_interval'])[:40]!r} could not be read; "
                                 "guidance at every step")
            upscaler = UPSCALE_OFF
            if r.get("upscaler"):
                if r["upscaler"] in self.app.cascade.upscalers():
                    upscaler = r["upscaler"]
                    notes.append(f"it was upscaled by {upscaler} ({r.get('upscale_steps', '?')} steps, level "
                                 f"{r.get('upscale_aug', '?')}); the app upscales with {upscaler}'s defaults "
                                 "(the CLI's --from-png repeats them exactly)")
                else:
                    notes.append(f"its upscaler {str(r['upscaler'])[:60]!r} is not in this store; upscaling is off")
            guide = GUIDE_UNCONDITIONAL
            if r.get("guide"):
                if r["guide"] in self.app.models.choices_values():
                    guide = r["guide"]
                else:
                    notes.append(f"its guide model {str(r['guide'])[:60]!r} is not in this store; guiding with "
                                 "the unconditional branch")
            prompt = clean_prompt(r["prompt"])
            message = (f"Restored: {prompt[:80]!r}, {lm.name}, {label} {steps} steps, guidance {guidance:g}, "
                       f"seed {seed}" + (f", variation seed {var_seed} at {var_strength:g}" if var_seed is not None
                                         else "") + ".")
            if notes:
                message += " Note: " + "; ".join(notes) + "."
            return (gr.update(value=model), prompt, label, self.app.steps_update(label, lm, steps), guidance, seed, 1,
                    -1 if var_seed is None else int(var_seed), var_strength,
                    DEFAULT_STRENGTH if strength is None else float(strength), float(r.get("snap", 0.0)),
                    precision, interval, upscaler, guide, message)

    def reuse_seed(self, image) -> int:
        """The seed in a result's recipe (the gallery's selected image)."""
        with self.app.errors("reuse seed"):
            r = recipe_of(image, self.app.max_upload)
            return int(r["seed"])

    def use_as_init(self, image):
        """A result (or any uploaded image) -> the 'Start from an image' input."""
        with self.app.errors("use as init image"):
            path = file_path(image)
            if not path:
                raise InputError("Select an image in the gallery first (click it).")
            check_upload(path, max_bytes=self.app.max_upload, upload_dir=upload_folder())
            return path

    def selected(self, evt=None):
        """The gallery image the user clicked (for the buttons under the gallery)."""
        value = getattr(evt, "value", None)
        if isinstance(value, dict):
            image = value.get("image")
            return file_path(image)
        return None

    def selected_fn(self):
        tab = self

        def selected(evt: gr.SelectData):
            return tab.selected(evt)

        selected.__annotations__["evt"] = gr.SelectData
        return selected
