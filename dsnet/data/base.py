"""The LightningDataModule every dataset shares: checks, train/val/test splits, the two loaders.

A dataset module only says where its images come from (``_source``) and what they are (class
attributes ``name``, ``mean``, ``std``); this base does the rest the same way for all of them:

- the validation split is held out of the training set with a fixed seed; ``train_size`` optionally
  keeps a seeded random subset of the rest (short CPU recipes); the test split is the dataset's own
  test set, always whole, and is only used for final evaluation;
- ``loader="memory"`` (the fast path): whole uint8 batches by one indexing op, then per-sample crop,
  flip, resize and normalisation on the device in ``on_after_batch_transfer`` (``gpu_augment``);
- ``loader="torchvision"`` (the ordinary path): per-image ``transforms.v2`` in worker processes;
- every split is sharded per rank by a sampler built here (``datasets.make_sampler``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from dsnet.data.datasets import Source, keep_batch, make_sampler, split_indices
from dsnet.data.gpu_augment import BatchAugment
from dsnet.data.transforms import batch_mixing, small_image_transform

LOADERS = ("memory", "torchvision")
SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def check_int(key: str, value: Any, minimum: int) -> int:
    """Returns ``value`` if it is an int >= ``minimum``, else raises a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")
    return value


def check_float(key: str, value: Any, low: float, high: float) -> float:
    """Returns ``value`` as a float if it is a number in [low, high], else raises a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def match_dataset(key: str, given: int | None, actual: int, dataset: str) -> int:
    """``actual`` when ``given`` is None or equal to it; a mismatch names both numbers."""
    if given is not None and given != actual:
        raise ValueError(f"{key}={given!r} does not match {dataset}, which has {key}={actual}")
    return actual


def subset_indices(indices: Tensor, size: int | float | None, seed: int) -> Tensor:
    """A seeded random ``size`` of ``indices`` (a count, or a fraction rounded to >= 1), sorted;
    all of them when ``size`` is None.

    Raises:
        ValueError: a count larger than ``len(indices)``.
    """
    if size is None:
        return indices
    count = max(1, round(size * len(indices))) if isinstance(size, float) else size
    if count > len(indices):
        raise ValueError(
            f"train_size={size!r} asks for {count} training items, but only {len(indices)} are left "
            f"after the validation split; allowed: 1..{len(indices)}, a fraction in (0, 1] or null"
        )
    # Its own stream (seed + 1): the split's permutation already used `seed`.
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed + 1))
    return indices[order[:count].sort().values]


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders for one image-classification dataset.

    Args:
        batch_size: images per batch and per process.
        image_size: side of the square images the model sees, in pixels; images of another native
            size are resized (bilinear, antialiased).
        num_classes: number of classes the dataset has.
        in_chans: number of image channels the dataset has.
        num_workers: worker processes of the per-sample loader. The in-memory loader always runs in
            the main process: it gathers a whole batch in one op, which workers would only have to
            copy to the main process again.
        val_size: validation images held out of the training set: a count (int) or a fraction (float).
        train_size: training images kept of those left after the validation split: a count (int), a
            fraction of them (float in (0, 1]), or None for all. The subset is drawn with ``seed``;
            validation and test splits are unaffected.
        seed: seed of the train/val split, the training subset, the shuffles and the device-side
            augmentation.
        loader: ``"memory"`` (whole uint8 batches, augmented on the device) or ``"torchvision"``
            (per-image ``transforms.v2`` in workers).
        crop_padding: zero padding of the training random crop, in pixels of the native image; None
            scales 4 px per 32 px (4 for 28 and 32 px images), 0 disables the crop.
        hflip_prob: probability of a horizontal flip per training image; 0 disables flips.
        randaugment: add RandAugment to the per-sample training pipeline (``loader="torchvision"``).
        mixup_alpha: MixUp Beta(alpha, alpha) on training batches; 0 disables it.
        cutmix_alpha: CutMix Beta(alpha, alpha) on training batches; 0 disables it. With MixUp or
            CutMix on, training labels are soft targets of shape (N, num_classes).
    """

    name: str  # dataset name for messages
    mean: tuple[float, ...]  # per-channel statistics on the 0..1 scale
    std: tuple[float, ...]

    def __init__(
        self,
        *,
        batch_size: int,
        image_size: int,
        num_classes: int,
        in_chans: int,
        num_workers: int = 0,
        val_size: int | float = 5000,
        train_size: int | float | None = None,
        seed: int = 0,
        loader: str = "memory",
        crop_padding: int | None = None,
        hflip_prob: float = 0.5,
        randaugment: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.image_size = check_int("image_size", image_size, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.in_chans = check_int("in_chans", in_chans, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        if isinstance(val_size, float):
            check_float("val_size", val_size, 0.0, 1.0)
        else:
            check_int("val_size", val_size, 1)
        self.val_size = val_size
        if isinstance(train_size, float):
            if not 0.0 < train_size <= 1.0:
                raise ValueError(f"train_size must be a count >= 1, a fraction in (0, 1] or None, got {train_size!r}")
        elif train_size is not None:
            check_int("train_size", train_size, 1)
        self.train_size = train_size
        self.seed = check_int("seed", seed, 0)
        if loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
        self.loader = loader
        self.crop_padding = None if crop_padding is None else check_int("crop_padding", crop_padding, 0)
        self.hflip_prob = check_float("hflip_prob", hflip_prob, 0.0, 1.0)
        if not isinstance(randaugment, bool):
            raise ValueError(f"randaugment must be true or false, got {randaugment!r}")
        if randaugment and loader == "memory":
            raise ValueError("randaugment=True needs loader='torchvision' (RandAugment is a per-image transform)")
        self.randaugment = randaugment
        self.mixing = batch_mixing(
            check_float("mixup_alpha", mixup_alpha, 0.0, float("inf")),
            check_float("cutmix_alpha", cutmix_alpha, 0.0, float("inf")),
            self.num_classes,
        )
        self._datasets: dict[str, Dataset] = {}
        self._augment: BatchAugment | None = None

    # --- what a dataset module provides ---------------------------------------------------------

    native_size: int  # side of the stored images, in pixels

    def _source(self, train: bool) -> Source:
        """The dataset's training set (``train``) or test set."""
        raise NotImplementedError

    def _transform(self, train: bool) -> v2.Compose:
        """Per-sample pipeline of the ``torchvision`` loader."""
        return small_image_transform(
            train=train,
            native_size=self.native_size,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            padding=self.padding,
            hflip_prob=self.hflip_prob,
            randaugment=self.randaugment,
        )

    @property
    def crop_size(self) -> int:
        """Side of the crop the memory loader cuts from a stored image: the whole (padded) image."""
        return self.native_size

    @property
    def padding(self) -> int:
        """Training crop padding in native pixels: ``crop_padding``, or 4 px per 32 px."""
        return self.crop_padding if self.crop_padding is not None else int(self.native_size / 8 + 0.5)

    # --- splits ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Builds (once) the splits ``stage`` needs; all three when ``stage`` is None."""
        for split in SPLITS.get(stage, ("train", "val", "test")):
            self.dataset(split)
        if self._augment is None:
            self._augment = BatchAugment(
                crop_size=self.crop_size,
                padding=self.padding,
                hflip_prob=self.hflip_prob,
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
                # Each rank its own augmentation stream: the shards differ, so should the crops.
                seed=self.seed + self._replicas()[1],
            )

    def dataset(self, split: str) -> Dataset:
        """The torch Dataset of ``split`` ("train", "val" or "test"), built on first use."""
        if split not in self._datasets:
            if split == "test":
                source = self._source(train=False)
                self._datasets["test"] = self._wrap(source, torch.arange(len(source)), train=False)
            else:
                # Train and val come from one read of the training set, so it is read once.
                source = self._source(train=True)
                train_idx, val_idx = split_indices(len(source), self.val_size, self.seed)
                train_idx = subset_indices(train_idx, self.train_size, self.seed)
                self._datasets["train"] = self._wrap(source, train_idx, train=True)
                self._datasets["val"] = self._wrap(source, val_idx, train=False)
        return self._datasets[split]

    def _wrap(self, source: Source, indices: Tensor, *, train: bool) -> Dataset:
        if self.loader == "memory":
            return source.memory(indices)
        return source.per_sample(indices, self._transform(train))

    def __getstate__(self) -> dict:
        # Spawned DDP processes receive this module pickled: without the splits this process has
        # read (each process reads its own in setup, as it would have anyway).
        state = self.__dict__.copy()
        state["_datasets"], state["_augment"] = {}, None
        return state

    # --- loaders --------------------------------------------------------------------------------

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _dataloader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        num_replicas, rank = self._replicas()
        shuffle = split == "train"
        sampler = make_sampler(len(dataset), shuffle=shuffle, seed=self.seed, num_replicas=num_replicas, rank=rank)
        pin_memory = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        if self.loader == "memory":
            return DataLoader(dataset, self.batch_size, sampler=sampler, collate_fn=keep_batch, pin_memory=pin_memory)
        return DataLoader(
            dataset,
            self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            persistent_workers=self.num_workers > 0,
            # Seeds the workers' random transforms: a new draw per epoch, the same draws per seed.
            generator=torch.Generator().manual_seed(self.seed + rank),
        )

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    # --- device-side batch work -----------------------------------------------------------------

    def transform_batch(self, batch: tuple[Tensor, Tensor], *, train: bool) -> tuple[Tensor, Tensor]:
        """Finishes a batch on its device: augment + normalise (memory loader), then MixUp/CutMix.

        ``on_after_batch_transfer`` calls this with ``train=trainer.training``; call it directly to
        use the loaders without a Trainer.
        """
        images, labels = batch
        if self.loader == "memory":
            if self._augment is None:
                raise RuntimeError(f"{type(self).__name__}.setup() must run before batches are transformed")
            images = self._augment(images, train=train)
        if train and self.mixing is not None:
            images, labels = self.mixing(images, labels)
        return images, labels

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Tensor):  # not a batch of ours: the model summary's example input
            return batch
        if self.trainer.training and self._augment is not None:
            # Crops of epoch e come from the stream of (seed, e), as the sampler's order does, so a
            # resumed run repeats the uninterrupted one.
            self._augment.set_epoch(self.trainer.current_epoch)
        return self.transform_batch(batch, train=self.trainer.training)
