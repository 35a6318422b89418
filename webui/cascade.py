"""The cascade's second stage in the app: the store's super-resolution models, the "Then upscale"
choice checked against the base model (Generate, Learn), and ``/upscale``: a result upscaled 2x,
with its recipe's seed, into a PNG whose recipe names both stages."""
from __future__ import annotations

from typing import Any, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from core.cascade import SR_DEFAULT_STEPS
from engine import upscaling
from webui.jobs import Cancelled, Done, Tick, session_of
from webui.uploads import file_path, recipe_of
from webui.validation import InputError, check_budget, max_images_for, validate_seed

UPSCALE_OFF = "off"  # the "Then upscale with" choice that keeps the first stage's images


class Cascade:
    def __init__(self, app):
        self.app = app

    def upscalers(self) -> list[str]:
        """Super-resolution models in the store (model_type "sr"): the choices for "Upscale 2x"."""
        try:
            return self.app.models.ms.list_models(self.app.models.store, model_type="sr")
        except (OSError, ValueError):
            return []

    def upscaler(self, name: Any, alternative: str) -> tuple[int, int]:
        """A store SR model by name (loaded and cached) -> (the size it upscales from, its sampling steps)."""
        if not isinstance(name, str) or name not in self.upscalers():
            raise InputError(f"No upscaler {str(name)[:60]!r} in this store; choose {alternative}"
                             f"{', '.join(self.upscalers()) or 'none (train one with --preset sr64)'}.")

        sr = upscaling.load_upscaler(name, store=self.app.args.store, device=self.app.args.device)
        low = int(sr.config.get("sr", {}).get("low_res_size", sr.image_size // 2))
        return low, int(sr.sampler_defaults.get("steps", SR_DEFAULT_STEPS))

    def upscale_selected(self, image, upscaler, request=None, progress=None) -> Iterator[tuple]:
        """Stream (upscaled image, status, files): a result of this app or its CLI (a PNG with its recipe)
        upscaled 2x by a stored SR model, with its recipe's seed; the new PNG's recipe names both
        stages, so ``python diffusion.py sample --from-png`` regenerates the upscaled image."""
        yield from self.app.guarded("upscale", self._upscale(image, upscaler, request, progress))

    def _upscale(self, image, upscaler, request, progress):

        app = self.app
        r = recipe_of(image, self.app.max_upload)
        want, steps = self.upscaler(upscaler, "one of: ")
        with Image.open(file_path(image)) as im:
            low = np.asarray(im.convert("RGB"))
        if low.shape[:2] != (want, want):
            raise InputError(f"{upscaler} upscales {want} px images to {2 * want} px; this image is "
                             f"{low.shape[1]}x{low.shape[0]}.")
        seed = validate_seed(r.get("seed", 0)) or 0

        def work(on_step):
            return upscaling.upscale_images(low[None], upscaler, seed=seed, store=app.args.store,
                                           device=app.args.device, callback=on_step)

        session = session_of(request)
        for ev in app.jobs.run(work, session=session, total_steps=steps, progress=progress,
                               start_text=f"Upscaling with {upscaler}, {steps} steps..."):
            if isinstance(ev, Tick):
                yield (ev.preview[0][0] if ev.preview else gr.skip()), ev.status, gr.skip()
            elif isinstance(ev, Cancelled):
                yield gr.skip(), f"Stopped after {ev.elapsed:.1f} s.", gr.skip()
            elif isinstance(ev, Done):
                up = ev.result
                prompt = r.pop("prompt")
                recipe = {**r, **up.recipe}
                folder = app.exporter.new_folder()
                (path,) = app.exporter.save_images(folder, up.images, [prompt], [recipe],
                                                   [f"upscaled_seed{seed}.png"])
                app.exporter.prune()
                app.remember(session, [(path, f"seed {seed}, upscaled by {upscaler}")])
                yield path, (f"Upscaled to {up.images.shape[2]} px in {ev.elapsed:.1f} s with {upscaler} "
                             f"({up.recipe['upscale_steps']} steps, seed {seed})."), [path]

    def upscale_fn(self):
        tab = self

        def upscale(image, upscaler, request: gr.Request = None, progress=gr.Progress()):
            yield from tab.upscale_selected(image, upscaler, request=request, progress=progress)

        upscale.__annotations__["request"] = gr.Request
        return upscale

    def stage(self, value: Any, lm, num_images: int) -> tuple[str, int] | None:
        """The "Then upscale" choice checked (Generate and the Learn tab): None (off), or (SR model, its
        steps) for this model's size and ``num_images`` images."""
        if value is None or value == "" or value == UPSCALE_OFF:
            return None
        low, steps = self.upscaler(value, f"{UPSCALE_OFF!r} or one of: ")
        if low != lm.image_size:
            raise InputError(f"{value} upscales {low} px images; {lm.name} makes {lm.image_size} px images. "
                             f"Choose {UPSCALE_OFF!r} or an upscaler for {lm.image_size} px.")
        high = 2 * low
        args = self.app.args
        if num_images > max_images_for(high, args.max_batch_pixels):
            raise InputError(f"Upscaling {num_images} images to {high} px is more than this server makes at "
                             f"once; use at most {max_images_for(high, args.max_batch_pixels)} images.")
        check_budget(num_images, high, steps, args.max_work)
        return value, steps
