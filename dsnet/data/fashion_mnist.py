"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 28x28 grayscale clothing images, 10 classes.

60,000 training and 10,000 test images in the idx format of the original MNIST files. They are read
from ``data_dir`` (or ``data_dir/FashionMNIST/raw``, torchvision's layout), else from the Debian
package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), else downloaded by
``prepare_data`` with torchvision. The idx parser below is numpy over the raw bytes: it reads the
training images in a fraction of a second.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
from torchvision.datasets import FashionMNIST

from dsnet.data.base import ImageDataModule, match_dataset
from dsnet.data.datasets import ArraySource

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: apt-get install dataset-fashion-mnist
FILES = {  # split -> (images, labels); each may also be stored gzipped with a .gz suffix
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes (third byte of the magic number); multi-byte values are big-endian.
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one idx file (gzipped when its name ends in .gz) into a native-endian numpy array.

    Raises:
        ValueError: the file is not gzip when named .gz, its magic number is not idx, or its size
            does not match the header.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path} is not a valid gzip file: {err}") from err
    # Header: two zero bytes, the type code, the number of dimensions, then one uint32 per dimension.
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic number {data[:4].hex() or 'missing'})")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its idx header promises {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    if len(data) != header + math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path} holds {len(data) - header} data bytes, its idx header {shape} needs a different size")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_dir(directories: list[Path]) -> Path | None:
    """The first directory holding all four Fashion-MNIST idx files (plain or .gz), or None."""
    names = [name for pair in FILES.values() for name in pair]
    return next((d for d in directories if all(_idx_file(d, name) for name in names)), None)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST train/val/test loaders.

    Args:
        data_dir: directory searched first for the idx files, and where ``prepare_data`` downloads.
        batch_size: images per batch and per process.
        image_size: side of the images the model sees (28 = native size; others are resized).
        num_classes: must be 10 when given.
        in_chans: must be 1 when given.
        download: let ``prepare_data`` download the files with torchvision when none are found.
        **options: shared options of ``ImageDataModule`` (num_workers, val_size, seed, loader,
            crop_padding, hflip_prob, randaugment, mixup_alpha, cutmix_alpha).
    """

    name = "Fashion-MNIST"
    mean = (0.2860,)  # of the 60,000 training images
    std = (0.3530,)
    native_size = 28

    def __init__(
        self,
        data_dir: str | Path = "data",
        *,
        batch_size: int = 128,
        image_size: int = 28,
        num_classes: int | None = None,
        in_chans: int | None = None,
        download: bool = True,
        **options,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            image_size=image_size,
            num_classes=match_dataset("num_classes", num_classes, 10, self.name),
            in_chans=match_dataset("in_chans", in_chans, 1, self.name),
            **options,
        )
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def _search_dirs(self) -> list[Path]:
        return [self.data_dir, self.data_dir / "FashionMNIST" / "raw", SYSTEM_DIR]

    def _not_found(self) -> str:
        looked = ", ".join(str(d) for d in self._search_dirs())
        return (
            f"Fashion-MNIST idx files ({FILES[True][0]}[.gz] and the 3 others) not found in {looked}; "
            f"install them with `apt-get install dataset-fashion-mnist`, copy them into {self.data_dir}, "
            "or run prepare_data() online with download=True"
        )

    def prepare_data(self) -> None:
        """Downloads the files into ``data_dir/FashionMNIST/raw`` when none are found anywhere."""
        if not self.download or find_idx_dir(self._search_dirs()) is not None:
            return
        try:
            for train in (True, False):
                FashionMNIST(self.data_dir, train=train, download=True)
        except (OSError, RuntimeError) as err:  # offline: URLError (an OSError) or torchvision's RuntimeError
            reason = " ".join(str(err).split())  # torchvision's message spans lines
            raise FileNotFoundError(f"{self._not_found()} (download failed: {reason})") from err

    def _source(self, train: bool) -> ArraySource:
        directory = find_idx_dir(self._search_dirs())
        if directory is None:
            raise FileNotFoundError(self._not_found())
        images_name, labels_name = FILES[train]
        images = read_idx(_idx_file(directory, images_name))
        labels = read_idx(_idx_file(directory, labels_name))
        if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{directory}: expected uint8 images (N, 28, 28) and N labels, "
                f"got {images.dtype} {images.shape} and labels {labels.shape}"
            )
        return ArraySource(images[:, None], labels, self.num_classes, origin=str(directory / images_name))
