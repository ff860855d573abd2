"""Pieces every backbone shares: the stem/features/head split, the classifier head, the choice of
the small-image stem, naming a layer in build errors."""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}  # a model's ``act`` option -> the layer
SMALL_INPUT_MAX_PX = 64  # largest image side (px) that still gets the small-image stem


def activation(act: str):
    """The activation layer class named ``act``; ValueError naming the allowed ones."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def small_input(image_size) -> bool:
    """True when ``image_size`` (px) is small enough for the small-image stem (<= 64 px), which has
    fewer early stride-2 steps; the configs set a backbone's ``small_input`` option with it.

    Raises:
        ValueError: ``image_size`` is not a positive integer.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive integer (pixels)")
    return image_size <= SMALL_INPUT_MAX_PX


class Backbone(nn.Module):
    """A classifier in three parts, as in timm: ``stem`` and ``features`` (``forward_features``),
    then ``head`` (``forward_head``). Subclasses build the three modules and set ``num_classes`` and
    ``num_features``."""

    stem: nn.Module
    features: nn.Module
    head: nn.Module

    @property
    def reduction(self) -> int:
        """Total stride from the input to the last feature map (timm's ``feature_info`` "reduction").

        The smallest sensible input side: below it the last layers would see a map that is mostly
        zero padding. Every downsampling step of these backbones is a strided convolution.
        """
        convs = (m for part in (self.stem, self.features) for m in part.modules() if isinstance(m, nn.Conv2d))
        return math.prod(conv.stride[0] for conv in convs)

    def check_input_size(self, image_size: int) -> None:
        """Raises a ValueError naming ``image_size`` when it is below :attr:`reduction`."""
        if image_size < self.reduction:
            raise ValueError(
                f"image_size={image_size} is too small for this {type(self).__name__}, which downsamples by "
                f"{self.reduction}: use at least {self.reduction}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClassifierHead(nn.Module):
    """Global average pool, dropout, fully connected layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.pool(x))))


@contextmanager
def naming_layer(name: str) -> Iterator[None]:
    """Prefix a ``ValueError`` raised while building a layer with that layer's name.

    A width or ``groups`` that fails deep inside the network is then reported as, say,
    ``features.3 (64 -> 128 channels): groups=3 must divide ...``.
    """
    try:
        yield
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
