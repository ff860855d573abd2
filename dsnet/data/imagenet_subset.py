"""ImageNet subsets: an ImageFolder tree, some or all of its classes, optionally capped per class.

Layout: ``data_dir/train/<class>/*.JPEG`` and ``data_dir/val/<class>/*.JPEG`` (any extension PIL
reads: .jpg, .png, ...), as ImageNet's ILSVRC-2012 train and val sets are usually unpacked. The
validation split is held out of ``train/``; ``val/`` is the test split. The per-sample loader is the
default here (images differ in size and are decoded one by one); ``loader="memory"`` decodes every
image once at ``image_size / 0.875`` (256 for 224), then crops on the device: a random
``image_size`` crop plus flip for training instead of a random-resized crop, a center crop (exactly
the standard evaluation transform) otherwise.

With ``loader="memory"`` and a ``cache_dir``, the decode happens once for all runs: each split's
whole file list (``train/`` after ``classes`` and ``max_per_class``; ``val/`` after ``classes``) is
decoded into one uint8 ``.npy`` in ``cache_dir`` (``decoded_cache``), and every later run with the
same file list and ``image_size`` maps it instead of decoding. One cache per split's file list, not
per train/val/train_size selection: the validation split, ``train_size`` and ``seed`` pick rows of
the same cache, so sweeps over them (and over models) share it. Only what changes the decoded pixels
(the files, their labels, the stored size) makes a new cache; to decode less, cap the file list
with ``max_per_class`` rather than ``train_size``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import v2

from dsnet.data.base import ImageDataModule, check_int, match_dataset
from dsnet.data.datasets import TensorBatchDataset
from dsnet.data.decoded_cache import DecodedCache, ImageFileDataset, decode_images, load_or_build
from dsnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, imagenet_transform

LAYOUT = "an ImageFolder tree data_dir/{train,val}/<class>/<image>.JPEG"


def available_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names in ``split_dir``; an error when it is missing or has none."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist; expected {LAYOUT}")
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"{split_dir} has no class folders; expected {LAYOUT}")
    return names


def resolve_classes(data_dir: str | Path, classes: Sequence[str] | str | Path | None = None) -> list[str]:
    """The class names of a subset, in label order (label i is ``result[i]``).

    Args:
        data_dir: root of the ImageFolder tree; classes are looked up in ``data_dir/train``.
        classes: None for every class folder (sorted), a list of folder names, or the path of a text
            file with one name per line (blank lines ignored).

    Raises:
        FileNotFoundError: ``data_dir/train`` or the class file is missing, or holds no classes.
        ValueError: names are repeated, or some are not folders of ``data_dir/train``.
    """
    train_dir = Path(data_dir).expanduser() / "train"
    available = available_classes(train_dir)
    if classes is None:
        return available
    if isinstance(classes, (str, Path)):
        path = Path(classes).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"classes file {path} not found; classes takes a list of names or such a file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif isinstance(classes, Sequence):
        names = [str(name) for name in classes]
    else:
        raise TypeError(f"classes must be None, a list of names or a file path, got {type(classes).__name__}")
    if not names:
        raise ValueError(f"classes={classes!r} names no class; give at least one of {available[:5]}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes repeats {sorted({n for n in names if names.count(n) > 1})}")
    known = set(available)
    if missing := [name for name in names if name not in known]:
        raise ValueError(
            f"classes {missing} not found in {train_dir}; available ({len(available)}) include {available[:5]}"
        )
    return names


def list_images(split_dir: Path, classes: list[str], max_per_class: int | None = None) -> list[tuple[str, int]]:
    """(path, label) of every image of ``classes`` in ``split_dir``, sorted by class then file name.

    ``max_per_class`` keeps the first that many files of each class in sorted order: a fixed choice
    that does not move with the seed, so every run of a subset sees the same images.
    """
    try:
        samples = make_dataset(split_dir, {name: i for i, name in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{split_dir}: {err}") from err
    if max_per_class is None:
        return samples
    counts = [0] * len(classes)
    capped = []
    for path, label in samples:
        if counts[label] < max_per_class:
            capped.append((path, label))
            counts[label] += 1
    return capped


class FolderSource:
    """A split as a list of image files; ``memory`` decodes them, ``per_sample`` streams them.

    Args:
        samples: (path, label) of every image of the split.
        stored_size: side of the squares ``memory`` decodes to (shorter side resize, center crop).
        num_workers: decoding worker processes.
        cache_dir: where ``memory`` keeps the decoded split for later runs (``decoded_cache``);
            None decodes the requested images in every run.
    """

    def __init__(
        self, samples: list[tuple[str, int]], stored_size: int, num_workers: int, cache_dir: Path | None = None
    ) -> None:
        self.samples, self.stored_size, self.num_workers = samples, stored_size, num_workers
        self.cache_dir = cache_dir
        self.cache: DecodedCache | None = None  # opened on first use, then shared by train and val

    def __len__(self) -> int:
        return len(self.samples)

    def memory(self, indices: Tensor) -> TensorBatchDataset:
        """The images ``indices`` decoded to ``stored_size`` squares, from the cache when there is one."""
        if self.cache_dir is None:
            subset = [self.samples[i] for i in indices.tolist()]
            images = decode_images(subset, self.stored_size, self.num_workers)
            return TensorBatchDataset(torch.from_numpy(images), torch.tensor([label for _, label in subset]))
        if self.cache is None:
            self.cache = load_or_build(self.samples, self.stored_size, self.cache_dir, num_workers=self.num_workers)
        rows = indices.numpy()
        # A copy in RAM, as without the cache: fancy indexing reads the rows out of the mapped file.
        images = np.asarray(self.cache.images[rows])
        return TensorBatchDataset(torch.from_numpy(images), torch.from_numpy(self.cache.labels[rows]))

    def per_sample(self, indices: Tensor, transform: Callable) -> ImageFileDataset:
        return ImageFileDataset([self.samples[i] for i in indices.tolist()], transform)


class ImageNetSubsetDataModule(ImageDataModule):
    """Train/val/test loaders for some classes of an ImageNet-style ImageFolder tree.

    Args:
        data_dir: root of the tree, holding ``train/`` and ``val/``.
        classes: None (all classes), a list of class folder names, or a text file with one per line;
            see ``resolve_classes``.
        max_per_class: keep at most this many training images per class (the first in file-name
            order); None keeps all. ``val/`` is not capped.
        batch_size: images per batch and per process.
        image_size: side of the crops the model sees, in pixels.
        num_classes: must equal the number of selected classes when given.
        in_chans: must be 3 when given (images are decoded as RGB).
        num_workers: decoding worker processes.
        val_size: training images held out for validation: a count or a fraction.
        loader: ``"torchvision"`` (default; per-image decode and transforms) or ``"memory"``.
        cache_dir: with ``loader="memory"``, the directory of the decoded cache: each split is
            decoded once into a uint8 ``.npy`` there and reused by later runs with the same files and
            ``image_size``. None decodes in every run. Unused by the torchvision loader.
        **options: other shared options of ``ImageDataModule`` (seed, crop_padding (default 0
            here), hflip_prob, randaugment, mixup_alpha, cutmix_alpha).
    """

    name = "ImageNet subset"
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        data_dir: str | Path,
        *,
        classes: Sequence[str] | str | None = None,
        max_per_class: int | None = None,
        batch_size: int = 64,
        image_size: int = 224,
        num_classes: int | None = None,
        in_chans: int | None = None,
        num_workers: int = 4,
        val_size: int | float = 0.05,
        loader: str = "torchvision",
        cache_dir: str | Path | None = None,
        **options,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser()
        if cache_dir is not None and (not isinstance(cache_dir, (str, Path)) or not str(cache_dir)):
            raise ValueError(f"cache_dir must be a directory path or None, got {cache_dir!r}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.classes = resolve_classes(self.data_dir, classes)
        super().__init__(
            batch_size=batch_size,
            image_size=image_size,
            num_classes=match_dataset("num_classes", num_classes, len(self.classes), f"{self.name} {self.data_dir}"),
            in_chans=match_dataset("in_chans", in_chans, 3, self.name),
            num_workers=num_workers,
            val_size=val_size,
            loader=loader,
            **options,
        )
        self.max_per_class = None if max_per_class is None else check_int("max_per_class", max_per_class, 1)
        self.native_size = eval_resize_size(self.image_size)  # side of the decoded squares (memory loader)

    @property
    def crop_size(self) -> int:
        # The memory loader stores image_size / 0.875 squares and crops image_size out of them.
        return self.image_size

    @property
    def padding(self) -> int:
        # Crops are cut inside the decoded image here, so no padding unless asked for.
        return self.crop_padding or 0

    def prepare_data(self) -> None:
        """Builds the decoded caches (``loader="memory"`` with a ``cache_dir``) in one process.

        Lightning calls this on one process per node before any ``setup``, so DDP ranks map the
        finished caches instead of each decoding the same files.
        """
        if self.loader == "memory" and self.cache_dir is not None:
            for train in (True, False):
                source = self._source(train)
                load_or_build(source.samples, source.stored_size, self.cache_dir, num_workers=self.num_workers)

    def _source(self, train: bool) -> FolderSource:
        split_dir = self.data_dir / ("train" if train else "val")
        samples = list_images(split_dir, self.classes, self.max_per_class if train else None)
        return FolderSource(samples, self.native_size, self.num_workers, self.cache_dir)

    def _transform(self, train: bool) -> v2.Compose:
        return imagenet_transform(
            train=train, image_size=self.image_size, hflip_prob=self.hflip_prob, randaugment=self.randaugment
        )
