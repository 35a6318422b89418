"""preprocess.py interrupted and run again: resume to the same bytes, no-op re-runs, locks, overwrite safety.

Helpers and fixtures come from test_preprocess.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dataprep import decode
from dataprep.dataset import PreprocessedDataset
from dataprep.defaults import PreprocessError
from fileio import exclusive_lock
from test_preprocess import (
    ilsvrc_out,  # noqa: F401 - fixture
    ilsvrc_tree,  # noqa: F401 - fixture
    run,
)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_and_matches_a_clean_run(tmp_path, monkeypatch, ilsvrc_tree, ilsvrc_out, workers):
    base, _ = ilsvrc_tree
    clean_out = ilsvrc_out[0]
    out = tmp_path / "pre"
    real = decode.save_checkpoint
    calls = {"n": 0}

    def interrupt_after_second_checkpoint(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(decode, "save_checkpoint", interrupt_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(base, out, workers=workers, chunk_size=2, checkpoint_seconds=0.0)
    monkeypatch.setattr(decode, "save_checkpoint", real)
    partial = tmp_path / "pre.partial"
    assert not out.exists() and partial.is_dir()
    state = json.loads((partial / "state.json").read_text())
    assert 0 < state["items_done"] < 20
    with pytest.raises(FileNotFoundError, match="resume"):
        PreprocessedDataset(out)

    res = run(base, out, workers=workers, chunk_size=2)
    assert res.manifest["resumed"] is True
    assert not partial.exists()
    for name in ("train_images.npy", "train_labels.npy", "val_images.npy", "class_embeddings.npy"):
        assert np.array_equal(np.load(out / name), np.load(clean_out / name)), name
    assert res.manifest["skipped"] == ilsvrc_out[1].manifest["skipped"]


def test_rerun_is_a_no_op_and_other_options_need_overwrite(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    out = tmp_path / "pre"
    first = run(base, out, size=32)
    again = run(base, out, size=32)
    assert again.skipped_run and again.manifest["config_hash"] == first.manifest["config_hash"]
    with pytest.raises(PreprocessError, match="--overwrite"):
        run(base, out, size=48)
    run(base, out, size=48, overwrite=True)
    assert np.load(out / "train_images.npy", mmap_mode="r").shape[1:] == (48, 48, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]  # no leftovers


def test_a_second_concurrent_run_is_refused(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    out = tmp_path / "pre"
    # what a running preprocess.py holds (flock conflicts across open() calls, even in one process)
    with exclusive_lock(tmp_path / "pre.lock", busy=RuntimeError, remove=True):
        with pytest.raises(PreprocessError, match="another preprocess.py run"):
            run(base, out)
    run(base, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]


def test_stale_partial_from_other_options_is_discarded(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    partial = tmp_path / "pre.partial"
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({"work_key": "something else", "chunks_done": 3}))
    (partial / "train_images.npy").write_text("x")
    res = run(base, tmp_path / "pre")
    assert res.manifest["resumed"] is False and not partial.exists()


def test_overwrite_never_deletes_folders_it_did_not_write(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(PreprocessError, match="refusing to replace"):
        run(base, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    other = tmp_path / "x.partial"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PreprocessError, match="refusing to delete"):
        run(base, tmp_path / "x")
    assert (other / "notes.txt").exists()
