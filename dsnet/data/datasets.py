"""Torch datasets over a split held in memory, and the sampler every loader shares.

A split of a small dataset is one uint8 tensor (N, C, H, W) plus int64 labels (N,). It is served two
ways from the same tensors:

- ``TensorBatchDataset`` (the fast path): ``__getitems__`` answers a whole list of indices with ONE
  indexing op, so a batch costs no per-image Python, no PIL and no ``default_collate``.
- ``PILImageDataset`` (the ordinary path): one PIL image per ``__getitem__``, exactly as
  torchvision's MNIST and CIFAR datasets hand images to their transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler


class TensorBatchDataset(Dataset):
    """A split as one uint8 image tensor; a batch is a single gather.

    ``torch.utils.data.DataLoader`` calls ``__getitems__`` with the whole list of indices of a batch
    when the dataset defines it, then passes the result to ``collate_fn`` (use ``keep_batch``).
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} {tuple(images.shape)} "
                f"and {len(labels)} labels"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``collate_fn`` for ``TensorBatchDataset``: the batch is already built, pass it through."""
    return batch


class PILImageDataset(Dataset):
    """A split served one PIL image at a time through a per-sample transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable) -> None:
        # Contiguous HWC numpy once, the layout torchvision's MNIST and CIFAR keep: each __getitem__
        # is then one Image.fromarray of a contiguous row, as there.
        array = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.array = array[..., 0] if array.shape[-1] == 1 else array
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.array[index])), self.labels[index]


class Source(Protocol):
    """One split of a dataset before it is wrapped for a loader (``ArraySource``, ``FolderSource``)."""

    def __len__(self) -> int: ...

    def memory(self, indices: Tensor) -> TensorBatchDataset: ...

    def per_sample(self, indices: Tensor, transform: Callable) -> Dataset: ...


class ArraySource:
    """A whole split decoded into memory: uint8 images (N, C, H, W) and int64 labels (N,).

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: integer labels (N,), each in ``[0, num_classes)``.
        num_classes: number of classes of the dataset, used to check the labels.
        origin: where the split came from, for error messages.
    """

    def __init__(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray, num_classes: int, origin: str):
        images, labels = torch.as_tensor(images), torch.as_tensor(labels, dtype=torch.long)
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"{origin}: expected N > 0 uint8 images (N, C, H, W) and N labels, "
                f"got {images.dtype} {tuple(images.shape)} and {len(labels)} labels"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{origin}: labels span {low}..{high}, expected 0..{num_classes - 1}")
        self.images, self.labels = images.contiguous(), labels

    def __len__(self) -> int:
        return len(self.labels)

    def memory(self, indices: Tensor) -> TensorBatchDataset:
        """The rows ``indices`` as a ``TensorBatchDataset`` (a copy, so the source can be freed)."""
        return TensorBatchDataset(self.images[indices], self.labels[indices])

    def per_sample(self, indices: Tensor, transform: Callable) -> PILImageDataset:
        """The rows ``indices`` as a ``PILImageDataset`` with ``transform``."""
        return PILImageDataset(self.images[indices], self.labels[indices], transform)


def split_indices(num_items: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits ``range(num_items)`` into (train, val) index tensors with a fixed seed.

    Args:
        num_items: size of the training set the validation split is held out from.
        val_size: number of validation items (int), or their fraction (float in (0, 1)).
        seed: seed of the permutation; the same seed always gives the same split.
    """
    num_val = round(val_size * num_items) if isinstance(val_size, float) else val_size
    if not 0 < num_val < num_items:
        raise ValueError(
            f"val_size={val_size!r} leaves {num_val} of {num_items} training items for validation; "
            f"allowed: 1..{num_items - 1} items or a fraction that gives that many"
        )
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    # Sorted so memory-path copies read the source in order; shuffling is the sampler's job.
    return order[num_val:].sort().values, order[:num_val].sort().values


def make_sampler(
    num_items: int, *, shuffle: bool, seed: int, num_replicas: int, rank: int
) -> DistributedSampler:
    """This rank's shard of ``range(num_items)``, reshuffled per epoch via ``set_epoch``.

    A ``DistributedSampler`` even on one process: Lightning leaves loaders whose sampler already is
    one alone (it does not re-wrap them), calls ``set_epoch`` on it every epoch, and the shuffle is
    ``seed + epoch``, so every run with the same seed sees the same order.
    """
    # Only __len__ is read from the dataset argument.
    return DistributedSampler(
        range(num_items), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )
