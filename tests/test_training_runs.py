"""A training run folder under stress: exact resume, Ctrl-C, SIGKILL, a full disk, a second writer.

N steps plus a resume of N steps equals 2N steps bit for bit; Ctrl-C saves; a
SIGKILL in the middle of a checkpoint write, plus torn and half-written
checkpoint folders, never get loaded and cost at most one checkpoint interval;
a full disk stops before a checkpoint; a metrics file from before the loss bands
gets the new header; one training writes a run folder at a time, and a killed
one leaves no stale lock. Helpers and fixtures come from test_training.py.
"""
from __future__ import annotations

import csv
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import store
from test_training import (
    ROOT,
    TINY_NET,
    assert_bit_identical,
    ckpt_tensors,
    cli_flags,
    metric_rows,
    one_thread,  # noqa: F401 - the module-wide one-thread fixture (autouse)
    options,
    subprocess_env,
    tiny_data,  # noqa: F401 - fixture
)
from training import loop as T
from training import run_folder


# The run that exact resume, SIGKILL recovery and the DDP test compare against. Dropout,
# random templates, condition dropout and an epoch boundary (64 images / batch 8) all
# take part, so any random draw that is not re-seeded per step would show up.
REF = dict(TINY_NET, dropout=0.1, batch_size=8, lr=1e-3, warmup_steps=4, max_steps=16, ema_decay=0.9, seed=7,
           sample_every=0, log_every=1)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"training exited (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """REF trained for 16 steps without a break; checkpoints every 4 steps."""
    out = tmp_path_factory.mktemp("ref")
    cfg = T.make_config("smoke", **options(tiny_data, out, "ref", ckpt_every=4, keep_checkpoints=10, **REF))
    last = T.train(cfg)
    assert last.name == "ckpt-0000016"
    return cfg.run_dir


# --------------------------------------------------------------------------- the run folder
def test_a_full_disk_stops_before_a_checkpoint_and_keeps_the_last_one(tiny_data, tmp_path, monkeypatch):
    """No checkpoint is started that cannot fit: the run stops with a clear error, the previous
    checkpoint stays whole, and the same command resumes once there is room."""
    opts = options(tiny_data, tmp_path, "full", **TINY_NET, batch_size=8, max_steps=4, ckpt_every=2, sample_every=0,
                   report_to="none")
    T.train(T.make_config("smoke", **dict(opts, stop_at_step=2)))
    ckpts = tmp_path / "full" / "checkpoints"
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002"]
    real = run_folder.shutil.disk_usage
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(T.DiskSpaceError, match="MB free"):
        T.train(T.make_config("smoke", **opts))
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002"]
    assert T.latest_checkpoint_usable(ckpts).name == "ckpt-0000002"
    monkeypatch.setattr(run_folder.shutil, "disk_usage", real)
    T.train(T.make_config("smoke", **opts))
    assert store.checkpoint_dirs(ckpts)[-1].name == "ckpt-0000004"


def test_a_metrics_file_from_before_the_bands_gets_the_new_header_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,lr,images_per_s,elapsed_s\n10,0.5,1e-3,9.0,1.0\n20,0.4,1e-3,9.0,2.0\n30,0.3")
    header = run_folder.metrics_header(1000)
    run_folder.truncate_metrics(path, 20, header)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == header and [r["step"] for r in rows] == ["10", "20"]
    assert rows[1]["loss"] == "0.4" and rows[1]["loss_t750_1000"] == ""


def test_a_second_writer_of_a_run_is_refused(tiny_data, tmp_path, capsys):
    """Two trainings on one run folder would write the same checkpoints: the second is refused, clearly."""
    opts = options(tiny_data, tmp_path, "busy", **TINY_NET, dropout=0.0, batch_size=8, max_steps=2, sample_every=0)
    run = tmp_path / "busy"
    with T.run_lock(run):  # another process's lock: flock conflicts across open() calls, even in one process
        with pytest.raises(T.RunLockedError, match=r"already writing .*busy"):
            T.train(T.make_config("smoke", **opts))
        import diffusion as cli

        assert cli.main(["train", "--preset", "smoke", *cli_flags(opts)]) == 2
        assert "another training process" in capsys.readouterr().err
        assert not (run / "checkpoints").exists() and not (run / "metrics.csv").exists()  # it touched nothing
    assert T.train(T.make_config("smoke", **opts)).name == "ckpt-0000002"  # free again once released


def test_run_lock_is_released_when_its_holder_is_killed(tmp_path):
    """A crashed trainer never leaves a stale lock (the kernel drops it with the process)."""
    run = tmp_path / "crashed"
    code = ("import sys, time; from training.loop import run_lock; cm = run_lock(__import__('pathlib').Path(sys.argv[1])); "
            "cm.__enter__(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(T.RunLockedError, match=f"pid {proc.pid}"):
            with T.run_lock(run):
                pass
    finally:
        proc.kill()
        proc.wait()
    with T.run_lock(run):
        pass


# --------------------------------------------------------------------------- resume and interruptions
def test_exact_resume_n_plus_n_equals_2n(tiny_data, tmp_path, reference_run):
    opts = options(tiny_data, tmp_path, "halves", ckpt_every=4, keep_checkpoints=10, **REF)
    first = T.train(T.make_config("smoke", **opts, stop_at_step=8))  # same max_steps: same LR schedule
    assert first.name == "ckpt-0000008"
    ckpts = tmp_path / "halves" / "checkpoints"
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000004", "ckpt-0000008"]
    assert_bit_identical(ckpt_tensors(first), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000008"))

    second = T.train(T.make_config("smoke", **opts))  # resume="auto" continues from ckpt-0000008
    assert second.name == "ckpt-0000016"
    assert_bit_identical(ckpt_tensors(second), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000016"))
    rows = metric_rows(tmp_path / "halves")
    assert [int(r["step"]) for r in rows] == list(range(1, 17))
    assert [r["loss"] for r in rows] == [r["loss"] for r in metric_rows(reference_run)]
    cfg = json.loads((second / store.CONFIG_FILE).read_text())
    assert cfg["images_seen"] == 16 * 8


@pytest.mark.slow
def test_ctrl_c_saves_before_exiting(tiny_data, tmp_path):
    opts = options(tiny_data, tmp_path, "ctrlc", **TINY_NET, dropout=0.0, batch_size=8, max_steps=100_000,
                   log_every=1, ckpt_every=100_000, sample_every=0)
    proc = subprocess.Popen([sys.executable, str(ROOT / "diffusion.py"), "train", "--preset", "smoke",
                             *cli_flags(opts)], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "ctrlc"
    wait_for(lambda: (run / "metrics.csv").exists() and len(metric_rows(run)) >= 3, proc, 120, "3 logged steps")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    last_logged = int(metric_rows(run)[-1]["step"])
    last = store.latest_checkpoint(run / "checkpoints")
    assert last is not None and last.name == f"ckpt-{last_logged:07d}", out[-2000:]
    assert T.latest_checkpoint_usable(run / "checkpoints") == last


# Runs `python diffusion.py train` with save_file slowed down at one checkpoint, so the
# SIGKILL deterministically lands in the middle of writing it.
_SLOW_SAVE = """
import os, sys, time
from engine import store as model_store
_save = model_store.save_file
def save_file(tensors, filename, *a, **k):
    _save(tensors, filename, *a, **k)
    if os.environ["KILL_AT"] in filename:
        open(os.environ["KILL_MARK"], "w").close()
        time.sleep(120)
