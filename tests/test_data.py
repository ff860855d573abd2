"""Data layer: real file formats, splits, per-sample device augmentation, sharding, errors.

Fashion-MNIST is read from the Debian package's real files; CIFAR, idx and ImageFolder inputs are
small files this module writes in the real formats.
"""

from __future__ import annotations

import gzip
import inspect
import pickle
import re
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from lightning.pytorch.trainer.states import RunningStage
from omegaconf import OmegaConf
from torchvision.transforms import v2

from dsnet.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageNetSubsetDataModule,
    SyntheticDataModule,
    fashion_mnist,
    resolve_classes,
)
from conftest import write_image_tree
from dsnet.data.datasets import make_sampler
from dsnet.data.fashion_mnist import read_idx
from dsnet.data.gpu_augment import BatchAugment, random_crop_flip

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"
needs_debian_fmnist = pytest.mark.skipif(
    not fashion_mnist.SYSTEM_DIR.is_dir(), reason="needs apt-get install dataset-fashion-mnist"
)


# --- writers of the real file formats -----------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data (gzipped if *.gz)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fashion_mnist(directory: Path, num_train: int, num_test: int, seed: int = 1) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST idx files (training images plain, the rest gzipped); returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, num_train).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, num_test).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    """A python-version CIFAR batch: a pickled dict with data (N, 3072) uint8 rows in CHW order."""
    entry = {
        "batch_label": "test batch",
        label_key: labels.tolist(),
        "data": images.reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = (labels // 5).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def synthetic(**kwargs) -> SyntheticDataModule:
    options = dict(num_classes=4, in_chans=3, image_size=16, batch_size=32, num_train=160, num_test=40, val_size=32)
    return SyntheticDataModule(**{**options, **kwargs})


# --- Fashion-MNIST --------------------------------------------------------------------------------


@needs_debian_fmnist
def test_fashion_mnist_from_debian_files_has_the_real_sizes_and_classes(tmp_path):
    dm = FashionMNISTDataModule(tmp_path, download=False)  # empty data_dir: falls back to the package
    dm.setup()
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert train.images.shape == (55000, 1, 28, 28) and train.images.dtype == torch.uint8
    # The real dataset is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(torch.cat([train.labels, val.labels])).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (128, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    out, _ = dm.transform_batch((images, labels), train=True)
    assert out.shape == (128, 1, 28, 28) and out.dtype == torch.float32
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 28)


@needs_debian_fmnist
def test_fashion_mnist_val_fraction_and_split_is_fixed_by_seed(tmp_path):
    a, b, c = (FashionMNISTDataModule(tmp_path, download=False, val_size=0.1, seed=s) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup("fit")
    assert (len(a.dataset("train")), len(a.dataset("val"))) == (54000, 6000)
    assert torch.equal(a.dataset("val").images, b.dataset("val").images)
    assert not torch.equal(a.dataset("val").images, c.dataset("val").images)


def test_idx_files_written_in_the_real_format_are_read_back_exactly(tmp_path):
    # torchvision's layout under data_dir; training images plain, the other files gzipped.
    arrays = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", num_train=7, num_test=3)
    dm = FashionMNISTDataModule(tmp_path, download=False, val_size=2, batch_size=4)
    dm.setup()
    test = dm.dataset("test")
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"]))
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == (5, 2)
    # Every training image comes back exactly once, with its label.
    read = sorted((bytes(i[0].numpy()), int(label)) for d in (train, val) for i, label in zip(d.images, d.labels))
    written = zip(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte.gz"])
    assert read == sorted((bytes(image), int(label)) for image, label in written)
    # Multi-byte idx values are big-endian on disk and native after reading.
    wide = np.arange(-3, 9, dtype=np.int32).reshape(3, 4) * 70000
    write_idx(tmp_path / "wide.idx", wide)
    np.testing.assert_array_equal(read_idx(tmp_path / "wide.idx"), wide)


def test_fashion_mnist_missing_files_error_says_where_it_looked_and_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    dm = FashionMNISTDataModule(tmp_path / "data", download=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "data") in message and str(tmp_path / "no-system-copy") in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message


def test_fashion_mnist_wrong_format_files_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(b"<html>not idx</html>")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    dm = FashionMNISTDataModule(tmp_path, download=False)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is not an idx file"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is not a valid gzip file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")


# --- CIFAR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "folder", "train_files", "test_file", "label_key", "num_classes"),
    [
        (
            CIFAR10DataModule,
            "cifar-10-batches-py",
            ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
            "test_batch",
            "labels",
            10,
        ),
        (CIFAR100DataModule, "cifar-100-python", ["train"], "test", "fine_labels", 100),
    ],
)
def test_cifar_batches_in_the_real_pickle_layout_load_exactly(
    tmp_path, module, folder, train_files, test_file, label_key, num_classes
):
    rng = np.random.default_rng(2)
    per_file = 20 // len(train_files)
    train_images = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    train_labels = rng.integers(0, num_classes, 20)
    for i, name in enumerate(train_files):
        rows = slice(i * per_file, (i + 1) * per_file)
        write_cifar_batch(tmp_path / folder / name, train_images[rows], train_labels[rows], label_key)
    test_images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    test_labels = np.array([0, num_classes - 1, 1, 2, 3, 4])
    write_cifar_batch(tmp_path / folder / test_file, test_images, test_labels, label_key)

    dm = module(tmp_path, download=False, val_size=5, batch_size=8)
    dm.setup()
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (num_classes, 3, 32)
    test = dm.dataset("test")
    assert torch.equal(test.images, torch.from_numpy(test_images)) and test.labels.tolist() == test_labels.tolist()
    assert (len(dm.dataset("train")), len(dm.dataset("val"))) == (15, 5)
    val = dm.dataset("val")
    # Held-out images are training images, kept with their labels.
    for image, label in zip(val.images, val.labels):
        match = [i for i in range(20) if np.array_equal(train_images[i], image.numpy())]
        assert len(match) == 1 and train_labels[match[0]] == label
    images, _ = next(iter(dm.val_dataloader()))
    out, _ = dm.transform_batch((images, torch.zeros(5, dtype=torch.long)), train=False)
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images / 255 - mean) / std)


