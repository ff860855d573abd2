"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): 32x32 colour images, 10 or 100 classes.

50,000 training and 10,000 test images in the "python version" layout: pickled batches under
``data_dir/cifar-10-batches-py/`` (data_batch_1..5, test_batch) or ``data_dir/cifar-100-python/``
(train, test), each a dict with ``data`` (N, 3072) uint8 in CHW order and ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100). File names, folders and the download come from
``torchvision.datasets``; the batches are read here so that any copy in the real layout loads, not
only the md5-exact official files. Pickle is the format of this dataset, and ``pickle.load`` (what
torchvision does) runs whatever code a file holds: the batches go through
:func:`dsnet.data.safe_pickle.load_data_pickle` instead, which builds dicts, lists, strings, numbers
and numpy arrays and refuses anything else, in one line naming the file and the object, before it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from dsnet.data.base import ImageDataModule, match_dataset
from dsnet.data.datasets import ArraySource
from dsnet.data.safe_pickle import UnsafePickleError, load_data_pickle


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one pickled CIFAR batch into uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Raises:
        ValueError: the file is not a CIFAR python batch, or asks to build an object that is not data.
    """
    try:
        entry = load_data_pickle(path, encoding="latin1")  # the batches were pickled by Python 2
    except UnsafePickleError as err:
        raise ValueError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001  (unpickling arbitrary bytes fails in many ways; all mean "wrong format")
        raise ValueError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err})") from err
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001  (not a dict, no labels, data not numbers: all "wrong format")
        raise ValueError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err})") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


class CIFARDataModule(ImageDataModule):
    """CIFAR train/val/test loaders; ``CIFAR10DataModule`` and ``CIFAR100DataModule`` fix the dataset.

    Args:
        data_dir: directory that holds the extracted batch folder, and where ``prepare_data``
            downloads when the batches are absent.
        batch_size: images per batch and per process.
        image_size: side of the images the model sees (32 = native size; others are resized).
        num_classes: must equal the dataset's (10 or 100) when given.
        in_chans: must be 3 when given.
        download: let ``prepare_data`` download and extract the archive when batches are missing.
        **options: shared options of ``ImageDataModule`` (num_workers, val_size, seed, loader,
            crop_padding, hflip_prob, randaugment, mixup_alpha, cutmix_alpha).
    """

    torchvision_dataset: type[CIFAR10]  # file layout and download
    dataset_num_classes: int
    native_size = 32

    def __init__(
        self,
        data_dir: str | Path = "data",
        *,
        batch_size: int = 128,
        image_size: int = 32,
        num_classes: int | None = None,
        in_chans: int | None = None,
        download: bool = True,
        **options,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            image_size=image_size,
            num_classes=match_dataset("num_classes", num_classes, self.dataset_num_classes, self.name),
            in_chans=match_dataset("in_chans", in_chans, 3, self.name),
            **options,
        )
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    @property
    def folder(self) -> Path:
        """The extracted batch folder, e.g. ``data_dir/cifar-10-batches-py``."""
        return self.data_dir / self.torchvision_dataset.base_folder

    def _files(self, train: bool) -> list[str]:
        dataset = self.torchvision_dataset
        return [name for name, _md5 in (dataset.train_list if train else dataset.test_list)]

    def _missing(self) -> list[str]:
        return [name for train in (True, False) for name in self._files(train) if not (self.folder / name).is_file()]

    def _not_found(self, missing: list[str]) -> str:
        return (
            f"{self.name} batches {missing} not found in {self.folder}; put the extracted "
            f"{self.torchvision_dataset.base_folder}/ (from {self.torchvision_dataset.filename}) under "
            f"{self.data_dir}, or run prepare_data() online with download=True"
        )

    def prepare_data(self) -> None:
        """Downloads and extracts the archive into ``data_dir`` when any batch file is missing."""
        missing = self._missing()
        if not self.download or not missing:
            return
        try:
            self.torchvision_dataset(self.data_dir, train=True, download=True)
        except (OSError, RuntimeError) as err:  # offline: URLError (an OSError) or torchvision's RuntimeError
            reason = " ".join(str(err).split())
            raise FileNotFoundError(f"{self._not_found(missing)} (download failed: {reason})") from err

    def _source(self, train: bool) -> ArraySource:
        if missing := self._missing():
            raise FileNotFoundError(self._not_found(missing))
        batches = [read_cifar_batch(self.folder / name) for name in self._files(train)]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        return ArraySource(images, labels, self.num_classes, origin=str(self.folder))


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 loaders (10 classes); arguments as in ``CIFARDataModule``."""

    name = "CIFAR-10"
    torchvision_dataset = CIFAR10
    dataset_num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)  # of the 50,000 training images
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 loaders (100 fine-label classes); arguments as in ``CIFARDataModule``."""

    name = "CIFAR-100"
    torchvision_dataset = CIFAR100
    dataset_num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)  # of the 50,000 training images
    std = (0.2673, 0.2564, 0.2762)
