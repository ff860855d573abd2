"""Robustness: hostile checkpoints, bad input through the real entry points, atomic checkpoint
writes, and the non-finite-loss guard.

The entry-point tests run ``python train.py`` / ``python eval.py`` as subprocesses (a few seconds of
start-up each, so only the essential cases) and check what a user sees: the exit status, one line
naming the bad key and value, and that no result file or checkpoint was written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dsnet.checkpoint_io import AtomicCheckpointIO
from dsnet.guards import NonFiniteLossError, NonFiniteLossGuard, TrainInputError, check_checkpoint, validate
from tests.conftest import ROOT, TINY, compose_train

HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"


# --- helpers --------------------------------------------------------------------------------------

def run_entry(script: str, *overrides: str, run_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python <script> *overrides`` with every output path inside ``run_dir``."""
    paths = (f"hydra.run.dir={run_dir}/out", f"paths.log_dir={run_dir}", f"paths.data_dir={run_dir}/data")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *paths, *overrides],
        cwd=run_dir, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=timeout,
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines that report the error: everything but warnings, Hydra's hint and blanks."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and HYDRA_HINT not in line and "Warning" not in line and not line.startswith("  warnings.")]


def assert_nothing_written(run_dir: Path) -> None:
    written = [p.relative_to(run_dir) for pattern in ("**/metrics.json", "**/results.json", "**/*.ckpt")
               for p in run_dir.glob(pattern)]
    assert written == [], f"a failed run wrote {written}"


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A Lightning-shaped checkpoint that creates a marker file when unpickled without weights_only."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "PWNED"
    ckpt = root / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(2, 2)}, "hyper_parameters": _RunsCode(marker)}, ckpt)
    # Proof that the file is live: the unsafe loader would run it.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return ckpt, marker


# --- 1. checkpoints are data, not code --------------------------------------------------------------

def test_eval_refuses_a_checkpoint_that_runs_code(hostile_ckpt, tmp_path):
    ckpt, marker = hostile_ckpt
    (ckpt.parent.parent / "config.yaml").write_text("model: {}\ndata: {}\n")  # so only the weights can stop it
    proc = run_entry("eval.py", f"ckpt_path={ckpt}", "data=synthetic", "data.image_size=16", run_dir=tmp_path)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("eval.py: error:"), proc.stderr
    assert "weights only load failed" in lines[0].lower() and str(ckpt) in lines[0]
    assert not marker.exists()
    assert_nothing_written(tmp_path)


@pytest.fixture(scope="module")
def train_resume_hostile(hostile_ckpt, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume")
    return run_dir, run_entry("train.py", *TINY, f"ckpt_path={hostile_ckpt[0]}", run_dir=run_dir)


def test_train_resume_refuses_a_checkpoint_that_runs_code(hostile_ckpt, train_resume_hostile):
    run_dir, proc = train_resume_hostile
    assert proc.returncode != 0
    assert "weights only load failed" in proc.stderr.lower()
    assert not hostile_ckpt[1].exists()
    assert_nothing_written(run_dir)


def test_train_resume_refusal_is_one_line(train_resume_hostile):
    _, proc = train_resume_hostile
    lines = error_lines(proc)
    assert len(lines) == 1 and "ckpt_path=" in lines[0] and "weights_only=True" in lines[0], proc.stderr


def test_check_checkpoint_refuses_code_and_accepts_tensors(hostile_ckpt, tmp_path):
    ckpt, marker = hostile_ckpt
    with pytest.raises(TrainInputError, match=r"refused by torch.load\(weights_only=True\)"):
        check_checkpoint(ckpt)
    assert not marker.exists()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, good)
    check_checkpoint(good)  # no exception
    with pytest.raises(TrainInputError, match="no such file"):
        check_checkpoint(tmp_path / "missing.ckpt")


# --- 2. bad input through the entry points ----------------------------------------------------------