def test_cifar_missing_files_error_says_where_to_put_them(tmp_path):
    only_test = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar_batch(only_test, np.zeros((1, 3, 32, 32), np.uint8), np.zeros(1, np.int64), "labels")
    with pytest.raises(FileNotFoundError) as err:
        CIFAR10DataModule(tmp_path, download=False).setup()
    message = str(err.value)
    assert "data_batch_1" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-batches-py/" in message and "\n" not in message


def test_cifar_wrong_format_batch_is_rejected(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"definitely not a pickle")
    (folder / "test").write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match="train is not a CIFAR python batch"):
        CIFAR100DataModule(tmp_path, download=False).setup("fit")


# --- ImageNet subsets -----------------------------------------------------------------------------


def test_imagenet_subset_classes_by_name_and_by_file(tmp_path):
    write_image_tree(tmp_path, {"n01": 2, "n02": 2, "n03": 2})
    assert resolve_classes(tmp_path, None) == ["n01", "n02", "n03"]
    assert resolve_classes(tmp_path, ["n03", "n01"]) == ["n03", "n01"]  # list order is label order
    (tmp_path / "classes.txt").write_text("n02\n\nn03\n")
    assert resolve_classes(tmp_path, str(tmp_path / "classes.txt")) == ["n02", "n03"]
    with pytest.raises(ValueError, match=r"classes \['n99'\] not found in .*available \(3\) include \['n01', 'n02', "):
        resolve_classes(tmp_path, ["n01", "n99"])
    with pytest.raises(FileNotFoundError, match="does not exist; expected an ImageFolder tree"):
        resolve_classes(tmp_path / "missing", None)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        resolve_classes(tmp_path / "empty", None)


