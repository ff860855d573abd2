"""The CIFAR-10 recipe on real images: a slice of CIFAR-10 (JPEG q75 copy) trains above chance.

The copy lives outside the repository, in ``../shared/data`` beside the clone (``cifar10-jpeg.tar.gz``
and ``cifar10_batches.py``, which writes the official batch layout). The test converts a slice of
it with that script's own reader into its temporary directory, in the official layout, and trains
``experiment=cifar10`` on it through ``train.py``. A clone without ``../shared/data`` skips it.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

SHARED_DATA = ROOT.parent / "shared" / "data"
ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
CONVERTER = SHARED_DATA / "cifar10_batches.py"
TRAIN_PER_CLASS = 500  # 5,000 training images: 4,500 train + 500 val after the split
TEST_PER_CLASS = 100   # 1,000 test images
MIN_TEST_ACC = 0.18  # chance is 0.10; measured 25.8-30.2% (the test's docstring)


def load_converter():
    """``cifar10_batches.py`` from ../shared/data, as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("cifar10_batches", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_slice(data_dir: Path, train_per_class: int, test_per_class: int) -> Path:
    """The first ``*_per_class`` images of each class and split, as ``cifar-10-batches-py/``.

    Five training batches and one test batch, the files ``data=cifar10`` reads; images are decoded by
    the converter's own ``read_split``.
    """
    converter = load_converter()
    wanted = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    members = []
    with tarfile.open(ARCHIVE) as tar:
        for member in tar.getmembers():  # cifar10-jpeg/<split>/<class>/<nnnn>.jpg
            parts = member.name.split("/")
            if len(parts) != 4 or not member.isfile() or parts[1] not in wanted:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < wanted[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        train = converter.read_split(tar, members, "train")
        test = converter.read_split(tar, members, "test")
    out = data_dir / "cifar-10-batches-py"
    out.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(train[1]))  # the batches mix the classes
    for b, idx in enumerate(np.array_split(order, 5), start=1):
        batch = {"batch_label": f"training batch {b} of 5", "data": train[0][idx],
                 "labels": [train[1][i] for i in idx], "filenames": [train[2][i] for i in idx]}
        (out / f"data_batch_{b}").write_bytes(pickle.dumps(batch, protocol=4))
    batch = {"batch_label": "testing batch 1 of 1", "data": test[0], "labels": test[1], "filenames": test[2]}
    (out / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    meta = {"label_names": converter.CLASSES, "num_cases_per_batch": len(order) // 5, "num_vis": 3072}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return out


def train_on_slice(data_dir: Path, run_dir: Path, seed: int):
    """``python train.py experiment=cifar10`` shrunk to the slice: 3 epochs at batch 64 (213 steps), 500 val
    images. The lr is pinned (0.2) so that the test does not move when the study writes its tuned lr
    into the recipe."""
    return run_cli(
        "experiment=cifar10", f"data.data_dir={data_dir}", "data.val_size=500", "data.batch_size=64",
        "optim.optimizer.lr=0.2", "trainer.max_epochs=3", "trainer.log_every_n_steps=10", f"seed={seed}", f"hydra.run.dir={run_dir}",
        cwd=ROOT, env={"OMP_NUM_THREADS": "1"}, timeout=600,
    )


@pytest.mark.slow
def test_recipe_beats_chance_on_a_slice_of_the_real_cifar10(tmp_path):
    """5,000 real training images, 3 epochs of dsconv w0.25: test top-1 well above the 10% of chance.

    Measured with seeds 1, 2, 3 (this slice, the overrides of ``train_on_slice``, one thread): 25.8%,
    30.2%, 27.3% test top-1 on the 1,000 test images (mean 27.8%). The threshold, 18%, is 7.8 pp
    under the lowest, and 8 pp above chance, where chance's own spread on 1,000 images is 0.95 pp.
    About 95 s with the machine loaded (load average ~11), so marked slow.
    """
    if not (ARCHIVE.is_file() and CONVERTER.is_file()):
        pytest.skip(f"needs the CIFAR-10 (JPEG q75) copy in {SHARED_DATA} (cifar10-jpeg.tar.gz and "
                    "cifar10_batches.py beside the clone); this checkout has none")
    folder = write_slice(tmp_path / "data", TRAIN_PER_CLASS, TEST_PER_CLASS)
    assert sorted(p.name for p in folder.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]

    result = train_on_slice(tmp_path / "data", tmp_path / "run", seed=1)

    assert result.returncode == 0, result.output
    assert "conv=dsconv width=0.25 | input 3x32x32" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "CIFAR-10" and metrics["epochs"] == 3
    assert metrics["test/acc"] > MIN_TEST_ACC, result.output