model_store.save_file = save_file
import diffusion as cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_then_resume(tiny_data, tmp_path, reference_run, caplog):
    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    mark = tmp_path / "writing"
    opts = options(tiny_data, tmp_path, "killed", ckpt_every=2, keep_checkpoints=3, **REF)
    env = dict(subprocess_env(), KILL_AT=".tmp-ckpt-0000006-", KILL_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, "train", "--preset", "smoke", *cli_flags(opts)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(mark.exists, proc, 120, "the checkpoint write at step 6")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The half-written step-6 checkpoint never looks complete.
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000002", "ckpt-0000004"]
    assert list(ckpts.glob(".tmp-ckpt-0000006-*"))
    last_logged = int(metric_rows(run)[-1]["step"])
    usable = T.latest_checkpoint_usable(ckpts)
    assert usable.name == "ckpt-0000004"
    assert last_logged - store.checkpoint_step(usable) <= 2  # at most one checkpoint interval lost
    assert_bit_identical(ckpt_tensors(usable), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000004"))

    # Worse damage, as a filesystem without atomic renames or a full disk leaves it:
    # the newest complete-looking checkpoint torn, one with half-written JSON, a stray temp folder.
    weights = ckpts / "ckpt-0000004" / store.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bogus = ckpts / "ckpt-0000005"
    bogus.mkdir()
    (bogus / store.CONFIG_FILE).write_text('{"step": 5, "unet": {')
    for name in (store.WEIGHTS_FILE, store.STATE_FILE):
        (bogus / name).write_bytes(b"")
    (ckpts / ".tmp-ckpt-0000008-12345").mkdir()
    (ckpts / ".tmp-ckpt-0000008-12345" / store.WEIGHTS_FILE).write_bytes(b"\x00" * 100)
    assert T.latest_checkpoint_usable(ckpts).name == "ckpt-0000002"

    # Resume (same command): continues from step 2 and ends exactly where the unbroken run did.
    with caplog.at_level(logging.INFO, logger="train"):
        last = T.train(T.make_config("smoke", **opts))
    assert f"resumed from {ckpts / 'ckpt-0000002'} at step 2" in caplog.text
    assert last.name == "ckpt-0000016"
    assert_bit_identical(ckpt_tensors(last), ckpt_tensors(reference_run / "checkpoints" / "ckpt-0000016"))
    assert not list(ckpts.glob(".tmp-ckpt-*"))  # leftovers cleaned up
    assert len(list(ckpts.glob(".unusable-ckpt-*"))) == 2  # damaged ones set aside, not pruned over good ones
    assert [p.name for p in store.checkpoint_dirs(ckpts)] == ["ckpt-0000012", "ckpt-0000014", "ckpt-0000016"]
    assert [int(r["step"]) for r in metric_rows(run)] == list(range(1, 17))  # lost steps' rows replaced