# (overrides, what the one error line must contain); all fail before any training.
BAD_TRAIN_INPUT = [
    (("model.arch=nope",), ["'nope'", "mobilenet_v1"]),
    (("model.conv=nope",), ["'nope'", "dsconv"]),
    (("model.width=abc",), ["width=", "abc"]),
    (("model.width=0",), ["width=0"]),
    (("data.batch_size=0",), ["batch_size", "0"]),
    (("model=group", "model.groups=3"), ["groups=3", "features.0"]),
]


@pytest.mark.parametrize("overrides,expected", BAD_TRAIN_INPUT, ids=[" ".join(o) for o, _ in BAD_TRAIN_INPUT])
def test_train_rejects_bad_model_and_data_settings(overrides, expected, tmp_path):
    proc = run_entry("train.py", *TINY, *overrides, run_dir=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    # Hydra reports an instantiation error as "<Type>Error('<message>')" on a line of its own.
    message = next((line for line in error_lines(proc) if re.match(r"[A-Za-z]*Error[(:]", line)), "")
    for fragment in expected:
        assert fragment in message, proc.stderr
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("group", ["data", "optim", "logger"])
def test_train_rejects_an_unknown_config_group_option(group, tmp_path):
    proc = run_entry("train.py", *TINY, f"{group}=nope", run_dir=tmp_path)
    assert proc.returncode != 0
    assert f"Could not find '{group}/nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path)


def test_train_rejects_zero_learning_rate(tmp_path):
    proc = run_entry("train.py", *TINY, "optim.optimizer.lr=0", run_dir=tmp_path)
    assert proc.returncode != 0
    assert error_lines(proc) == [] or "optim.optimizer.lr=0" in error_lines(proc)[-1], proc.stderr
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (("trainer.max_epochs=0",), r"trainer.max_epochs=0 must be an integer >= 1"),
        (("trainer.max_epochs=-1",), r"trainer.max_epochs=-1 must be"),
        (("optim.optimizer.lr=0",), r"optim.optimizer.lr=0 must be a finite number > 0"),
        (("optim.optimizer.lr=-0.1",), r"optim.optimizer.lr=-0.1 must be"),
        (("trainer.accelerator=cpu", "trainer.devices=64"), r"trainer.devices=64 but this machine has \d+ CPU cores"),
        (("float32_matmul_precision=low",), r"float32_matmul_precision='low' must be one of highest, high, medium"),
    ],
)
def test_validate_names_the_key_and_value(overrides, match, tmp_path):
    cfg = compose_train(*overrides, run_dir=tmp_path)
    with pytest.raises(TrainInputError, match=match):
        validate(cfg)


def test_validate_accepts_the_tiny_config(tmp_path):
    validate(compose_train(run_dir=tmp_path))  # no exception


# --- 3. atomic checkpoint writes ------------------------------------------------------------------

def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.full((4,), 1.0)}, "epoch": 1}, path)

    class Unpicklable:  # torch.save fails on it half-way through writing the archive
        def __reduce__(self):
            raise RuntimeError("disk full")

    big = {"state_dict": {"w": torch.full((4,), 2.0), "x": torch.zeros(100_000)}, "epoch": 2, "z": Unpicklable()}
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint(big, path)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["epoch"] == 1 and loaded["state_dict"]["w"].tolist() == [1.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind

    # A successful save puts a new file under the name instead of rewriting the old one in place
    # (which is what a kill mid-write would truncate): a hard link to the old file keeps epoch 1.
    os.link(path, tmp_path / "old.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.full((4,), 3.0)}, "epoch": 3}, path)
    assert io.load_checkpoint(path, weights_only=True)["epoch"] == 3
    assert io.load_checkpoint(tmp_path / "old.ckpt", weights_only=True)["epoch"] == 1


# --- 4. non-finite loss guard ---------------------------------------------------------------------

class _LossTurnsNaN(L.LightningModule):
    """A linear classifier whose loss is multiplied by NaN from optimizer step ``nan_step`` on."""

    def __init__(self, nan_step: int) -> None:
        super().__init__()
        self.nan_step = nan_step
        self.fc = nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.fc(x), y)
        return loss * float("nan") if self.global_step >= self.nan_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_guard_stops_at_the_first_nan_loss_and_names_the_last_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}", every_n_train_steps=1,
                                                  save_top_k=-1, auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[ckpt_cb, NonFiniteLossGuard()])
    module = _LossTurnsNaN(nan_step=3)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(module, DataLoader(data, batch_size=8))
    message = str(info.value)
    assert "training loss is nan at global step 3" in message
    assert f"last good checkpoint: {tmp_path / 'step3.ckpt'}" in message  # written after step 3's update
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN never reached the weights
    state = torch.load(tmp_path / "step3.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_guard_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="every_n_steps=0"):
        NonFiniteLossGuard(every_n_steps=0)


def write_bad_data(kind: str, data_dir: Path) -> None:
    """Data directories in the wrong state, as users get them wrong."""
    if kind == "cifar_empty":
        (data_dir / "cifar-10-batches-py").mkdir(parents=True)
    elif kind == "cifar_garbage":  # every file there, none a CIFAR batch
        folder = data_dir / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(b"not a pickle")
    elif kind == "fashion_garbage":  # the idx names, but not gzip files
        data_dir.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                     "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (data_dir / name).write_bytes(b"garbage")
    elif kind == "imagenet_two_classes":
        from PIL import Image
        for split, cls in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")):
            (data_dir / "imagenet" / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 40)).save(data_dir / "imagenet" / split / cls / "0.png")


