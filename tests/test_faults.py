"""Faults from files and from the machine: a poisoned data batch, damaged and foreign checkpoints, a
full disk, a tracker without credentials, unreadable or garbled files in data and run directories,
and SIGKILL at random moments of a run that is then resumed.

Each test does what a user's command would meet (``train.py`` / ``eval.py`` run as processes, real
files, real file systems: the full and read-only disks are tmpfs mounts, so those tests need root)
and checks what the user sees: the exit status, the one line on the terminal, the files left, and
for hostile files that their payload never ran (the file it would have created does not exist).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsnet.checkpoint_io import AtomicCheckpointIO
from dsnet.data.cifar import read_cifar_batch
from dsnet.data.safe_pickle import UnsafePickleError, load_data_pickle
from dsnet.results import NoSpaceError, write_json_atomic
import entrypoints
from conftest import TINY, write_image_tree
from test_robustness import assert_nothing_written, run_entry

FAST_LATENCY = ("latency.rounds=1", "latency.min_run_time=0.01", "latency.throughput_batch_size=2",
                "latency.contention.retries=0", "latency.contention.probe_s=0")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile data file or checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_line(result, prog: str = "train.py") -> str:
    """The single line a failed run printed, after checking there is exactly one and exit status 1."""
    assert result.returncode == 1, result.output[-3000:]
    assert len(result.lines) == 1, result.output[-3000:]
    assert result.lines[0].startswith(f"{prog}: error: "), result.lines[0]
    return result.lines[0].removeprefix(f"{prog}: error: ")


def last_line(result, prog: str = "train.py") -> str:
    """The error line a run that failed while training printed last, after its progress; no traceback."""
    assert result.returncode == 1, result.output[-3000:]
    assert "Traceback" not in result.output and result.lines[-1].startswith(f"{prog}: error: "), result.output[-3000:]
    return result.lines[-1].removeprefix(f"{prog}: error: ")


@contextmanager
def tmpfs(path: Path, *options: str):
    """A tmpfs mounted at ``path`` for the duration (``size=...``, ``ro``)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- 1. data files are data: the CIFAR unpickler ---------------------------------------------------

def cifar_batch(n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": "training batch 1 of 5", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(x) for x in rng.integers(0, 10, n)], "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar10_layout(folder: Path, n: int = 16) -> None:
    """``cifar-10-batches-py/`` in ``folder``'s place: five train batches and the test batch of ``n``
    random images each, as the official files pickle them."""
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(n, seed=i), protocol=4))


def numpy1_pickle(obj) -> bytes:
    """``obj`` pickled as the official (numpy 1, Python 2) CIFAR files are: protocol 2, numpy.core.multiarray."""
    data = pickle.dumps(obj, protocol=2)
    assert b"numpy._core.multiarray" in data  # numpy 2 writes this; numpy 1 wrote numpy.core.multiarray
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@pytest.mark.parametrize("writer", ["numpy2-protocol4", "numpy1-protocol2", "protocol5"])
def test_the_safe_unpickler_reads_cifar_batches_as_each_numpy_writes_them(writer, tmp_path):
    batch = cifar_batch()
    batch["labels"][0] = np.int64(7)  # a numpy scalar label: numpy's scalar rebuild function
    data = {"numpy2-protocol4": lambda: pickle.dumps(batch, protocol=4),  # shared/data/cifar10_batches.py
            "numpy1-protocol2": lambda: numpy1_pickle(batch),
            "protocol5": lambda: pickle.dumps(batch, protocol=5)}[writer]()
    (tmp_path / "data_batch_1").write_bytes(data)
    images, labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert images.shape == (4, 3, 32, 32) and np.array_equal(images.reshape(4, -1), batch["data"])
    assert labels.tolist() == [int(x) for x in batch["labels"]] and labels[0] == 7


