"""Whole-batch augmentation on the device: per-sample crops and flips, resize, normalise.

The in-memory loader hands the model uint8 batches; this module turns them into normalised float
batches after they reach the device. Batched ``torchvision.transforms.v2`` calls draw ONE random
crop for the whole batch, which removes most of the augmentation's variety, so crops and flips here
are drawn per sample and applied with one ``gather`` (no Python loop over the batch). Random
numbers come from a generator on the batch's device reseeded from (seed, epoch) at every epoch, so
a run is repeatable, and a run resumed from an end-of-epoch checkpoint draws the same crops as one
that was never interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(
    images: Tensor, size: int, padding: int, hflip_prob: float, generator: torch.Generator | None = None
) -> Tensor:
    """Cuts one independently placed window per image, mirrored left-right with ``hflip_prob``.

    Crop and flip are one ``gather`` over the flattened padded images: the flip only reverses each
    mirrored image's column indices, so the batch is read once (about 3x faster than a gather for
    the crop followed by ``where(flip)``, for CIFAR-sized batches on CPU).

    Args:
        images: (N, C, H, W) batch, any dtype.
        size: side of the square output window; at most ``min(H, W) + 2 * padding``.
        padding: pixels of zeros added on every side before cropping.
        hflip_prob: probability of mirroring each image (0 never, 1 always).
        generator: random source for offsets and flips; on the same device as ``images``.

    Returns:
        (N, C, size, size) batch; image ``i`` equals ``padded[i, :, y_i:y_i + size, x_i:x_i + size]``,
        mirrored (``.flip(-1)``) for the images drawn to be flipped.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    padded_h, padded_w = padded.shape[-2:]
    if size > min(padded_h, padded_w):
        raise ValueError(f"crop size {size} is larger than the padded image ({padded_h}x{padded_w})")
    device = images.device
    offset_y = torch.randint(0, padded_h - size + 1, (n, 1), device=device, generator=generator)
    offset_x = torch.randint(0, padded_w - size + 1, (n, 1), device=device, generator=generator)
    flip = torch.rand(n, 1, device=device, generator=generator) < hflip_prob
    window = torch.arange(size, device=device)
    rows = offset_y + window  # (N, size)
    cols = offset_x + torch.where(flip, size - 1 - window, window)  # (N, size), reversed when flipped
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(n, 1, size * size).expand(n, c, -1)
    return padded.flatten(2).gather(2, index).view(n, c, size, size)


def center_crop(images: Tensor, size: int) -> Tensor:
    """Cuts the central ``size`` x ``size`` window of every image (a view, no copy)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def resize_and_normalize(images: Tensor, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """Converts uint8 images to float, resizes them to ``size`` if needed and normalises them.

    Args:
        images: (N, C, H, W) uint8 batch with values 0..255.
        size: output side in pixels; bilinear with antialiasing, as ``v2.Resize`` does.
        mean: per-channel mean on the 0..1 scale, shape (C,).
        std: per-channel standard deviation on the 0..1 scale, shape (C,).
    """
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # One fused affine map on the 0..255 scale instead of /255, -mean, /std as three passes.
    scale = 1.0 / (255.0 * std)
    return torch.addcmul((-mean / std).view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


class BatchAugment:
    """The device-side half of the in-memory loader: uint8 batch in, normalised float batch out.

    Training batches get a per-sample random crop (after zero padding) and a per-sample horizontal
    flip; evaluation batches get a center crop. Both are then resized to ``image_size`` when the crop
    has another size, and normalised.

    Args:
        crop_size: side of the crop taken from the stored images, in pixels.
        padding: zero padding added before a training crop, in pixels (0 = crop inside the image).
        hflip_prob: probability of a horizontal flip per training image (0 disables flips).
        image_size: side of the images the model sees, in pixels.
        mean: per-channel mean on the 0..1 scale.
        std: per-channel standard deviation on the 0..1 scale.
        seed: seed of the per-device generator that draws the crop offsets and flips; epoch ``e``
            draws from the stream of ``(seed, e)`` (see ``set_epoch``).
    """

    def __init__(
        self,
        *,
        crop_size: int,
        padding: int,
        hflip_prob: float,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        self.crop_size, self.padding, self.hflip_prob = crop_size, padding, hflip_prob
        self.image_size, self.seed = image_size, seed
        self.epoch = 0
        self.mean, self.std = tuple(mean), tuple(std)
        # Per device, created on first use: a seeded generator and the statistics as tensors, so no
        # batch pays for a host-to-device copy of the constants.
        self._state: dict[torch.device, tuple[torch.Generator, Tensor, Tensor]] = {}

    def _epoch_seed(self) -> int:
        # SeedSequence mixes the pair, so nearby (seed, epoch) pairs give unrelated streams.
        return int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)

    def set_epoch(self, epoch: int) -> None:
        """Restarts the random stream at the one of ``(seed, epoch)``; a no-op for the current epoch."""
        if epoch != self.epoch:
            self.epoch = epoch
            for generator, _, _ in self._state.values():
                generator.manual_seed(self._epoch_seed())

    def _device_state(self, device: torch.device) -> tuple[torch.Generator, Tensor, Tensor]:
        if device not in self._state:
            generator = torch.Generator(device=device).manual_seed(self._epoch_seed())
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device)
            std = torch.tensor(self.std, dtype=torch.float32, device=device)
            self._state[device] = (generator, mean, std)
        return self._state[device]

    def __call__(self, images: Tensor, *, train: bool) -> Tensor:
        """Augments (when ``train``) and normalises an (N, C, H, W) uint8 batch."""
        generator, mean, std = self._device_state(images.device)
        if train:
            images = random_crop_flip(images, self.crop_size, self.padding, self.hflip_prob, generator)
        else:
            images = center_crop(images, self.crop_size)
        return resize_and_normalize(images, self.image_size, mean, std)