SMALL_REAL = ("data.image_size=16", "model.width=0.25", "trainer.max_epochs=1", "trainer.accelerator=cpu")
# (overrides, data to write first, what the one line "train.py: error: ..." must contain)
BAD_RUN_INPUT = [
    ((*TINY, "data.image_size=8"), None, "data.image_size=8 is too small for this MobileNetV1, which downsamples by 16: use at least 16"),
    ((*TINY, "data.image_size=0"), None, "model.small_input: image_size=0 must be a positive integer (pixels)"),
    ((*TINY, "data.image_size=abc"), None, "model.small_input: image_size='abc' must be a positive integer (pixels)"),
    ((*TINY, "trainer.max_epochs=0"), None, "trainer.max_epochs=0 must be an integer >= 1"),
    ((*TINY, "trainer.devices=64"), None, "trainer.devices=64 but this machine has"),
    ((*TINY, "optim.optimizer.lr=abc"), None, "optim.optimizer.lr='abc' must be a finite number > 0"),
    (("data=cifar10", "data.download=false", *SMALL_REAL), None, "cifar-10-batches-py; put the extracted"),
    (("data=cifar10", "data.download=false", *SMALL_REAL), "cifar_empty", "not found in"),
    (("data=cifar10", "data.download=false", *SMALL_REAL), "cifar_garbage", "data_batch_1 is not a CIFAR python batch"),
    (("data=fashion_mnist", "data.download=false", "data.data_dir=${paths.data_dir}", *SMALL_REAL), "fashion_garbage",
     "is not a valid gzip file"),
    (("data=imagenet_subset", "data.classes=[a,zzz]", "data.num_workers=0", *SMALL_REAL), "imagenet_two_classes",
     "classes ['zzz'] not found in"),
]


@pytest.mark.parametrize("overrides,bad_data,expected", BAD_RUN_INPUT,
                         ids=[f"{bad or ''} {' '.join(o[-5:] if o[0].startswith('data=s') else o[:2])}"
                              for o, bad, _ in BAD_RUN_INPUT])
def test_train_refuses_bad_input_in_one_line_before_training(overrides, bad_data, expected, tmp_path):
    if bad_data:
        write_bad_data(bad_data, tmp_path / "data")
    proc = run_entry("train.py", *overrides, run_dir=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and expected in lines[0], proc.stderr
    assert "Epoch 0" not in proc.stdout  # refused before training started
    assert_nothing_written(tmp_path)


def test_eval_refuses_an_input_too_small_for_the_network(tmp_path):
    proc = run_entry("eval.py", "model=dsconv", "data=synthetic", "data.image_size=8", run_dir=tmp_path)
    assert proc.returncode == 1
    assert error_lines(proc) == [
        "eval.py: error: data.image_size=8 is too small for this MobileNetV1, which downsamples by 16: use at least 16"
    ], proc.stderr
    assert_nothing_written(tmp_path)
