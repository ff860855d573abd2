"""Interrupted runs lose nothing: a real ``train.py`` process killed mid-epoch (SIGKILL), or stopped
(SIGTERM, Ctrl-C), resumes with ``ckpt_path=last`` and ends with the epoch count, and for SIGKILL
the metrics, of the run that was never interrupted.

Each test runs ``train.py`` as a user would, in a subprocess with one thread (deterministic CPU
kernels), on synthetic 32 px data sized so that an epoch takes a couple of seconds here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_cli

EPOCHS = 2
RUN = (
    "data=synthetic",
    "data.image_size=32",
    "data.num_train=1088",
    "data.val_size=64",
    "data.num_test=128",
    "data.batch_size=32",  # 32 steps per epoch
    "model.width=0.25",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=4",
    "callbacks.model_summary=null",
)
STEPS_PER_EPOCH = (1088 - 64) // 32
COMPARED = ("test/acc", "test/acc5", "test/loss", "val/acc_best", "epochs")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    paths = (f"hydra.run.dir={run_dir}", f"paths.data_dir={run_dir}/data")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RUN, *paths, *extra],
        cwd=run_dir.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # As in a terminal's foreground job: a shell running us in the background (nohup, CI runners)
        # starts children with SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    return output


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoint_step(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"train.py exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for training to get there"
        time.sleep(0.02)


def step_reached(run_dir: Path, step: int):
    """True once the CSV logger has flushed a row of global step >= ``step`` (a sign of progress that
    appears in the middle of an epoch: the logger flushes at every ``log_every_n_steps``)."""
    def reached() -> bool:
        files = list(run_dir.glob("csv/version_*/metrics.csv"))
        rows = list(csv.DictReader(files[0].read_text().splitlines())) if files else []
        return any(row.get("step", "").isdigit() and int(row["step"]) >= step for row in rows)
    return reached


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start(run_dir))
    return metrics(run_dir)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, "trainer.log_every_n_steps=1", "+logger.csv.flush_logs_every_n_steps=1")
    # Past the first epoch's checkpoint and 10 steps into the second epoch: kill without warning.
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(lambda: last.is_file() and step_reached(run_dir, STEPS_PER_EPOCH + 10)(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    killed_at = checkpoint_step(last)
    assert killed_at % STEPS_PER_EPOCH == 0 and killed_at < EPOCHS * STEPS_PER_EPOCH  # an epoch's end, not the last
    assert not list((run_dir / "checkpoints").glob("*.tmp*"))  # no half-written file left by the kill

    finish(start(run_dir, "ckpt_path=last"))
    resumed = metrics(run_dir)
    assert checkpoint_step(last) == EPOCHS * STEPS_PER_EPOCH
    assert {k: resumed[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}
    assert uninterrupted["epochs"] == EPOCHS


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_that_resumes_to_the_full_epoch_count(signum, tmp_path):
    """Stopped in the first epoch, before any epoch-end checkpoint exists: nothing would be left."""
    run_dir = tmp_path / "run"
    proc = start(run_dir, "trainer.log_every_n_steps=1", "+logger.csv.flush_logs_every_n_steps=1")
    wait_for(step_reached(run_dir, 12), proc)  # mid first epoch: no checkpoint exists yet
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file(), output[-3000:]
    stopped_at = checkpoint_step(last)
    assert 12 <= stopped_at < STEPS_PER_EPOCH  # saved where it stopped, inside epoch 1
    assert "resume with ckpt_path=last" in output
    assert not (run_dir / "metrics.json").exists()
    if signum == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM  # what a scheduler expects of a job it terminated
        # Ctrl-C leaves the same checkpoint through the same callback: one resume shows it suffices.
        began = time.monotonic()
        output = finish(start(run_dir, "ckpt_path=last"))
        wall = time.monotonic() - began
        assert checkpoint_step(last) == EPOCHS * STEPS_PER_EPOCH
        assert metrics(run_dir)["epochs"] == EPOCHS
        # The progress lines time the resumed epoch from this process's start, not from zero
        # (which printed the machine's uptime: "epoch 2/30 | ... | 12613.0 s | 3 img/s").
        lines = re.findall(r"epoch (\d)/2 \| .* \| (\d+\.\d) s \| (\d+) img/s", output)
        assert [epoch for epoch, _, _ in lines] == ["1", "2"], output[-3000:]
        assert all(0 < float(seconds) < wall for _, seconds, _ in lines), (lines, wall)
        assert all(int(img_s) > 0 for _, _, img_s in lines), (lines, wall)  # images over uptime printed 0


def test_rerunning_an_interrupted_multirun_skips_the_jobs_that_finished(tmp_path):
    sweep = ("-m", *TINY, "model.width=0.25,0.5", "hydra.sweep.dir=sweep", "ckpt_path=last")
    first = run_cli(*sweep, cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    done, interrupted = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    # Job 1 as a kill during its test would leave it: checkpoints, but no metrics.json.
    (interrupted / "metrics.json").unlink()
    stamp = (done / "metrics.json").stat().st_mtime_ns, (done / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    again = run_cli(*sweep, cwd=tmp_path)
    assert again.returncode == 0, again.output[-3000:]
    assert f"skipped: {done.resolve()} already holds this run" in again.output
    assert ((done / "metrics.json").stat().st_mtime_ns, (done / "checkpoints" / "last.ckpt").stat().st_mtime_ns) == stamp
    assert json.loads((interrupted / "metrics.json").read_text())["width"] == 0.5  # this one ran again
