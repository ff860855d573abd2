"""Per-sample ``torchvision.transforms.v2`` pipelines and batch-level mixing.

These are the ordinary, per-image transforms (run in DataLoader workers): the reference the in-memory
path (``gpu_augment``) is compared against, and the default for ImageNet subsets, whose images
differ in size and must be decoded one by one anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Standard ImageNet evaluation: resize to image_size / 0.875 (256 for 224), then center-crop.
EVAL_CROP_FRACTION = 0.875


def eval_resize_size(image_size: int) -> int:
    """Side the shorter edge is resized to before the center crop (timm rounds down too)."""
    return math.floor(image_size / EVAL_CROP_FRACTION)


def _finish(image_size: int | None, mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    resize = [v2.Resize(image_size, antialias=True)] if image_size is not None else []
    return [*resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def small_image_transform(
    *,
    train: bool,
    native_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    padding: int,
    hflip_prob: float,
    randaugment: bool,
) -> v2.Compose:
    """Per-sample pipeline for small fixed-size datasets (Fashion-MNIST, CIFAR, synthetic).

    Training: random crop after zero padding, horizontal flip, optional RandAugment; then (train and
    eval) resize to ``image_size`` if it differs from ``native_size``, convert to float, normalise.
    The same steps, in the same order, as ``gpu_augment.BatchAugment`` does on whole batches.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if train:
        if padding:
            steps.append(v2.RandomCrop(native_size, padding=padding))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if randaugment:
            steps.append(v2.RandAugment())
    return v2.Compose(steps + _finish(image_size if image_size != native_size else None, mean, std))


def imagenet_transform(
    *,
    train: bool,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip_prob: float,
    randaugment: bool,
) -> v2.Compose:
    """Standard ImageNet pipeline for PIL images of any size.

    Training: random-resized crop to ``image_size`` and horizontal flip (plus optional RandAugment).
    Evaluation: resize the shorter side to ``image_size / 0.875``, then center-crop ``image_size``.
    """
    if train:
        steps: list[v2.Transform] = [v2.ToImage(), v2.RandomResizedCrop(image_size, antialias=True)]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if randaugment:
            steps.append(v2.RandAugment())
    else:
        steps = [v2.ToImage(), v2.Resize(eval_resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + _finish(None, mean, std))


def batch_mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix applied to whole (images, labels) batches; None when both are off.

    With both on, each batch gets one of the two, chosen at random. The labels come out as soft
    targets of shape (N, num_classes) (float), which ``F.cross_entropy`` accepts directly.
    """
    mixers: list[v2.Transform] = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