@pytest.mark.parametrize("payload,refused", [
    ((os.system, ("true",)), "posix.system"),
    ((eval, ("1",)), "__builtin__.eval"),  # protocol 2 writes Python 2 names
    ((np.load, ("x.npy",)), "numpy.load"),  # numpy, but not an array
])
def test_the_safe_unpickler_refuses_every_other_global(payload, refused, tmp_path):
    class Reduce:
        def __reduce__(self):
            return payload
    (tmp_path / "batch").write_bytes(pickle.dumps({"data": Reduce()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"^refused to load the global {re.escape(refused)}; admitted: "):
        load_data_pickle(tmp_path / "batch")


def test_bytes_are_admitted_only_as_latin1_text(tmp_path):
    (tmp_path / "b").write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UnsafePickleError, match=r"only latin1 text is admitted"):
        load_data_pickle(tmp_path / "b")


@pytest.fixture
def poisoned_cifar(tmp_path) -> tuple[Path, Path]:
    """A CIFAR-10 folder whose data_batch_1 runs ``touch PWNED`` when unpickled and is otherwise a valid
    batch (its labels too): ``pickle.load`` would run the payload and train on, unnoticed."""
    folder, marker = tmp_path / "data" / "cifar-10-batches-py", tmp_path / "PWNED"
    write_cifar10_layout(folder)
    poisoned = {**cifar_batch(16), "batch_label": _Payload(marker)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(poisoned, protocol=2))
    with open(folder / "data_batch_1", "rb") as f:
        assert len(pickle.load(f, encoding="latin1")["labels"]) == 16  # the unsafe loader: valid batch...
    assert marker.exists()  # ... and the payload ran
    marker.unlink()
    return folder, marker


def test_a_poisoned_cifar_batch_is_refused_in_one_line_and_its_payload_never_runs(poisoned_cifar, tmp_path):
    folder, marker = poisoned_cifar
    result = run_entry("train.py", "data=cifar10", "data.download=false", "data.image_size=16", "model.width=0.25",
                       "trainer.max_epochs=1", "trainer.accelerator=cpu", run_dir=tmp_path)
    assert one_line(result) == (f"data (CIFAR10DataModule): {folder}/data_batch_1: refused to load the global "
                                f"posix.system; admitted: dicts, lists, tuples, strings, bytes, numbers and numpy arrays")
    assert not marker.exists()
    assert_nothing_written(tmp_path)


# --- 2. damaged and foreign checkpoints --------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny width-0.25 run directory (config.yaml, checkpoints/{best-*,last}.ckpt)."""
    root = tmp_path_factory.mktemp("finished")
    result = run_entry("train.py", *TINY, "test=false", run_dir=root)
    assert result.returncode == 0, result.output[-3000:]
    return root / "out"


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "out"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "metrics.json").unlink()  # an unfinished run, so that ckpt_path=last resumes it
    return run_dir


def resume(tmp_path: Path, *overrides: str):
    return run_entry("train.py", *TINY, "test=false", "trainer.max_epochs=2", "ckpt_path=last", *overrides,
                     run_dir=tmp_path)


