"""``WebApp``: what every tab shares (the model picker, error handling, the job
runner, the exporter, the session history) and the page that puts the tabs together.

Each tab lives in its own module (``webui.tab_*``) as a class with its
handlers and a ``build(ui)`` that lays out its components and wires its
events; ``ui`` is a namespace of the components tabs share (the model
picker, the prompt, the seed ...).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import random
import threading
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import gradio as gr

from core.prompting import CoverageIndex
from engine.class_texts import snap_targets
from engine.store import CheckpointError
from models.text_encoder import class_prompt, encode_prompts
from webui import gradio_cache
from webui.cascade import Cascade
from webui.export import Exporter
from webui.jobs import JobRunner
from webui.live import LiveMode
from webui.models import ModelManager
from webui.restore import RecipeActions
from webui.settings import model_defaults, sampler_steps
from webui.tab_forward import ForwardTab
from webui.tab_generate import GenerateTab
from webui.tab_grid import GridTab
from webui.tab_interpolate import InterpolateTab
from webui.tab_learn import LearnTab
from webui.tab_train import TrainTab
from webui.validation import (
    EXAMPLE_PROMPTS,
    MAX_SEED,
    SCHEDULES,
    InputError,
    default_timesteps,
    max_images_for,
    parse_sampler,
    steps_range,
)

log = logging.getLogger("web")

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
#forward-image img { width: 100%; height: 100%; object-fit: contain; }
#status { min-height: 4.5em; }
#gallery .thumbnail-item img, #history-gallery .thumbnail-item img { image-rendering: pixelated; }
"""
MAX_HISTORY = 200  # results kept per session
MAX_SESSIONS = 256  # sessions whose history is kept (LRU)