def test_imagenet_subset_loads_capped_classes_with_imagenet_transforms(tmp_path):
    write_image_tree(tmp_path, {"n01": 6, "n02": 6, "n03": 3})
    dm = ImageNetSubsetDataModule(
        tmp_path, classes=["n02", "n01"], max_per_class=4, image_size=16, batch_size=4, val_size=2, num_workers=0
    )
    assert dm.num_classes == 2 and dm.in_chans == 3
    dm.setup()
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 2, 12)  # 2 classes x 4 (capped), val/ uncapped
    kept = sorted(Path(p).name for p, label in train.samples + val.samples if label == 1)  # label 1 = n01
    assert kept == ["000.png", "001.JPEG", "002.png", "003.JPEG"]  # the first four by file name
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and set(labels.tolist()) <= {0, 1}
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 16, 16)

    memory = ImageNetSubsetDataModule(
        tmp_path, classes=["n02", "n01"], image_size=16, val_size=2, loader="memory", num_workers=0
    )
    memory.setup("test")
    assert memory.dataset("test").images.shape == (12, 3, 18, 18)  # decoded at floor(16 / 0.875)
    batch = next(iter(memory.test_dataloader()))
    assert memory.transform_batch(batch, train=True)[0].shape == (12, 3, 16, 16)
    assert memory.transform_batch(batch, train=False)[0].shape == (12, 3, 16, 16)
    with pytest.raises(ValueError, match=r"num_classes=5 does not match .*num_classes=2"):
        ImageNetSubsetDataModule(tmp_path, classes=["n02", "n01"], num_classes=5)


# --- synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed():
    a, b, c = synthetic(seed=5), synthetic(seed=5), synthetic(seed=6)
    for dm in (a, b, c):
        dm.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(a.dataset(split).images, b.dataset(split).images)
        assert torch.equal(a.dataset(split).labels, b.dataset(split).labels)
    assert not torch.equal(a.dataset("train").images, c.dataset("train").images)
    batch_a, batch_b = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    torch.testing.assert_close(a.transform_batch(batch_a, train=True), b.transform_batch(batch_b, train=True))
    assert a.dataset("test").images.shape == (40, 3, 16, 16)


class TinyClassifier(L.LightningModule):
    """A linear classifier that records what the data module hands it."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes)
        self.batches = {"train": [], "val": []}

    def forward(self, x):
        return self.linear(x.flatten(1))

    def training_step(self, batch, batch_idx):
        self.batches["train"].append(batch)
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.batches["val"].append(batch)
        self.log("val/acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_trainer_gets_augmented_train_batches_plain_val_batches_and_learns():
    dm = synthetic(num_classes=10, image_size=16, num_train=1280, val_size=256, batch_size=64)
    model = TinyClassifier(3 * 16 * 16, 10)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,  # "learnable": 8 steps of a linear model take it far above chance
        val_check_interval=8,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] > 0.5  # chance is 0.1
    train_images, _ = model.batches["train"][0]
    val_images, val_labels = model.batches["val"][0]
    assert train_images.dtype == val_images.dtype == torch.float32
    # Validation batches are the held-out images, normalised and not augmented.
    raw = dm.dataset("val").images[:64]
    torch.testing.assert_close(val_images, (raw / 255 - 0.5) / dm.std[0])
    assert torch.equal(val_labels, dm.dataset("val").labels[:64])


# --- device-side augmentation ---------------------------------------------------------------------


def matching_windows(crop: torch.Tensor, padded: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Every (y, x, mirrored) whose window of ``padded`` equals ``crop`` exactly."""
    size, (height, width) = crop.shape[-1], padded.shape[-2:]
    found = []
    for y in range(height - size + 1):
        for x in range(width - size + 1):
            window = padded[:, y : y + size, x : x + size]
            found += [(y, x, False)] if torch.equal(crop, window) else []
            found += [(y, x, True)] if torch.equal(crop, window.flip(-1)) else []
    return found


