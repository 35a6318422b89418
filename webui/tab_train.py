"""The Train tab: pick or prepare a folder of pictures, train on it, watch the loss fall and the
same seeds' samples sharpen, stop, resume, and export the model into the store (it appears in the
model picker at once).

Training runs as a separate ``diffusion.py train`` process (``training.runner``): the app stays
responsive, one run trains at a time, and the page reads the run back from its folder, so a
reloaded page or a second browser shows the running job. Endpoints: ``/train_folders``,
``/train_prepare``, ``/train_start``, ``/train_stop``, ``/train_status``, ``/train_export``.
On a non-loopback host or with ``--share`` the tab needs ``--auth`` (training writes files and
spends the machine's CPU for minutes).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from engine import store
from engine.export import ExportError, app_protected, export_run
from engine.replaced import restore_hint
from training.runner import TAB_PRESETS, RunError, RunSpec, RunStatus, TrainingRunner, check_run_name, newest_grids
from webui import train_data, train_pictures
from webui.train_chart import loss_chart
from webui.uploads import file_path, upload_folder
from webui.validation import InputError, _number, _whole, exposure_warning

REFRESH_SECONDS = 2.0
DEFAULT_RUN = "my_model"
OVERWRITE_LABEL = "Replace a model of that name (it is kept aside)"
# What one Start may ask for. Past these a typo (10**12 steps) would hold the machine for good; the
# largest preset (imagenet64) is 400,000 steps, and a week is longer than any run this tab is for.
# The form's fields and the /train_start endpoint both use these.
MAX_STEPS = 1_000_000
MAX_MINUTES = 7 * 24 * 60


def train_disabled_reason(args: Any) -> str | None:
    """Why the Train tab is off here (None when it is on): reachable by others without a login."""
    warning = exposure_warning(args.host, args.share, args.auth)
    if warning:
        return ("Training is off: this app is reachable by others without a login, and training writes files and "
                "uses the machine for minutes. Start it with `--auth user:password` (or on the default "
                "`--host 127.0.0.1` without `--share`) to train here.")
    return None


def number(value: Any, name: str, integer: bool = False, maximum: float | None = None) -> float:
    """A number from 0 up to ``maximum`` from a form field or an API caller's value (an empty box is 0:
    no limit), checked by the app's own number parsers, or InputError naming the field and the limit."""
    x = (_whole if integer else _number)(0 if value is None or value == "" else value, name)
    if x < 0:
        raise InputError(f"{name} must be >= 0, got {x:g}.")
    if maximum is not None and x > maximum:
        raise InputError(f"{name} must be at most {_plain(maximum)}, got {_plain(x)}.")
    return x


def _plain(x: float) -> str:
    """1,000,000 rather than 1e+06, for a person reading a limit."""
    return f"{x:,.0f}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