class WebApp:
    def __init__(self, args: argparse.Namespace, models: ModelManager):
        self.args = args
        self.models = models
        self.out = Path(args.out)
        self.jobs = JobRunner(args.concurrency, threads=args.torch_threads)
        self.exporter = Exporter(self.out, args.keep_runs)
        self._history: "OrderedDict[str, list[tuple[str, str]]]" = OrderedDict()
        self._history_lock = threading.Lock()
        self._snap_targets: dict[str, Any] = {}
        self._coverage: dict[str, Any] = {}

        self.cascade = Cascade(self)
        self.live = LiveMode(self)
        self.recipe_actions = RecipeActions(self)
        self.generate_tab = GenerateTab(self)
        self.forward_tab = ForwardTab(self)
        self.interpolate_tab = InterpolateTab(self)
        self.grid_tab = GridTab(self)
        self.learn_tab = LearnTab(self)
        self.train_tab = TrainTab(self)

    @property
    def max_upload(self) -> int:
        """The largest upload in bytes (``--max-upload-mb``); every tab that reads a file checks it."""
        return int(self.args.max_upload_mb * 2**20)

    # ----------------------------------------------------------------- errors
    @contextlib.contextmanager
    def errors(self, what: str):
        """Bad input -> its own gr.Error; a broken model -> its reason; anything else -> logged, a short gr.Error."""

        try:
            yield
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except CheckpointError as e:
            raise gr.Error(f"Could not load the model: {self.models.public_message(e)}") from None
        except Exception as e:  # never a stack trace for the user; the log has it
            log.exception("%s failed", what)
            raise gr.Error(f"{what[:1].upper()}{what[1:]} failed ({type(e).__name__}: {str(e)[:200]}). "
                           "See the server log.") from None

    def guarded(self, what: str, stream: Iterator) -> Iterator:
        """``errors`` around a generator handler (every step of it)."""
        with self.errors(what):
            yield from stream

    # ----------------------------------------------------------------- stop
    def stop(self, request=None) -> str:
        return self.jobs.stop(getattr(request, "session_hash", None) or "")

    # ----------------------------------------------------------------- models
    def refresh_models(self, current: Any = None):
        """The model picker's choices, re-read from the store (models added after start-up appear)."""

        values = self.models.choices_values()
        return gr.update(choices=self.models.choices(), value=current if current in values else self.models.first)

    def random_seed(self) -> int:
        return random.SystemRandom().randrange(0, MAX_SEED + 1)

    def _model(self, choice: Any):

        name = str(choice or self.models.first)
        try:
            return self.models.get(name)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except CheckpointError as e:
            # A broken or mismatched model folder: its reason is the whole story, no traceback needed.
            # Nothing is cached, so a folder fixed on disk loads on the next pick.
            log.warning("model %r cannot be loaded: %s", name, e)
            raise gr.Error(f"Could not load model {name[:80]!r}: {self.models.public_message(e)}",
                           print_exception=False) from None
        except (ValueError, OSError) as e:
            log.exception("loading model %r failed", name)
            raise gr.Error(f"Could not load model {name[:80]!r}: {self.models.public_message(e)}") from None
        except Exception as e:  # out of memory, a device error...: the app stays up for the other models
            log.exception("loading model %r failed", name)
            raise gr.Error(f"Could not load model {name[:80]!r} ({type(e).__name__}). See the server log.") from None

    def model_info(self, lm) -> str:
        d = lm.diffusion
        data = self.models.dataset(str(lm.path) if str(lm.path) in self.models.extra else lm.name)
        return (f"**{lm.name}**: {lm.image_size}x{lm.image_size} px, {len(lm.classes)} classes, "
                f"{d.beta_schedule} schedule, T={d.num_train_timesteps}, {d.prediction_type}; "
                f"device {self.args.device}. "
                + ("Training data available for the Forward tab." if data is not None
                   else "Its training data is not on this machine (upload an image in the Forward tab)."))

    def snap_targets(self, lm):
        """What "snap to classes" pulls toward for a model: its training texts, else its class
        prompts (``engine.class_texts``; read or encoded once per model)."""

        key = str(lm.path)
        if key not in self._snap_targets:
            self._snap_targets[key] = snap_targets(lm, encode_prompts)
        return self._snap_targets[key]

    def coverage_index(self, lm):
        """What the prompt-coverage check judges a prompt by (built once per model: a few seconds of
        text encoding for tiny200's 200 classes; the distractors' embeddings ship in assets/)."""

        key = str(lm.path)
        if key not in self._coverage:
            self._coverage[key] = (CoverageIndex.build(lm.classes, lm.prompt_template, encode_prompts)
                                   if lm.classes else None)
        return self._coverage[key]

    @staticmethod
    def examples_for(lm) -> list[list[str]]:
        return [[c.get("prompt") or c["name"]] for c in lm.classes[:8]] or [[p] for p in EXAMPLE_PROMPTS]

    def class_to_prompt(self, class_name: Any, model_choice: Any) -> str:

        if not class_name:
            return gr.skip()
        lm = self._model(model_choice)
        if class_name not in lm.class_names:
            raise gr.Error(f"{str(class_name)[:60]!r} is not one of this model's classes.",
                           print_exception=False)
        for c in lm.classes:
            if c["name"] == class_name and c.get("prompt"):
                return c["prompt"]
        return class_prompt(class_name, lm.prompt_template)

    def steps_update(self, label: str, lm, value: Any = None):
        """The steps slider for a sampler on a model: its range, and ``value`` (default: the model's or the sampler's)."""

        lo, hi, _ = steps_range(label, lm.diffusion.num_train_timesteps)
        if value is None:
            value = sampler_steps(lm, label)
        note = " (DDPM's full 1000 steps are slow on a CPU; 250 is the default here)" if label == "DDPM" else ""
        return gr.update(minimum=lo, maximum=hi, value=max(lo, min(hi, int(value))), info=f"{lo}-{hi} for {label}{note}")

    def sampler_changed(self, sampler: Any, model_choice: Any):
        try:
            label = parse_sampler(sampler)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return self.steps_update(label, self._model(model_choice))

    def model_changed(self, model_choice: Any):
        lm = self._model(model_choice)
        T = lm.diffusion.num_train_timesteps
        d = model_defaults(lm)
        lo, hi, _ = steps_range(d["sampler"], T)
        cap = max_images_for(lm.image_size, self.args.max_batch_pixels)
        ds = self.models.dataset(model_choice)
        data_classes = [c["name"] for c in ds.classes] if ds is not None else []
        schedule = lm.diffusion.beta_schedule if lm.diffusion.beta_schedule in SCHEDULES else "cosine"
        return (
            self.model_info(lm),
            gr.update(choices=lm.class_names, value=None),
            gr.update(value=d["sampler"]),
            gr.update(minimum=lo, maximum=hi, value=d["steps"]),
            gr.update(value=d["guidance_scale"]),
            gr.update(maximum=cap, value=min(4, cap), info=f"1-{cap}"),
            gr.update(choices=data_classes, value=data_classes[0] if data_classes else None,
                      interactive=ds is not None),
            gr.update(interactive=ds is not None),
            gr.update(value=default_timesteps(T)),
            gr.update(value=schedule),
            gr.Dataset(samples=self.examples_for(lm)),  # the examples follow the model
            gr.update(value=d["guidance_interval"]),
        )

    # ----------------------------------------------------------------- history (per browser session)
    def remember(self, session: str, items: Sequence[tuple[str, str]]) -> None:
        with self._history_lock:
            h = self._history.setdefault(session, [])
            self._history.move_to_end(session)
            h[:0] = list(items)  # newest batch first, a batch in its own order
            del h[MAX_HISTORY:]
            while len(self._history) > MAX_SESSIONS:
                self._history.popitem(last=False)

    def history(self, request=None) -> list[tuple[str, str]]:
        """This session's results, newest first: (file, caption); each PNG carries its recipe."""
        session = getattr(request, "session_hash", None) or ""
        with self._history_lock:
            return [(p, c) for p, c in self._history.get(session, []) if Path(p).exists()]

    # ----------------------------------------------------------------- the two forward handlers (old names)
    def forward(self, *a):
        return self.forward_tab.forward(*a)

    def forward_data(self, *a):
        return self.forward_tab.forward_data(*a)

    def schedule_image(self, T: int, timesteps: Sequence[int] = ()):
        return self.forward_tab.schedule_image(T, timesteps)

    def generate(self, *a, **kw):
        return self.generate_tab.generate(*a, **kw)

    # ----------------------------------------------------------------- layout
    def build(self):
        gradio_cache.install()  # identical image outputs at once must not truncate each other's download
        lm = self._model(self.models.first)
        with gr.Blocks(title="Diffusion image generator", analytics_enabled=False,
                       delete_cache=(3600, 24 * 3600)) as demo:
            gr.Markdown("# Diffusion image generator\nClass- and text-conditional diffusion, "
                        "sampled live. Every PNG carries its recipe (prompt, seed, sampler...): drop one on "
                        "*Restore from PNG* to get every setting back.")
            with gr.Row():
                model_dd = gr.Dropdown(self.models.choices(), value=self.models.first, label="Model", scale=1,
                                       filterable=True)
                model_md = gr.Markdown(self.model_info(lm), elem_id="model-info")
            ui = SimpleNamespace(model=model_dd, model_md=model_md, lm=lm, result_events=[], cancellable=[],
                                 stop_buttons=[], demo=demo)
            with gr.Tab("Generate", id="generate"):
                self.generate_tab.build(ui)
            with gr.Tab("Interpolate", id="interpolate"):
                self.interpolate_tab.build(ui)
            with gr.Tab("Parameter grid", id="grid"):
                self.grid_tab.build(ui)
            with gr.Tab("Forward diffusion", id="forward"):
                self.forward_tab.build(ui)
            with gr.Tab("Learn", id="learn"):
                self.learn_tab.build(ui)
            with gr.Tab("Train", id="train"):
                self.train_tab.build(ui)
            with gr.Tab("History", id="history"):
                gr.Markdown("Every result of this session, newest first. Each PNG carries its recipe: download "
                            "it, or drop it on *Restore from PNG*.")
                history_gallery = gr.Gallery(label="This session's results", format="png", columns=6,
                                             height="auto", object_fit="contain", elem_id="history-gallery",
                                             elem_classes=["pixelated"])
                history_btn = gr.Button("Refresh", size="sm")
            ui.history_gallery = history_gallery

            # ------------------------------------------------------------- events shared by the tabs
            # .input, not .change: only a person's pick resets the settings to the model's defaults
            # (Restore from PNG sets the model, the sampler and the steps itself).
            model_dd.input(self.model_changed, [model_dd],
                           [model_md, ui.class_dd, ui.sampler, ui.steps, ui.guidance, ui.num, ui.data_class,
                            ui.data_index, ui.f_steps, ui.f_schedule, ui.examples.dataset, ui.g_interval],
                           api_name="select_model",
                           concurrency_limit=1, concurrency_id="models")
            history_btn.click(self.history_fn(), None, [history_gallery], api_name="history", queue=False)
            for event in ui.result_events:  # every finished job refreshes the session's history
                event.success(self.history_fn(), None, [history_gallery], api_visibility="private", queue=False)
            for i, (button, status) in enumerate(ui.stop_buttons):  # Stop on any tab stops this session's jobs
                button.click(self._stop_fn(), None, [status], api_name="stop" if i == 0 else None,
                             api_visibility="public" if i == 0 else "private", queue=False, cancels=ui.cancellable)
            gr.api(self.forward_tab.schedule_api(), api_name="schedule")
            demo.load(self.refresh_models, [model_dd], [model_dd], api_name="list_models", queue=False)
        return demo

    # gradio reads these signatures (type hints, gr.Request / gr.Progress defaults)
    def _stop_fn(self):
        app = self

        def stop(request: gr.Request) -> str:
            return app.stop(request)

        stop.__annotations__["request"] = gr.Request
        return stop

    def history_fn(self):
        app = self

        def history(request: gr.Request):
            return app.history(request)

        history.__annotations__["request"] = gr.Request
        return history
