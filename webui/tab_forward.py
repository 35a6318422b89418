"""The Forward diffusion tab: q(x_t | x_0) of an uploaded image or one from the
model's data, and the schedule's alpha-bar. Endpoints: ``/forward``,
``/forward_data``, ``/schedule``."""
from __future__ import annotations

from typing import Sequence

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image

import drawing
from dataprep.images import resize_center_crop
from webui.models import pick_data_image
from webui.validation import (
    FORWARD_SIZE,
    MAX_SEED,
    SCHEDULES,
    InputError,
    _whole,
    check_upload,
    default_timesteps,
    parse_timesteps,
    validate_seed,
)


class ForwardTab:
    def __init__(self, app):
        self.app = app
        self._schedule_plots: dict[tuple, object] = {}

    def schedule_image(self, T: int, timesteps: Sequence[int] = ()):
        key = (T, tuple(timesteps))
        if key not in self._schedule_plots:
            if len(self._schedule_plots) > 64:
                self._schedule_plots.clear()
            self._schedule_plots[key] = drawing.schedule_plot(T, timesteps=list(timesteps))
        return self._schedule_plots[key]

    def _common(self, model_choice, schedule, timesteps, seed):
        lm = self.app._model(model_choice)
        T = lm.diffusion.num_train_timesteps
        if schedule not in SCHEDULES:
            raise InputError(f"Schedule must be one of {', '.join(SCHEDULES)}, got {str(schedule)[:40]!r}.")
        ts = parse_timesteps(timesteps, T)
        s = validate_seed(seed)
        return lm, T, ts, (0 if s is None else s)

    def forward(self, image, model_choice, schedule, timesteps, seed):
        """Upload -> (strip of q(x_t | x_0) at the timesteps, alpha-bar plot)."""

        with self.app.errors("making the strip"):
            _, T, ts, s = self._common(model_choice, schedule, timesteps, seed)

            img = check_upload(image, max_bytes=self.app.max_upload,
                               upload_dir=get_upload_folder())
            arr = np.asarray(resize_center_crop(img, FORWARD_SIZE))  # as training data is resized
            strip = drawing.forward_diffusion_strip(arr, ts, beta_schedule=schedule, num_train_timesteps=T, seed=s)
            return strip, self.schedule_image(T, ts)

    def forward_data(self, model_choice, class_name, index, schedule, timesteps, seed):
        """An image from the model's data -> (that image, strip, alpha-bar plot)."""

        with self.app.errors("making the strip"):
            _, T, ts, s = self._common(model_choice, schedule, timesteps, seed)
            ds = self.app.models.dataset(model_choice)
            if ds is None:
                raise InputError("This model's training data is not on this machine; upload an image instead.")
            arr = pick_data_image(ds, class_name, index)
            strip = drawing.forward_diffusion_strip(arr, ts, beta_schedule=schedule, num_train_timesteps=T, seed=s)
            return arr, strip, self.schedule_image(T, ts)

    def schedule_api(self):
        tab = self

        def schedule(num_train_timesteps: int = 1000) -> str:
            """alpha-bar over t for the linear and cosine schedules, as a PNG file path."""
            try:
                T = _whole(num_train_timesteps, "num_train_timesteps")
                if not 2 <= T <= 100_000:
                    raise InputError("num_train_timesteps must be between 2 and 100000.")
            except InputError as e:
                raise gr.Error(str(e), print_exception=False) from None

            out = tab.app.out
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"schedules_T{T}.png"
            if not path.exists():
                Image.fromarray(tab.schedule_image(T)).save(path)
            return str(path)

        return schedule

    def build(self, ui) -> None:
        lm = ui.lm
        T = lm.diffusion.num_train_timesteps
        ds = self.app.models.dataset(self.app.models.first)
        data_classes = [c["name"] for c in ds.classes] if ds is not None else []
        schedule = lm.diffusion.beta_schedule if lm.diffusion.beta_schedule in SCHEDULES else "cosine"
        gr.Markdown("How q(x_t | x_0) destroys an image: the same noise at every t, scaled by the "
                    "schedule's alpha-bar. Upload an image or take one from the model's training data. "
                    "(For the exact x_t an img2img run starts from, see *Start from an image* on the Generate tab.)")
        with gr.Row():
            with gr.Column(scale=1):
                image_in = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], format="png",
                                    height=260, elem_id="forward-image", elem_classes=["pixelated"])
                with gr.Row():
                    data_class = gr.Dropdown(data_classes, value=data_classes[0] if data_classes else None,
                                             label="Class in the model's data", interactive=ds is not None)
                    data_index = gr.Number(0, precision=0, minimum=0, label="Image #", interactive=ds is not None)
                pick = gr.Button("Use an image from the data", interactive=ds is not None)
                f_schedule = gr.Radio(list(SCHEDULES), value=schedule, label="Schedule")
                f_steps = gr.Textbox(default_timesteps(T), label="Timesteps (comma-separated)")
                f_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Noise seed")
                f_go = gr.Button("Show forward diffusion", variant="primary", elem_id="forward")
            with gr.Column(scale=2):
                f_strip = gr.Image(label="q(x_t | x_0)", type="numpy", format="png", elem_id="forward-strip",
                                   elem_classes=["pixelated"])
                f_plot = gr.Image(self.schedule_image(T), label="alpha-bar over t", type="numpy", format="png",
                                  elem_id="schedule-plot")
        # The forward endpoints run one at a time: Gradio caches an output image under the hash of its
        # pixels and checks only that the file exists, so two identical requests at once could hand one
        # client the other's half-written (even empty) PNG. One at a time, the second finds it complete.
        f_go.click(self.forward, [image_in, ui.model, f_schedule, f_steps, f_seed], [f_strip, f_plot],
                   api_name="forward", preprocess=False, concurrency_limit=1, concurrency_id="forward")
        pick.click(self.forward_data, [ui.model, data_class, data_index, f_schedule, f_steps, f_seed],
                   [image_in, f_strip, f_plot], api_name="forward_data", preprocess=False, concurrency_limit=1,
                   concurrency_id="forward")
        image_in.upload(self.forward, [image_in, ui.model, f_schedule, f_steps, f_seed], [f_strip, f_plot],
                        api_name="forward_on_upload", api_visibility="private", preprocess=False,
                        concurrency_limit=1, concurrency_id="forward")
        ui.__dict__.update(data_class=data_class, data_index=data_index, f_steps=f_steps, f_schedule=f_schedule)