@pytest.mark.parametrize("damage", ["half", "empty"])
def test_a_damaged_last_checkpoint_is_named_with_what_to_resume_from(damage, finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    (best,) = (run_dir / "checkpoints").glob("best*.ckpt")
    reason = {"half": "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory",
              "empty": "an empty file"}[damage]
    line = one_line(resume(tmp_path))
    assert re.fullmatch(rf"ckpt_path=last: {re.escape(str(last))} is damaged, truncated or not a PyTorch checkpoint "
                        rf"\({re.escape(reason)}\); resume from ckpt_path={re.escape(str(best))}, or start again without ckpt_path",
                        line), line
    assert last.read_bytes() == (data[: len(data) // 2] if damage == "half" else b"")  # left as it was
    assert not (run_dir / "metrics.json").exists()


def test_a_last_checkpoint_with_a_payload_is_refused_in_one_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, run_dir / "checkpoints" / "last.ckpt")
    line = one_line(resume(tmp_path))
    assert line.startswith("ckpt_path=last: refused by torch.load(weights_only=True), not loaded: UnpicklingError: "
                           "Weights only load failed"), line
    assert not marker.exists()


def test_a_checkpoint_of_another_width_names_the_setting_before_load_state_dict(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    line = one_line(resume(tmp_path, "model.width=0.5"))
    assert line == (f"ckpt_path=last: {run_dir}/checkpoints/last.ckpt holds another network than this run's: "
                    f"model.width: checkpoint 0.25, this run 0.5; resume with the checkpoint's settings, "
                    f"or start a new run directory")


def test_eval_says_which_model_settings_the_checkpoint_overruled(finished_run, tmp_path):
    result = run_entry("eval.py", f"ckpt_path={finished_run}/checkpoints/last.ckpt", "model.width=0.5", "model=conv",
                       "data=synthetic", "data.image_size=16", *FAST_LATENCY, run_dir=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    notes = [line for line in result.lines if "ignored" in line]
    assert len(notes) == 1, result.output
    assert notes[0].endswith("ignored model.width=0.5 model=conv: the checkpoint decides the network "
                             "(model.arch=mobilenet_v1, model.conv=dsconv, model.width=0.25, model.num_classes=10, "
                             "model.in_chans=3, model.small_input=True, model.act=relu, model.stage_conv=None, "
                             "model.dw_kernel_size=3, model.pconv_ratio=0.25, model.rep_branches=1)"), notes[0]
    assert yaml.safe_load((tmp_path / "out" / "results.json").read_text())["width"] == 0.25


# --- 3. a full disk ----------------------------------------------------------------------------------

@as_root
def test_a_full_disk_while_checkpointing_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """Epoch 1 on a tmpfs with room, then the disk filled to 64 KiB free (less than a checkpoint) and
    the run resumed for a second epoch: its checkpoint cannot be written."""
    with tmpfs(tmp_path / "disk", "size=8m") as disk:
        first = run_entry("train.py", *TINY, "test=false", run_dir=disk)
        assert first.returncode == 0, first.output[-3000:]
        last, metrics = disk / "out" / "checkpoints" / "last.ckpt", disk / "out" / "metrics.json"
        before, metrics_before = last.read_bytes(), metrics.read_bytes()  # the first run's
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))
        result = run_entry("train.py", *TINY, "test=false", "trainer.max_epochs=2", "ckpt_path=last", run_dir=disk)
        line = last_line(result)
        assert re.fullmatch(rf"no space left on {re.escape(str(last.parent))} while writing (last|best-\S+)\.ckpt",
                            line), line
        assert last.read_bytes() == before
        assert torch.load(last, weights_only=True)["epoch"] == 0
        assert not list(disk.rglob("*.tmp")) and metrics.read_bytes() == metrics_before


@as_root
def test_a_full_disk_while_writing_metrics_leaves_no_partial_file(tmp_path):
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        write_json_atomic(disk / "metrics.json", {"test/acc": 0.5})
        with pytest.raises(NoSpaceError, match=rf"^no space left on {re.escape(str(disk))} while writing metrics\.json$"):
            write_json_atomic(disk / "metrics.json", {"big": "x" * 200_000})
        assert sorted(p.name for p in disk.iterdir()) == ["metrics.json"]
        assert (disk / "metrics.json").read_text() == '{\n  "test/acc": 0.5\n}\n'


# --- 4. trackers -------------------------------------------------------------------------------------

def test_wandb_without_credentials_says_how_to_log_in_before_the_run(tmp_path):
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path), "NETRC": str(tmp_path / "no.netrc")}
    line = one_line(run_entry("train.py", *TINY, "logger=wandb", run_dir=tmp_path, env=env))
    assert line == ("logger.wandb: no Weights & Biases credentials (WANDB_API_KEY is not set and `wandb login` has "
                    "not been run); run `wandb login`, or log locally with WANDB_MODE=offline (sync later with "
                    "`wandb sync`)")
    assert not (tmp_path / "out" / "wandb").exists()


def test_tensorboard_into_an_unwritable_directory_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    line = one_line(run_entry("train.py", *TINY, "logger=tensorboard",
                              f"logger.tensorboard.save_dir={tmp_path}/afile/tb", run_dir=tmp_path))
    assert line == f"logger.tensorboard.save_dir='{tmp_path}/afile/tb' cannot be written: Not a directory; " \
                   f"give a writable directory"
    assert_nothing_written(tmp_path)


# --- 5. more faults from files and the machine --------------------------------------------------------