def test_random_crop_is_per_sample_and_equals_a_slice_of_the_padded_image():
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    crops = random_crop_flip(images, 12, 4, 0.0, torch.Generator().manual_seed(0))
    padded = F.pad(images, (4, 4, 4, 4))
    found = [matching_windows(crop, image) for crop, image in zip(crops, padded)]
    assert all(len(f) == 1 and not f[0][2] for f in found)  # random content: exactly one window, unflipped
    assert len({f[0] for f in found}) > 20  # 81 possible offsets drawn per image, not one per batch


def test_random_flip_is_per_sample_and_combines_with_the_crop():
    images = torch.randint(0, 256, (200, 1, 5, 5), dtype=torch.uint8)
    out = random_crop_flip(images, 5, 0, 0.5, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, images))
    assert 70 < sum(flipped) < 130
    crops = random_crop_flip(images, 4, 2, 0.5, torch.Generator().manual_seed(1))
    found = [matching_windows(crop, image) for crop, image in zip(crops, F.pad(images, (2, 2, 2, 2)))]
    assert all(len(f) == 1 for f in found)
    assert 0 < sum(f[0][2] for f in found) < 200  # some mirrored, some not


def test_batch_augment_resizes_normalises_and_repeats_with_its_seed():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    augment = BatchAugment(crop_size=28, padding=4, hflip_prob=0.5, image_size=32, mean=(0.3,), std=(0.4,), seed=7)
    again = BatchAugment(crop_size=28, padding=4, hflip_prob=0.5, image_size=32, mean=(0.3,), std=(0.4,), seed=7)
    train = augment(images, train=True)
    assert train.shape == (8, 1, 32, 32) and torch.equal(train, again(images, train=True))
    expected = F.interpolate(images.float() / 255, size=32, mode="bilinear", antialias=True)
    torch.testing.assert_close(augment(images, train=False), (expected - 0.3) / 0.4)


@pytest.mark.parametrize("image_size", [28, 32, 20])
def test_memory_and_torchvision_loaders_give_the_same_eval_batches(tmp_path, image_size):
    write_fashion_mnist(tmp_path, num_train=40, num_test=8)
    options = dict(download=False, image_size=image_size, val_size=16, batch_size=16)
    memory = FashionMNISTDataModule(tmp_path, loader="memory", **options)
    per_sample = FashionMNISTDataModule(tmp_path, loader="torchvision", **options)
    memory.setup("validate"), per_sample.setup("validate")
    fast, labels = memory.transform_batch(next(iter(memory.val_dataloader())), train=False)
    slow, slow_labels = next(iter(per_sample.val_dataloader()))
    assert torch.equal(labels, slow_labels) and fast.shape == slow.shape == (16, 1, image_size, image_size)
    # v2.Resize on uint8 works in fixed point and rounds to uint8: up to one grey level apart.
    atol = 1e-5 if image_size == 28 else 1.01 / 255 / memory.std[0]
    torch.testing.assert_close(fast, slow, atol=atol, rtol=0)


def test_mixup_cutmix_soften_training_labels_only():
    dm = synthetic(mixup_alpha=0.2, cutmix_alpha=1.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _, soft = dm.transform_batch(batch, train=True)
    assert soft.shape == (32, 4) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(32))
    assert torch.equal(dm.transform_batch(batch, train=False)[1], batch[1])


def test_torchvision_loader_with_randaugment_yields_normalised_batches():
    dm = synthetic(loader="torchvision", randaugment=True)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert any(isinstance(t, v2.RandAugment) for t in dm.dataset("train").transform.transforms)


# --- sharding -------------------------------------------------------------------------------------


def test_sampler_shards_are_disjoint_and_reshuffle_per_epoch():
    shards = [make_sampler(10, shuffle=True, seed=1, num_replicas=2, rank=r) for r in range(2)]
    first = [list(s) for s in shards]
    assert sorted(first[0] + first[1]) == list(range(10))
    for s in shards:
        s.set_epoch(1)
    assert [list(s) for s in shards] != first
    assert list(make_sampler(10, shuffle=True, seed=1, num_replicas=2, rank=0)) == first[0]


