"""Progress as a person sees it: plain lines when stdout is no terminal (nohup, SLURM, CI, ``| tee``),
the Rich bar on a terminal (a real pseudo-terminal here)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

import entrypoints
from conftest import ROOT, TINY

NUMBER = r"\d+\.\d{4}"
EPOCH_LINE = rf"epoch (\d)/2 \| train loss {NUMBER} acc {NUMBER} \| val acc {NUMBER} \| \d+\.\d s \| \d+ img/s"
STEP_LINE = rf"epoch (\d)/2 step (\d)/4 \| loss {NUMBER} \| \d+ img/s"


def test_without_a_terminal_each_epoch_and_every_n_steps_is_one_log_line(tmp_path):
    # TINY: 128 training images in batches of 32, so 4 steps per epoch; a step line every 2 steps.
    result = entrypoints.run("train.py", *TINY, "trainer.max_epochs=2", "callbacks.progress_bar.every_n_steps=2",
                             "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    epochs = [re.search(EPOCH_LINE, line) for line in result.lines]
    steps = [re.search(STEP_LINE, line) for line in result.lines]
    assert [m.group(1) for m in epochs if m] == ["1", "2"]
    assert [(m.group(1), m.group(2)) for m in steps if m] == [("1", "2"), ("1", "4"), ("2", "2"), ("2", "4")]
    assert not re.search(r"Epoch \d+/\d+", result.output)  # no Rich bar drawn into a file
    log = (tmp_path / "run" / "train.log").read_text()  # Python logging: the lines land in the run's log too
    assert len(re.findall(EPOCH_LINE, log)) == 2 and len(re.findall(STEP_LINE, log)) == 4


def terminal_output(*args: str, cwd) -> tuple[int, str]:
    """``python train.py *args`` with a pseudo-terminal as its stdout and stderr; exit status and screen text."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_on_a_terminal_the_rich_bar_is_drawn_instead(tmp_path):
    code, screen = terminal_output(*TINY, "trainer.max_epochs=2", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, screen[-3000:]
    assert re.search(r"Epoch 1/1 .*━.* 4/4", screen)  # Rich's bar, at the last step of the last epoch
    assert not re.search(EPOCH_LINE, screen)
