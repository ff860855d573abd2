"""Robustness: hostile checkpoints, bad input through the real entry points, atomic checkpoint
writes, and the non-finite-loss guard.

The entry-point tests run ``python train.py`` / ``python eval.py`` as subprocesses (a few seconds of
start-up each, so only the essential cases) and check what a user sees: the exit status, one line
naming the bad key and value, and that no result file or checkpoint was written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dsnet.checkpoint_io import AtomicCheckpointIO
from dsnet.guards import NonFiniteLossError, NonFiniteLossGuard, TrainInputError, check_checkpoint, validate
import entrypoints
from conftest import TINY, compose_train
from entrypoints import Result

# --- helpers --------------------------------------------------------------------------------------

def run_entry(script: str, *overrides: str, run_dir: Path, env: dict | None = None) -> Result:
    """``python <script> *overrides`` with every output path inside ``run_dir``."""
    paths = (f"hydra.run.dir={run_dir}/out", f"paths.log_dir={run_dir}", f"paths.data_dir={run_dir}/data")
    return entrypoints.run(script, *paths, *overrides, cwd=run_dir, env=env)


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
    result = run_entry("eval.py", f"ckpt_path={ckpt}", "data=synthetic", "data.image_size=16", run_dir=tmp_path)
    assert result.returncode == 1
    assert len(result.lines) == 1 and result.lines[0].startswith("eval.py: error:"), result.output
    assert "weights only load failed" in result.lines[0].lower() and str(ckpt) in result.lines[0]
    assert not marker.exists()
    assert_nothing_written(tmp_path)


def test_train_resume_refuses_a_checkpoint_that_runs_code_in_one_line(hostile_ckpt, tmp_path):
    result = run_entry("train.py", *TINY, f"ckpt_path={hostile_ckpt[0]}", run_dir=tmp_path)
    assert result.returncode == 1
    assert len(result.lines) == 1, result.output
    line = result.lines[0]
    assert line.startswith("train.py: error: ckpt_path=") and "weights_only=True" in line, line
    assert "weights only load failed" in line.lower()
    assert not hostile_ckpt[1].exists()
    assert_nothing_written(tmp_path)


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
# Each case is what a user types; what they must see is exactly one line on the terminal (stdout and
# stderr together), exit status 1, and no result file or checkpoint. Every case fails before
# training starts. (args, data to write first, the whole line as a regular expression)

BAD_TRAIN_INPUT = [
    # settings refused while Hydra instantiates the model, data module, trainer or callbacks
    (("model.width=-1",), None, r"model\.width=-1 must be a finite positive number"),
    (("model.width=abc",), None, r"model\.width='abc' must be a finite positive number"),
    (("model.width=0",), None, r"model\.width=0 must be a finite positive number"),
    (("model.width=nan",), None, r"model\.width=nan must be a finite positive number"),
    (("model.width=inf",), None, r"model\.width=inf must be a finite positive number"),
    (("model.conv=nope",), None, r"model: unknown conv type 'nope'; expected one of standard, dsconv, group.*"),
    (("model.arch=nope",), None, r"model: unknown arch 'nope'; expected one of .*mobilenet_v1.*"),
    (("model.stage_conv=[standard,dsconv]",), None, r"model\.stage_conv=\['standard', 'dsconv'\] has 2 entries; "
                                                    r"MobileNetV1 has 5 stages: give one conv type per stage"),
    (("model.stage_conv=[standard,standard,sep,dsconv,dsconv]",), None,
     r"model: stage_conv\[2\]='sep' is not available in MobileNetV1; expected one of standard, dsconv, group, "
     r"repdsconv, pconv"),
    (("+model.widht=0.5",), None, r"model: unknown option\(s\) widht for arch 'mobilenet_v1'; expected any of .*"),
    (("model=group", "model.groups=3"), None,
     r"model: features\.0 \(8 -> 16 channels\): groups=3 must divide both in_chs=8 and out_chs=8"),
    (("data.batch_size=0",), None, r"data: batch_size must be an int >= 1, got 0"),
    (("data.batch_size=0.5",), None, r"data: batch_size must be an int >= 1, got 0\.5"),
    (("data.num_train=0",), None, r"data: num_train must be an int >= 2, got 0"),
    (("data.val_size=192",), None, r"data \(SyntheticDataModule\): val_size=192 leaves 192 of 192 training items "
                                  r"for validation; allowed: 1\.\.191 items .*"),
    (("trainer.precision=bad",), None, r"trainer: Precision 'bad' is invalid\. Allowed precision values: .*"),
    (("trainer.accelerator=tpu",), None, r"trainer: Requirement 'torch_xla.*' not met.*"),
    (("callbacks=ema", "callbacks.ema.decay=2"), None, r"callbacks\.ema\.decay=2 must be a number in \[0, 1\)"),
    # the command line itself (Hydra composing it)
    (("data=nope",), None, r"In 'train': Could not find 'data/nope'; the options are cifar10, .*synthetic.*"),
    (("optim=nope",), None, r"In 'train': Could not find 'optim/nope'; the options are adamw, rmsprop, sgd.*"),
    (("logger=nope",), None, r"In 'train': Could not find 'logger/nope'; the options are csv, tensorboard, wandb.*"),
    (("model.nokey=1",), None, r"Could not override 'model\.nokey'\. To append to your config use \+model\.nokey=1"),
    # dsnet.guards.validate and the checks before training
    (("data.image_size=8",), None, r"data\.image_size=8 is too small for this MobileNetV1, which downsamples by 16: "
                                   r"use at least 16"),
    (("data.image_size=0",), None, r"model\.small_input: image_size=0 must be a positive integer \(pixels\)"),
    (("data.image_size=abc",), None, r"model\.small_input: image_size='abc' must be a positive integer \(pixels\)"),
    (("data.image_size=16.5",), None, r"model\.small_input: image_size=16\.5 must be a positive integer \(pixels\)"),
    (("trainer.max_epochs=0",), None, r"trainer\.max_epochs=0 must be an integer >= 1 \(or set trainer\.max_steps\)"),
    (("trainer.max_epochs=1.5",), None, r"trainer\.max_epochs=1\.5 must be an integer >= 1 \(or set trainer\.max_steps\)"),
    (("trainer.devices=64",), None, r"trainer\.devices=64 but this machine has \d+ CPU cores \(trainer\.accelerator=cpu\); "
                                    r"use at most \d+"),
    (("optim.optimizer.lr=abc",), None, r"optim\.optimizer\.lr='abc' must be a finite number > 0"),
    (("optim.optimizer.lr=0",), None, r"optim\.optimizer\.lr=0 must be a finite number > 0"),
    (("optim.optimizer.lr=nan",), None, r"optim\.optimizer\.lr=nan must be a finite number > 0"),
    (("ckpt_path=@DIR",), None, r"ckpt_path='.*': no such file"),
]
# Real data sets, wrongly laid out (not the tiny synthetic config).
SMALL_REAL = ("data.image_size=16", "model.width=0.25", "trainer.max_epochs=1", "trainer.accelerator=cpu")
BAD_DATA_INPUT = [
    (("data=cifar10", "data.download=false", *SMALL_REAL), None, r"data \(CIFAR10DataModule\): .*cifar-10-batches-py; "
                                                                 r"put the extracted.*"),
    (("data=cifar10", "data.download=false", *SMALL_REAL), "cifar_empty", r"data \(CIFAR10DataModule\): .*not found in.*"),
    (("data=cifar10", "data.download=false", *SMALL_REAL), "cifar_garbage",
     r"data \(CIFAR10DataModule\): .*data_batch_1 is not a CIFAR python batch.*"),
    (("data=fashion_mnist", "data.download=false", "data.data_dir=${paths.data_dir}", *SMALL_REAL), "fashion_garbage",
     r"data \(FashionMNISTDataModule\): .*is not a valid gzip file.*"),
    (("data=imagenet_subset", "data.classes=[a,zzz]", "data.num_workers=0", *SMALL_REAL), "imagenet_two_classes",
     r".*classes \['zzz'\] not found in.*"),
]
BAD_EVAL_INPUT = [
    (("model=dsconv", "data=synthetic", "data.image_size=8"), None,
     r"data\.image_size=8 is too small for this MobileNetV1, which downsamples by 16: use at least 16"),
    (("ckpt_path=@DIR",), None, r"ckpt_path='.*': not a file \(.*\); give a \.ckpt inside <run_dir>/checkpoints/"),
    (("data=synthetic", "data.image_size=16", "latency.num_threads=0"), None,
     r"latency\.num_threads=0 must be a positive integer, or null for all cores"),
    (("data=synthetic", "data.image_size=16", "latency.batch_size=0"), None, r"latency\.batch_size=0 must be a positive integer"),
    (("data=synthetic", "data.image_size=16", "latency.precision=fp8"), None,
     r"latency\.precision='fp8'; expected one of fp32, bf16, fp16"),
    (("data=synthetic", "data.image_size=16", "latency.device=cuda"), None,
     r"latency\.device='cuda' but no CUDA device is available; use device=cpu"),
    (("data=synthetic", "data.image_size=16", "latency.rounds=0"), None, r"latency\.rounds=0 must be a positive integer"),
    (("data=synthetic", "data.image_size=16", "latency.min_run_time=-1"), None,
     r"latency\.min_run_time=-1 must be a finite number of seconds > 0"),
    (("data=synthetic", "data.image_size=16", "model.width=inf"), None, r"model\.width=inf must be a finite positive number"),
]


def run_bad(script: str, args: tuple[str, ...], bad_data: str | None, tmp_path: Path) -> Result:
    if bad_data:
        write_bad_data(bad_data, tmp_path / "data")
    (tmp_path / "a_directory").mkdir()
    args = tuple(a.replace("@DIR", str(tmp_path / "a_directory")) for a in args)
    tiny = TINY if script == "train.py" and args not in [a for a, *_ in BAD_DATA_INPUT] else ()
    return run_entry(script, *tiny, *args, run_dir=tmp_path)


def assert_one_line_error(result: Result, prog: str, pattern: str, run_dir: Path) -> None:
    assert result.returncode == 1, result.output
    assert len(result.lines) == 1, result.output  # the whole terminal: stdout and stderr together
    assert re.fullmatch(f"{re.escape(prog)}: error: {pattern}", result.lines[0]), result.lines[0]
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("args,bad_data,pattern", BAD_TRAIN_INPUT + BAD_DATA_INPUT,
                         ids=[f"{bad or ''} {' '.join(a)}".strip() for a, bad, _ in BAD_TRAIN_INPUT + BAD_DATA_INPUT])
def test_train_refuses_bad_input_in_one_line_before_training(args, bad_data, pattern, tmp_path):
    assert_one_line_error(run_bad("train.py", args, bad_data, tmp_path), "train.py", pattern, tmp_path)


@pytest.mark.parametrize("args,bad_data,pattern", BAD_EVAL_INPUT, ids=[" ".join(a) for a, _, _ in BAD_EVAL_INPUT])
def test_eval_refuses_bad_input_in_one_line(args, bad_data, pattern, tmp_path):
    assert_one_line_error(run_bad("eval.py", args, bad_data, tmp_path), "eval.py", pattern, tmp_path)


def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    result = run_entry("train.py", *TINY, "model.width=-1", run_dir=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.output
    assert "ValueError: width=-1 must be a finite positive number" in result.output


def test_a_failed_run_keeps_its_traceback_in_error_txt(tmp_path):
    result = run_entry("train.py", *TINY, "model.width=-1", run_dir=tmp_path)
    assert len(result.lines) == 1
    assert "ValueError: width=-1 must be a finite positive number" in (tmp_path / "out" / "error.txt").read_text()


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


def test_every_python_file_compiles_without_a_warning():
    """Python 3.12 prints a SyntaxWarning for an invalid escape like "\\s" in a plain string, on every
    fresh import (dsnet/guards.py's docstring did, on the GPU machine's 3.12); 3.11 is silent."""
    import warnings

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("*.py"), *root.glob("dsnet/**/*.py"), *root.glob("scripts/*.py"), *root.glob("tests/*.py")]
    assert len(files) > 60
    warned = []
    for path in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        warned += [f"{path.relative_to(root)}:{w.lineno}: {w.message}" for w in caught]
    assert warned == []