def test_lightning_keeps_the_sharded_sampler_under_ddp():
    dm = synthetic()
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    loader = dm.train_dataloader()
    assert (loader.sampler.num_replicas, loader.sampler.rank, len(loader.sampler)) == (2, 0, 64)
    # Lightning's own dataloader preparation leaves a DistributedSampler in place.
    assert dm.trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader


class ShardRecorder(L.LightningModule):
    """Saves, per rank and epoch, which training images (found by content) the rank was given."""

    def __init__(self, out: Path, train_images: torch.Tensor, std: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.out, self.std, self.seen = out, std, {}
        self.lookup = {bytes(image.numpy()): i for i, image in enumerate(train_images)}

    def training_step(self, batch, batch_idx):
        # No crop and no flip in this test, so un-normalising recovers the stored uint8 images.
        raw = ((batch[0] * self.std + 0.5) * 255).round().to(torch.uint8)
        self.seen.setdefault(self.current_epoch, []).extend(self.lookup[bytes(image.numpy())] for image in raw)
        return self.linear(batch[0].mean().view(1, 1)).sum()

    def on_train_end(self):
        torch.save(self.seen, self.out / f"rank{self.global_rank}.pt")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_ddp_ranks_see_disjoint_shards_that_change_per_epoch(tmp_path):
    options = dict(num_train=96, val_size=32, batch_size=16, crop_padding=0, hflip_prob=0.0)
    reference = synthetic(**options)
    reference.setup("fit")
    recorder = ShardRecorder(tmp_path, reference.dataset("train").images, reference.std[0])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",  # fork: no re-import per process, so this runs in about a second
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(recorder, datamodule=synthetic(**options))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for epoch in (0, 1):
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == list(range(64))  # disjoint and complete
    assert ranks[0][0] != ranks[0][1]  # set_epoch reshuffled


# --- configs and knobs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "imagenet_subset", "synthetic"])
def test_data_configs_map_one_to_one_onto_their_constructors(name, tmp_path):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    target = get_class(cfg._target_)
    accepted = set(inspect.signature(target).parameters) | set(inspect.signature(ImageDataModule).parameters)
    assert set(cfg) - {"_target_"} <= accepted
    if name == "imagenet_subset":
        write_image_tree(tmp_path, {"n01": 2, "n02": 2})
        cfg.num_classes = 2  # the dsnet.num_classes resolver lives in dsnet.config
    if "data_dir" in cfg:
        cfg.data_dir = str(tmp_path)
    dm = instantiate(cfg)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (cfg.num_classes, cfg.in_chans, cfg.image_size)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": "128"}, "batch_size must be an int >= 1, got '128'"),
        ({"image_size": -28}, "image_size must be an int >= 1, got -28"),
        ({"num_classes": 12}, "num_classes=12 does not match Fashion-MNIST, which has num_classes=10"),
        ({"in_chans": 3}, "in_chans=3 does not match Fashion-MNIST, which has in_chans=1"),
        ({"loader": "dali"}, "loader must be one of ('memory', 'torchvision'), got 'dali'"),
        ({"hflip_prob": 1.5}, "hflip_prob must be a number in [0.0, 1.0], got 1.5"),
        ({"randaugment": True}, "randaugment=True needs loader='torchvision'"),
        ({"val_size": 0}, "val_size must be an int >= 1, got 0"),
    ],
)
def test_bad_knobs_raise_one_line_errors_naming_key_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FashionMNISTDataModule("data", **kwargs)


def test_val_size_larger_than_the_training_set_is_rejected():
    with pytest.raises(ValueError, match=r"val_size=160 leaves 160 of 160 training items.*allowed: 1..159"):
        synthetic(val_size=160).setup("fit")
