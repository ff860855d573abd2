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
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

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
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(16, seed=i), protocol=4))
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
