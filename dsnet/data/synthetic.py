"""Synthetic images for tests and smoke runs: seeded, any shape, and learnable.

Each class has a smooth random pattern (a 4x4 grid of Gaussian values upsampled to the image size);
an image is mid-grey plus its class pattern plus per-pixel Gaussian noise, stored as uint8. The
pattern is smooth, so it survives random crops and flips well enough for a tiny model to beat chance
within a few steps; the noise keeps the task from being trivial.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dsnet.data.base import ImageDataModule, check_float, check_int
from dsnet.data.datasets import ArraySource

PATTERN_GRID = 4  # side of the random grid a class pattern is upsampled from
SIGNAL_STD = 0.15  # standard deviation of a class pattern, on the 0..1 pixel scale


class SyntheticDataModule(ImageDataModule):
    """Seeded synthetic train/val/test loaders.

    Args:
        num_classes: number of classes (one pattern each).
        in_chans: image channels.
        image_size: side of the generated (and served) images, in pixels.
        batch_size: images per batch and per process.
        num_train: training images, the validation split included.
        num_test: test images.
        noise: standard deviation of the per-pixel noise, on the 0..1 pixel scale.
        val_size: validation images held out of ``num_train``: a count or a fraction.
        seed: seeds the patterns, the images, the split, the shuffles and the augmentation.
        **options: other shared options of ``ImageDataModule`` (num_workers, loader, crop_padding,
            hflip_prob, randaugment, mixup_alpha, cutmix_alpha).
    """

    name = "synthetic"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int = 32,
        batch_size: int = 64,
        num_train: int = 1024,
        num_test: int = 256,
        noise: float = 0.2,
        val_size: int | float = 0.125,
        seed: int = 0,
        **options,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            image_size=image_size,
            num_classes=num_classes,
            in_chans=in_chans,
            val_size=val_size,
            seed=seed,
            **options,
        )
        self.num_train = check_int("num_train", num_train, 2)
        self.num_test = check_int("num_test", num_test, 1)
        self.noise = check_float("noise", noise, 0.0, 1.0)
        self.native_size = image_size
        self.mean = (0.5,) * in_chans
        # Pattern and noise are independent, so their variances add (clipping at 0 and 1 ignored).
        self.std = (math.sqrt(SIGNAL_STD**2 + self.noise**2),) * in_chans

    def _source(self, train: bool) -> ArraySource:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.num_classes, self.in_chans, PATTERN_GRID, PATTERN_GRID)
        patterns = F.interpolate(torch.randn(shape, generator=generator), size=self.image_size, mode="bilinear")
        patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True) * SIGNAL_STD
        if not train:
            # The test set draws after the training set's numbers: same patterns, other images.
            self._draw(self.num_train, patterns, generator)
        labels, images = self._draw(self.num_train if train else self.num_test, patterns, generator)
        return ArraySource(images, labels, self.num_classes, origin=f"synthetic (seed {self.seed})")

    def _draw(self, num: int, patterns: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, self.num_classes, (num,), generator=generator)
        noise = torch.randn((num, *patterns.shape[1:]), generator=generator) * self.noise
        pixels = (0.5 + patterns[labels] + noise).clamp(0, 1)
        return labels, (pixels * 255).round().to(torch.uint8)