def test_a_truncated_jpeg_in_an_imagefolder_tree_is_named_in_one_line(tmp_path):
    root = tmp_path / "data" / "imagenet"
    write_image_tree(root, {"a": 4, "b": 4})
    broken = root / "train" / "a" / "001.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])  # a copy cut short
    result = run_entry("train.py", "data=imagenet_subset", f"data.data_dir={root}", "data.num_workers=0",
                       "data.val_size=2", "data.batch_size=2", "data.image_size=16", "model.width=0.25",
                       "trainer.max_epochs=1", "trainer.accelerator=cpu", "callbacks.model_summary=null", run_dir=tmp_path)
    assert re.fullmatch(rf"{re.escape(str(broken))}: not a readable image \(.*\); remove or replace it",
                        last_line(result)), result.lines[-1]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_an_unreadable_image_met_by_a_dataloader_worker_is_still_one_line(tmp_path):
    """A worker's error reaches the main process as torch's ExceptionWrapper re-raises it: the message is
    ``Caught InputError in DataLoader worker process 0.`` and the worker's traceback; the line is its last."""
    from torch.utils.data import DataLoader

    from dsnet.data.decoded_cache import ImageFileDataset
    from dsnet.guards import user_error

    (tmp_path / "0.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    loader = DataLoader(ImageFileDataset([(str(tmp_path / "0.JPEG"), 0)], transform=lambda x: x), num_workers=1,
                        multiprocessing_context="fork")
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert str(info.value).startswith("Caught InputError in DataLoader worker process 0.")
    assert user_error(info.value) == f"{tmp_path}/0.JPEG: not a readable image (no image format PIL knows); remove or replace it"