class TrainTab:
    def __init__(self, app):
        self.app = app
        args = app.args
        self.data_root = Path(getattr(args, "data_root", None) or "data")
        self.runner = TrainingRunner(Path(getattr(args, "runs_dir", None) or "output_ImageNet"))

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """The app's error handling, with the runner's refusals shown as they are (not as a crash)."""
        with self.app.errors(what):
            try:
                yield
            except RunError as e:
                raise InputError(str(e)) from None

    # ----------------------------------------------------------------- data
    def folder_choices(self) -> list[tuple[str, str]]:
        return [(d.label, d.name) for d in train_data.list_data(self.data_root)]

    def folders(self, current: Any = None):
        choices = self.folder_choices()
        names = [v for _, v in choices]
        return gr.update(choices=choices, value=current if current in names else (names[0] if names else None))

    def show_folder(self, name: Any) -> tuple[str, str]:
        """(the folder's summary, its classes' example strips as HTML)."""
        name = train_data.parse_folder_choice(name)
        if not name:
            return f"No folder picked. Put a folder of pictures (one sub-folder per class) in `{self.data_root}`.", ""
        path = train_data.resolve_under(self.data_root, name)
        if path.is_file() and path.suffix.lower() == ".zip":
            return (f"**{name}**: an uploaded zip of pictures, not prepared yet: choose a size and press "
                    "*Prepare* (it is read in place, never extracted)."), ""
        if not path.is_dir():
            raise InputError(f"{name!r} is not a folder under the data root")
        if not (path / "train_images.npy").exists():
            return (f"**{name}** holds pictures, not prepared yet: choose a size and press *Prepare*. Each "
                    "sub-folder is a class (its name is the class name); a folder of pictures alone is one class."), ""
        return train_data.summary(path), train_pictures.examples_html(train_data.examples(path))

    def prepare(self, name: Any, size: Any, val_fraction: Any, progress=None):
        name = train_data.parse_folder_choice(name)
        size, val_fraction = number(size, "image size", integer=True), number(val_fraction, "held-out fraction")
        out = train_data.prepare(self.data_root, name, size, val_fraction, embed_fn=None)
        summary, examples = self.show_folder(out.name)
        return self.folders(out.name), summary, examples

    def prepare_tiny(self, names: Any, size: Any, val_fraction: Any, progress=None):
        size, val_fraction = number(size, "image size", integer=True), number(val_fraction, "held-out fraction")
        out = train_data.prepare_tiny_imagenet(self.data_root, names, size, val_fraction)
        summary, examples = self.show_folder(out.name)
        return self.folders(out.name), summary, examples

    def download_tiny(self, progress=None) -> str:
        path = train_data.download_tiny_imagenet(self.data_root, url=getattr(self.app.args, "tiny_imagenet_url", None))
        return f"Tiny ImageNet is in `{path}`: name classes and press *Prepare these classes*."

    def upload(self, file: Any):
        """An uploaded zip of class folders: checked (size, entries, names, compression ratio), kept in
        the data root, and picked."""
        path = file_path(file)
        if not path:
            raise InputError("Upload a .zip of class folders of pictures first.")
        p = Path(path)
        try:
            inside = p.resolve().is_relative_to(Path(upload_folder()).resolve())
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside or not p.is_file():
            raise InputError("Upload the zip to this app; a file path on the server is not accepted.")
        original = file.get("orig_name") if isinstance(file, dict) else None
        name = train_data.accept_zip(self.data_root, p, original or p.name, self.app.max_upload)
        summary, examples = self.show_folder(name)
        return self.folders(name), summary, examples

    # ----------------------------------------------------------------- runs
    def run_choices(self) -> list[str]:
        return self.runner.runs()

    def runs_update(self, current: Any = None):
        """The run picker: the run training now, else the one shown, else the newest."""
        runs = self.run_choices()
        value = self.runner.active() or (current if current else (runs[0] if runs else DEFAULT_RUN))
        return gr.update(choices=runs or [DEFAULT_RUN], value=value)

    def start(self, run_name: Any, data_name: Any, preset: Any, minutes: Any, steps: Any, precision: Any,
              sample_every: Any, resume: Any) -> str:
        minutes = number(minutes, "minutes", maximum=MAX_MINUTES)
        steps = number(steps, "steps", integer=True, maximum=MAX_STEPS)
        sample_every = number(sample_every, "samples every N steps", integer=True, maximum=MAX_STEPS)
        data_name = train_data.parse_folder_choice(data_name)
        data = train_data.resolve_under(self.data_root, data_name)
        if not (data / "train_images.npy").exists():
            raise InputError(f"{data_name!r} is not prepared yet: press Prepare first")
        if not isinstance(resume, bool):
            raise InputError(f"resume must be true or false, got {str(resume)[:40]!r}")
        spec = RunSpec(check_run_name(str(run_name or "")), data, preset=str(preset), minutes=minutes, steps=steps,
                       precision=str(precision or "auto"), resume=resume, sample_every=sample_every)
        if spec.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"precision {spec.precision!r}: choose auto, bf16 or fp32")
        st = self.runner.start(spec)
        return f"Started {spec.run_name} ({spec.preset} preset on {data_name}). " + st.summary()

    def stop(self) -> str:
        return self.runner.stop()

    def status(self, run_name: Any) -> tuple[str, Any, str, str, str]:
        """(status text, loss chart, newest sample grid, the timeline of grids, the log's last lines)."""
        name = str(run_name or "").strip() or self.runner.active() or DEFAULT_RUN
        st = self.runner.status(check_run_name(name))
        newest = st.grids[-1] if st.grids else None
        grid = train_pictures.grid_html(newest[1] if newest else None, f"step {newest[0]:,}" if newest else "")
        return (self._status_text(st), loss_chart(st.curve), grid, train_pictures.timeline_html(newest_grids(st)),
                st.log_tail)

    @staticmethod
    def _status_text(st: RunStatus) -> str:
        text = st.summary()
        if (st.run_dir / "tensorboard").is_dir():
            text += f"\n\nIn TensorBoard: `tensorboard --logdir {st.run_dir / 'tensorboard'}`"
        if st.state == "failed":
            text += "\n\nThe training process ended with an error; the log below says why. Any checkpoints are kept: " \
                    "fix the cause and press Start to resume."
        elif st.state == "stopped":
            text += "\n\nStopped: press Start to resume from the last checkpoint, or Export to use it."
        elif st.state == "finished":
            text += "\n\nFinished: Export it to generate with it."
        return text

    def export(self, run_name: Any, model_name: Any, current_model: Any, overwrite: Any = False):
        name = check_run_name(str(run_name or ""))
        model_name = str(model_name or "").strip() or name
        try:
            store.validate_model_name(model_name)
        except ValueError as e:
            raise InputError(str(e)) from None
        st = self.runner.status(name)
        if st.state == "none" or not st.checkpoints:
            raise InputError(f"run {name} has no checkpoint yet: train it first")
        try:  # the store's rule (engine/export.py): never the shipped models nor one in use, others on request
            done = export_run(st.run_dir, model_name, overwrite=overwrite is True, store_root=self.app.args.store,
                              protected=app_protected([current_model, self.app.models.first,
                                                       *self.app.models.loaded()]),
                              overwrite_hint=f'tick "{OVERWRITE_LABEL}"')
        except (ExportError, ValueError) as e:
            raise InputError(str(e)) from None
        msg = (f"Exported {name} (step {store.checkpoint_step(done.checkpoint):,}, EMA weights) as **{model_name}** "
               f"in `{done.folder.parent}`: pick it in the model picker above to generate with it."
               + (f" {restore_hint(done.replaced)}" if done.replaced else ""))
        return msg, self.app.refresh_models(current_model)

    # ----------------------------------------------------------------- layout
    # Over 100 lines on purpose: the tab's layout declared top to bottom as it appears on the page.
    def build(self, ui) -> None:
        reason = train_disabled_reason(self.app.args)
        if reason:
            gr.Markdown(reason, elem_id="train-disabled")
            return
        app = self.app
        gr.Markdown(
            f"Train a model on your own pictures. **Data**: folders in `{self.data_root}` (one sub-folder per class, "
            "named after it; a folder of pictures alone is one class). **Run**: training runs as a separate "
            "`python diffusion.py train` process; the loss and the same seeds' samples update as it learns. "
            "**Export** puts it in the model picker.")
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("### 1. Data")
                with gr.Row():
                    # custom values allowed: the list changes under the page (Prepare, new folders), and
                    # every name is checked here (train_data.resolve_under) rather than against a stale list
                    folder = gr.Dropdown(self.folder_choices(), label="Data folder", elem_id="train-folder",
                                         scale=4, allow_custom_value=True)
                    refresh = gr.Button("Refresh", size="sm", scale=1)
                with gr.Row():
                    size = gr.Radio([16, 32, 64], value=32, label="Image size (px)", elem_id="train-size")
                    val_fraction = gr.Number(0.05, minimum=0, maximum=0.49, step=0.01, label="Held-out fraction",
                                             elem_id="train-val-fraction")
                with gr.Accordion("Or upload a zip of class folders", open=False):
                    zip_in = gr.File(label=".zip (size-limited, checked, read in place)", file_types=[".zip"],
                                     type="filepath", elem_id="train-zip")
                with gr.Accordion("Or Tiny ImageNet classes, by name", open=False):
                    tiny_names = gr.Textbox(label="Classes (comma-separated names or wnids)",
                                            placeholder="goldfish, tabby, school bus", elem_id="train-tiny-names")
                    with gr.Row():
                        tiny_download = gr.Button("Download Tiny ImageNet (237 MB, checksummed)", size="sm")
                        tiny_prepare = gr.Button("Prepare these classes", size="sm", elem_id="train-tiny-prepare")
                    tiny_md = gr.Markdown(
                        f"Reads `{train_data.TINY_IMAGENET_ZIP}` in the data root"
                        + (" (found)." if train_data.tiny_imagenet_zip(self.data_root) else
                           " (not there yet: Download it, or copy it there)."))
                prepare = gr.Button("Prepare", elem_id="train-prepare")
                gr.Markdown("### 2. Run")
                run_name = gr.Dropdown(self.run_choices() or [DEFAULT_RUN], value=self.runner.active() or DEFAULT_RUN,
                                       allow_custom_value=True, label="Run name (a new name starts a new run)",
                                       elem_id="train-run")
                with gr.Row():
                    preset = gr.Radio(list(TAB_PRESETS), value="smoke", label="Preset",
                                      info="smoke: minutes, proves the pipeline; default: the shipped CPU recipe")
                    precision = gr.Radio(["auto", "bf16", "fp32"], value="auto", label="Precision")
                with gr.Row():
                    minutes = gr.Number(10, minimum=0, maximum=MAX_MINUTES, label="Minutes (0 = no limit)",
                                        elem_id="train-minutes")
                    steps = gr.Number(0, minimum=0, maximum=MAX_STEPS, precision=0, label="Steps (0 = the preset's)",
                                      elem_id="train-steps")
                    sample_every = gr.Number(50, minimum=0, maximum=MAX_STEPS, precision=0,
                                             label="Samples every N steps", elem_id="train-sample-every")
                resume = gr.Checkbox(True, label="Resume from the run's last checkpoint", elem_id="train-resume")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
                gr.Markdown("### 3. Export")
                with gr.Row():
                    model_name = gr.Textbox(label="Model name in the store (default: the run's)",
                                            elem_id="train-model-name", scale=3)
                    export = gr.Button("Export", elem_id="train-export", scale=1)
                overwrite = gr.Checkbox(False, label=OVERWRITE_LABEL, elem_id="train-overwrite")
                export_md = gr.Markdown(elem_id="train-export-status")
            with gr.Column(scale=2):
                data_md = gr.Markdown("Pick a data folder.", elem_id="train-data")
                data_gallery = gr.HTML(label="Examples of each class (training images)", show_label=True,
                                       container=True, elem_id="train-examples")
                status = gr.Markdown("No run yet.", elem_id="train-status")
                curve = gr.Plot(label="Training loss", show_label=False, elem_id="train-loss")
                grid = gr.HTML(label="Newest samples (the same seeds every time)", show_label=True, container=True,
                               elem_id="train-grid")
                timeline = gr.HTML(label="What it is learning: the same seeds over training", show_label=True,
                                   container=True, elem_id="train-timeline")
                with gr.Accordion("Log", open=False):
                    log_box = gr.Textbox(lines=10, max_lines=20, show_label=False, elem_id="train-log")
        timer = gr.Timer(REFRESH_SECONDS)

        guarded = self.errors
        outputs = [status, curve, grid, timeline, log_box]

        def status_fn(run):
            with guarded("training status"):
                return self.status(run)

        def show_fn(name):
            with guarded("data folder"):
                return self.show_folder(name)

        def prepare_fn(name, size_, frac, progress=gr.Progress(track_tqdm=True)):
            with guarded("preparing data"):
                return self.prepare(name, size_, frac, progress)

        def tiny_prepare_fn(names, size_, frac, progress=gr.Progress(track_tqdm=True)):
            with guarded("preparing Tiny ImageNet classes"):
                return self.prepare_tiny(names, size_, frac, progress)

        def tiny_download_fn(progress=gr.Progress(track_tqdm=True)):
            with guarded("downloading Tiny ImageNet"):
                return self.download_tiny(progress)

        def upload_fn(file):
            with guarded("zip upload"):
                return self.upload(file)

        def start_fn(run, data, preset_, minutes_, steps_, precision_, every, resume_):
            with guarded("starting training"):
                return self.start(run, data, preset_, minutes_, steps_, precision_, every, resume_)

        def stop_fn():
            with guarded("stopping training"):
                return self.stop()

        def export_fn(run, name, current, replace=False):
            with guarded("export"):
                return self.export(run, name, current, replace)

        refresh.click(self.folders, [folder], [folder], api_name="train_folders", queue=False).then(
            show_fn, [folder], [data_md, data_gallery], api_visibility="private", queue=False)
        # a page opened later sees today's folders and runs (and the running job: reconnect)
        ui.demo.load(self.folders, [folder], [folder], api_visibility="private", queue=False).then(
            show_fn, [folder], [data_md, data_gallery], api_visibility="private", queue=False)
        ui.demo.load(self.runs_update, [run_name], [run_name], api_visibility="private", queue=False)
        folder.input(show_fn, [folder], [data_md, data_gallery], api_visibility="private", queue=False)
        zip_in.upload(upload_fn, [zip_in], [folder, data_md, data_gallery], api_name="train_upload",
                      preprocess=False, concurrency_limit=1, concurrency_id="train_prepare")
        tiny_prepare.click(tiny_prepare_fn, [tiny_names, size, val_fraction], [folder, data_md, data_gallery],
                           api_name="train_prepare_tiny", concurrency_limit=1, concurrency_id="train_prepare",
                           preprocess=False)
        tiny_download.click(tiny_download_fn, None, [tiny_md], api_name="train_download_tiny", concurrency_limit=1,
                            concurrency_id="train_prepare")
        prepare.click(prepare_fn, [folder, size, val_fraction], [folder, data_md, data_gallery],
                      api_name="train_prepare", concurrency_limit=1, concurrency_id="train_prepare",
                      preprocess=False)
        # queued, like Export below: only a queued event's gr.Error reaches the page as a toast with its reason
        start.click(start_fn, [run_name, folder, preset, minutes, steps, precision, sample_every, resume], [status],
                    api_name="train_start", preprocess=False).then(status_fn, [run_name], outputs, queue=False,
                                                                   api_visibility="private")
        stop.click(stop_fn, None, [status], api_name="train_stop")
        timer.tick(status_fn, [run_name], outputs, api_visibility="private", queue=False, show_progress="hidden")
        run_name.change(status_fn, [run_name], outputs, api_name="train_status", queue=False)
        # queued: only a queued event's gr.Error reaches the page as a toast (a refusal says what to do);
        # Gradio shows a non-queued one's as a bare "Error"
        export.click(export_fn, [run_name, model_name, ui.model, overwrite], [export_md, ui.model],
                     api_name="train_export")
