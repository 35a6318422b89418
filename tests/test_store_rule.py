"""The store's one rule, for the command line and the app alike: an existing model is replaced only on an
explicit choice (``export --overwrite``, the Train tab's checkbox) and is then moved aside whole, not
deleted, so ``diffusion.py restore`` undoes it; the app never replaces a shipped model nor the model in
use; a model is written under a temporary name, so a failed export leaves no half model under the name.
The app's side runs here in-process (no server, no text encoder); tests/test_web_export.py and
tests/test_browser_export.py take the same paths through the endpoint and Chromium."""
from __future__ import annotations

import re
import subprocess
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import diffusion as cli
from core import DiffusionConfig
from engine import replaced, store
from engine.export import ExportError, app_protected, export_run
from models import ConditionalUNet, UNetConfig
from webui.tab_train import OVERWRITE_LABEL, TrainTab
from webui.validation import InputError

TINY = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                  head_channels=8, dropout=0.0)
CLASSES = [{"index": 0, "wnid": "n01443537", "name": "goldfish", "prompt": "a photo of a goldfish"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine
    yield
    torch.set_num_threads(old)


def make_run(runs: Path, name: str, step: int = 205, seed: int = 0) -> Path:
    """A training run folder holding one checkpoint of a tiny untrained network (what an export reads)."""
    torch.manual_seed(seed)
    model, ema = ConditionalUNet(TINY), ConditionalUNet(TINY)
    ema.load_state_dict(model.state_dict())
    cfg = store.model_config(TINY, DiffusionConfig(), CLASSES, hardware="test")
    store.save_checkpoint(runs / name / "checkpoints", step, model, ema, torch.optim.AdamW(model.parameters()), cfg,
                          {"cpu": torch.get_rng_state()})
    return runs / name


def shipped_like(root: Path, name: str) -> dict[str, bytes]:
    """A model folder as a shipped one looks (weights, config, card, evaluation, classifier): its files' bytes."""
    torch.manual_seed(99)
    store.save_to_store(name, ConditionalUNet(TINY).state_dict(), store.model_config(TINY, DiffusionConfig(), CLASSES),
                        f"# {name}\n\nThe real one.\n", store=root)
    (root / name / "evaluation.json").write_text('{"rows": [{"accuracy": 0.6}]}')
    (root / name / "classifier.json").write_text("{}")
    return files_of(root / name)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture()
def world(tmp_path):
    store_root, runs = tmp_path / "store", tmp_path / "runs"
    make_run(runs, "toy")
    return SimpleNamespace(store=store_root, runs=runs, run=runs / "toy")


# --------------------------------------------------------------------------- the store: move aside, atomic, restore
def test_an_overwrite_moves_the_old_model_aside_whole_and_out_of_every_listing(world):
    old = shipped_like(world.store, "m")
    done = export_run(world.run, "m", overwrite=True, store_root=world.store)
    assert done.folder == world.store / "m" and done.replaced is not None
    assert done.replaced.parent == world.store / store.REPLACED_DIR and done.replaced.name.startswith("m-")
    assert files_of(done.replaced) == old  # weights, config, card, evaluation and classifier, byte for byte
    assert "evaluation.json" not in files_of(done.folder)  # the new weights were not scored
    assert (done.folder / "classifier.json").read_bytes() == old["classifier.json"]  # a companion carries over
    assert store.list_models(world.store, model_type=None) == ["m"]
    assert [r.entry for r in replaced.list_replaced(world.store)] == [done.replaced.name]
    assert (world.store / store.REPLACED_DIR / ".gitignore").read_text() == "*\n"  # never committed by accident


def test_a_failed_export_leaves_the_old_model_and_no_half_model_under_any_name(world, monkeypatch):
    old = shipped_like(world.store, "m")

    def disk_full(tensors, path):
        Path(path).write_bytes(b"\0" * 10)  # a half-written file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_file", disk_full)
    for name in ("m", "new"):
        with pytest.raises(OSError, match="No space"):
            export_run(world.run, name, overwrite=True, store_root=world.store)
    assert files_of(world.store / "m") == old
    assert sorted(p.name for p in world.store.iterdir()) == ["m"]  # no temporary folder left, nothing aside


def test_restore_undoes_an_overwrite_byte_for_byte_and_can_itself_be_undone(world):
    old = shipped_like(world.store, "m")
    done = export_run(world.run, "m", overwrite=True, store_root=world.store)
    new = files_of(done.folder)
    folder, displaced = replaced.restore("m", world.store)  # by name: its newest replaced copy
    assert folder == world.store / "m" and files_of(folder) == old
    assert displaced is not None and files_of(displaced) == new
    replaced.restore(displaced.name, world.store)  # by entry
    assert files_of(world.store / "m") == new
    with pytest.raises(FileNotFoundError, match="no replaced model 'nope'"):
        replaced.restore("nope", world.store)


@pytest.mark.parametrize("name", ["../evil", "a/b", ".replaced", ".hidden", "", "x" * 65])
def test_names_that_are_paths_or_hidden_are_refused_before_anything_is_written(world, name):
    with pytest.raises(ExportError, match="invalid model name"):
        export_run(world.run, name, overwrite=True, store_root=world.store)
    assert not world.store.exists() and not (world.runs / "evil").exists()


def test_the_shipped_models_are_those_tracked_in_the_repos_store():
    tracked = subprocess.run(["git", "ls-files", "model_store"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout:
        pytest.skip("not a git checkout")
    assert {Path(line).parts[1] for line in tracked.stdout.split()} == store.SHIPPED_MODELS


# --------------------------------------------------------------------------- the command line
def test_cli_export_refuses_an_existing_name_then_overwrites_keeping_the_old_and_restore_undoes_it(world, capsys):
    old = shipped_like(world.store, "tiny200")  # the maintainer's tool may replace a shipped model, on request
    base = ["export", str(world.run), "--name", "tiny200", "--store", str(world.store)]
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "'tiny200' already exists" in err and "add --overwrite" in err
    assert files_of(world.store / "tiny200") == old and not (world.store / store.REPLACED_DIR).exists()

    assert cli.main([*base, "--overwrite"]) == 0
    out = capsys.readouterr().out
    (entry,) = replaced.list_replaced(world.store)
    assert f"python diffusion.py restore {entry.entry}" in out and files_of(entry.folder) == old
    assert cli.main(["list", "--store", str(world.store)]) == 0
    assert entry.entry not in capsys.readouterr().out
    assert cli.main(["list", "--replaced", "--store", str(world.store)]) == 0
    assert entry.entry in capsys.readouterr().out

    assert cli.main(["restore", "tiny200", "--store", str(world.store)]) == 0
    assert files_of(world.store / "tiny200") == old
    assert "puts it back" in capsys.readouterr().out  # the toy it displaced is kept in turn


# --------------------------------------------------------------------------- the app (the Train tab's handler)
def train_tab(world, first: str = "tiny200", loaded: tuple[str, ...] = ()) -> TrainTab:
    args = Namespace(store=str(world.store), runs_dir=str(world.runs), data_root=str(world.runs.parent / "data"))
    models = SimpleNamespace(first=first, loaded=lambda: list(loaded))  # what ModelManager.loaded reports
    app = SimpleNamespace(args=args, models=models, refresh_models=lambda current: current)
    return TrainTab(app)


@pytest.mark.parametrize("name", sorted(store.SHIPPED_MODELS))
def test_the_app_never_replaces_a_shipped_model_even_when_asked(world, name):
    old = shipped_like(world.store, name)
    tab = train_tab(world, first="other")
    with pytest.raises(InputError, match="a shipped model"):
        tab.export("toy", name, "other", True)
    assert files_of(world.store / name) == old
    if name == "sr64":  # nor creates one under a shipped name where the store has none
        (world.store / name).rename(world.store / "elsewhere")
        with pytest.raises(InputError, match="a shipped model"):
            tab.export("toy", name, "other", True)
        assert not (world.store / name).exists()


def test_the_app_never_replaces_the_model_in_use(world):
    old = {n: shipped_like(world.store, n) for n in ("mine", "startup")}
    tab = train_tab(world, first="startup")
    for name in ("mine", "startup"):  # the page's model, the model the app opened with
        with pytest.raises(InputError, match="the model in use"):
            tab.export("toy", name, "mine", True)
        assert files_of(world.store / name) == old[name]
    assert {"mine", "startup", *store.SHIPPED_MODELS} == set(app_protected(["mine", "/x/startup", None]))


def test_the_app_never_replaces_a_model_another_session_has_open(world):
    old = shipped_like(world.store, "theirs")
    tab = train_tab(world, first="startup", loaded=("startup", "theirs"))  # another page generates with "theirs"
    with pytest.raises(InputError, match="the model in use"):
        tab.export("toy", "theirs", "mine", True)
    assert files_of(world.store / "theirs") == old


def test_the_app_replaces_an_existing_model_only_when_the_checkbox_is_ticked_and_keeps_it(world):
    old = shipped_like(world.store, "mine")
    tab = train_tab(world)
    for unticked in (False, None, "true"):  # an API caller's stray value is not a yes
        with pytest.raises(InputError, match=re.escape(f'already exists in the store: tick "{OVERWRITE_LABEL}"')):
            tab.export("toy", "mine", "tiny200", unticked)
        assert files_of(world.store / "mine") == old and not (world.store / store.REPLACED_DIR).exists()
    msg, picker = tab.export("toy", "mine", "tiny200", True)
    (entry,) = replaced.list_replaced(world.store, "mine")
    assert "as **mine**" in msg and f"`python diffusion.py restore {entry.entry}` puts it back" in msg
    assert files_of(entry.folder) == old and picker == "tiny200"
    replaced.restore(entry.entry, world.store)  # the undo the message names
    assert files_of(world.store / "mine") == old


def test_the_app_exports_a_new_name_without_the_checkbox(world):
    msg, _ = train_tab(world).export("toy", "brand_new", "tiny200")
    assert "as **brand_new**" in msg and "replaced" not in msg
    assert store.list_models(world.store) == ["brand_new"] and not (world.store / store.REPLACED_DIR).exists()