@pytest.mark.parametrize("name,content", [("metrics.json", '{"test/acc": 0.'), ("config.yaml", "model: [\n")])
def test_a_garbled_file_in_a_finished_run_directory_means_train_again(name, content, finished_run, tmp_path):
    run_dir = tmp_path / "out"
    shutil.copytree(finished_run, run_dir)
    config = run_dir / "config.yaml"  # the same run here: its paths moved with it, so metrics.json is read
    config.write_text(config.read_text().replace(str(finished_run.parent), str(tmp_path)))
    (run_dir / name).write_text(content)
    result = run_entry("train.py", *TINY, "test=false", run_dir=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert yaml.safe_load((run_dir / "metrics.json").read_text())["epochs"] == 1  # trained again, written whole


def test_a_run_killed_while_testing_resumes_to_the_metrics_of_its_fit(finished_run, tmp_path):
    """After the last epoch the checkpoint holds everything; the resumed fit runs no epoch and logs
    nothing, yet metrics.json must still say how many epochs and the best validation accuracy."""
    run_dir = copy_run(finished_run, tmp_path)
    result = run_entry("train.py", *TINY, "ckpt_path=last", run_dir=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
    fit = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["val_acc_best.max_value"]
    assert metrics["epochs"] == 1 and metrics["val/acc_best"] == float(fit)


@pytest.mark.parametrize("config,expected", [
    ("model: [\n", r"{cfg}: not readable YAML \(ParserError: while parsing a flow node\)"),
    ("model:\n  _target_: os.system\n  command: touch {marker}\n  arch: x\n  conv: dsconv\n  width: 0.25\n"
     "data: {{num_classes: 10, in_chans: 3, image_size: 16}}\n",
     r"{cfg}: model\._target_='os\.system' is not a dsnet network; refused, nothing built "
     r"\(a run config may only name dsnet\.\* factories\)"),
])
def test_eval_refuses_a_garbled_or_hostile_run_config_in_one_line(config, expected, finished_run, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "config.yaml").write_text(config.format(marker=marker))
    result = run_entry("eval.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt", "data=synthetic", "data.image_size=16",
                       *FAST_LATENCY, run_dir=tmp_path)
    assert re.fullmatch(expected.format(cfg=re.escape(str(run_dir / "config.yaml"))), one_line(result, "eval.py"))
    assert not marker.exists() and not (tmp_path / "out" / "results.json").exists()


@as_root
def test_a_read_only_run_directory_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as ro:
        line = one_line(run_entry("train.py", *TINY, run_dir=ro))
    assert line == f"cannot write {ro}/out: Read-only file system; give a writable directory (hydra.run.dir, paths.log_dir)"


def test_a_checkpoint_directory_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("")  # e.g. a failed copy of the run directory
    line = one_line(run_entry("train.py", *TINY, run_dir=tmp_path))
    assert line == (f"callbacks.model_checkpoint.dirpath='{tmp_path}/out/checkpoints' cannot be written: "
                    f"File exists; give a writable directory")


def test_a_checkpoint_save_removes_what_killed_writers_left(tmp_path):
    stale = [tmp_path / ".last.ckpt.k1ll3d.tmp", tmp_path / ".last.ckpt.0ther.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)  # half a checkpoint, as SIGKILL leaves it
    (tmp_path / ".best.ckpt.x.tmp").write_bytes(b"")  # another file's writer: not ours to remove
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.ckpt.x.tmp", "last.ckpt"]


# --- 6. SIGKILL at random moments, then ckpt_path=last, again and again ------------------------------

CHAOS = (*TINY, "data.num_train=256", "trainer.max_epochs=3", "trainer.deterministic=true",
         "callbacks.model_summary=null", "callbacks.progress_bar.mode=log")
COMPARED = ("test/acc", "test/acc5", "test/loss", "val/acc_best", "epochs")


def start_train(run_dir: Path, *overrides: str):
    """``train.py`` forked from the warm server, not waited for: the test kills it when it chooses."""
    output = run_dir.parent / f"{run_dir.name}.{len(list(run_dir.parent.glob(run_dir.name + '.*.out')))}.out"
    argv = [str(entrypoints.ROOT / "train.py"), *CHAOS, f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir}",
            f"paths.data_dir={run_dir.parent}/data", *overrides]
    env = {"OMP_NUM_THREADS": "1", **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
           "PYTHONUNBUFFERED": "1"}
    process = entrypoints._context.Process(target=entrypoints._child, args=(argv, str(run_dir.parent), env, str(output)))
    process.start()
    return process, output


def temp_files(run_dir: Path) -> set[str]:
    """AtomicCheckpointIO's temporary files: a new one means a checkpoint is being written."""
    try:
        return {name for name in os.listdir(run_dir / "checkpoints") if name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def test_sigkill_at_random_moments_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    """Killed five times (first while a checkpoint is written, then at random moments of epochs,
    validation and checkpointing), each resume starts from an intact last.ckpt (or from scratch when
    none was written yet) and the run ends with the metrics of a run that was never killed."""
    import json
    import random
    import signal
    import time

    whole, out = start_train(tmp_path / "whole")
    start = time.monotonic()
    whole.join(300)
    duration = time.monotonic() - start
    assert whole.exitcode == 0, out.read_text()[-3000:]
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    run_dir, rng, kills = tmp_path / "chaos", random.Random(34), []
    for attempt in range(5):
        process, out = start_train(run_dir, "ckpt_path=last")
        stale = temp_files(run_dir)  # left by the writer killed before
        writing = lambda: bool(temp_files(run_dir) - stale)  # noqa: E731
        deadline = time.monotonic() + (30.0 if attempt == 0 else rng.uniform(0.15, 0.6) * duration)
        caught = False
        while process.is_alive() and time.monotonic() < deadline and not caught:
            caught = attempt == 0 and writing()
            time.sleep(0.001)
        if not process.is_alive():
            break
        moment = "writing a checkpoint" if caught or writing() else "training, validating or testing"
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        kills.append(moment)
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():  # what the next resume starts from must load
            torch.load(last, weights_only=True, map_location="cpu")
    final, out = start_train(run_dir, "ckpt_path=last")
    final.join(300)
    assert final.exitcode == 0, out.read_text()[-3000:]
    assert len(kills) >= 3 and kills[0] == "writing a checkpoint", kills
    got = json.loads((run_dir / "metrics.json").read_text())
    assert {k: got[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}, kills
    assert not list(run_dir.rglob("*.tmp"))  # the killed writers' temporary files were cleaned up
    print(f"{len(kills)} kills: {kills}; metrics equal to the uninterrupted run's")
