"""The training runner the app's Train tab drives: a real ``diffusion.py train`` process, started,
watched through its run folder, stopped (with a checkpoint), resumed, and seen again by a second
runner (a restarted server). Bad requests are refused before anything starts."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from test_training import make_tiny_dataset
from training.runner import RunError, RunSpec, TrainingRunner, lock_holder, log_tail


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", n_per_class=8)


def wait_for(pred, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_start_watch_stop_resume_and_reconnect(data, tmp_path):
    runner = TrainingRunner(tmp_path / "runs")
    spec = RunSpec("cats", data, preset="smoke", steps=400, precision="fp32", sample_every=5)
    st = runner.start(spec)
    assert st.state == "running" and st.pid
    # while it runs: a second Start is refused, and a new runner (a restarted server) sees it too
    with pytest.raises(RunError, match="cats is training"):
        runner.start(RunSpec("dogs", data, preset="smoke", steps=10))
    reborn = TrainingRunner(tmp_path / "runs")
    wait_for(lambda: reborn.status("cats").step >= 10, what="ten steps in metrics.csv")
    wait_for(lambda: reborn.status("cats").grids, what="a sample grid")
    st = reborn.status("cats")
    assert st.running and reborn.active() == "cats" and st.pid == lock_holder(st.run_dir)
    assert st.max_steps == 400 and st.loss is not None and st.images_per_s and st.eta_s is not None
    assert [g for g, _ in st.grids] == sorted(g for g, _ in st.grids) and all(g % 5 == 0 for g, _ in st.grids)

    assert "Stopping cats" in reborn.stop()  # the pid from the lock file: not a process it started
    assert runner.wait(60) in (0, 130)
    st = runner.status("cats")
    assert st.state == "stopped" and st.checkpoints and st.checkpoints[-1] == st.step < 400
    assert int(st.curve[-1]["step"]) == st.step, "a stop writes the checkpoint's step to metrics.csv"
    assert "finished at step" in st.log_tail
    assert runner.stop() == "Nothing is training."

    with pytest.raises(RunError, match="has checkpoints"):
        runner.start(RunSpec("cats", data, preset="smoke", steps=10, resume=False))
    stopped_at = st.step
    runner.start(RunSpec("cats", data, preset="smoke", steps=stopped_at + 5, precision="fp32", sample_every=5))
    assert runner.wait(120) == 0
    st = runner.status("cats")
    assert st.state == "finished" and st.step == stopped_at + 5 and st.checkpoints[-1] == stopped_at + 5
    steps = [int(r["step"]) for r in st.curve]
    assert steps == sorted(steps) and steps[-1] == stopped_at + 5, "the curve goes on from the checkpoint"
    assert runner.runs() == ["cats"]


def test_a_run_that_dies_is_reported_with_its_log(data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in data.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    np.save(broken / "train_labels.npy", np.full(3, 99, np.int64))  # labels that match nothing
    runner = TrainingRunner(tmp_path / "runs")
    runner.start(RunSpec("bad", broken, preset="smoke", steps=5))
    assert runner.wait(120) not in (None, 0)
    st = runner.status("bad")
    assert st.state == "failed" and st.exit_code not in (None, 0)
    assert "rror" in st.log_tail, st.log_tail
    assert "failed" in st.summary()
    # a new runner (no process object) still reads the failure from the log
    assert TrainingRunner(tmp_path / "runs").status("bad").state == "failed"


@pytest.mark.parametrize("spec, message", [
    (dict(run_name="../escape"), "run name"),
    (dict(run_name=""), "run name"),
    (dict(run_name="a/b"), "run name"),
    (dict(preset="imagenet64"), "preset"),
    (dict(minutes=-1), ">= 0"),
    (dict(steps=-5), ">= 0"),
])
def test_bad_requests_are_refused_before_anything_starts(data, tmp_path, spec, message):
    runner = TrainingRunner(tmp_path / "runs")
    with pytest.raises(RunError, match=message):
        runner.start(RunSpec(**{"run_name": "ok", "data_dir": data, **spec}))
    assert runner.active() is None and not any((tmp_path / "runs").glob("*/train.log"))


def test_no_data_and_a_full_disk_are_refused(data, tmp_path):
    runner = TrainingRunner(tmp_path / "runs")
    with pytest.raises(RunError, match="not a preprocessed data folder"):
        runner.start(RunSpec("x", tmp_path / "nothing"))
    full = TrainingRunner(tmp_path / "runs", min_free_bytes=1 << 60)
    with pytest.raises(RunError, match="MB free"):
        full.start(RunSpec("x", data))
    assert full.stop() == "Nothing is training." and full.status("x").state == "none"


def test_log_tail_folds_progress_bars_and_a_stale_lock_is_not_a_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "train.log").write_text("start\nbar 1%\rbar 50%\rbar 100%\nfinished at step 3\n")
    assert log_tail(run) == "start\nbar 100%\nfinished at step 3"
    (run / ".train.lock").write_text("999999999\n")  # a pid that no longer exists
    assert lock_holder(run) is None
