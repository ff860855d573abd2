"""Pieces every backbone shares: the stem/features/head split, the classifier head, the choice of
the small-image stem, naming a layer in build errors."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from dsnet.blocks import DW_KERNEL_SIZES

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


def stage_convs(model: str, conv: str, stage_conv: Sequence[str] | None, num_stages: int,
                allowed: Sequence[str]) -> tuple[str, ...]:
    """The convolution type of each of a backbone's ``num_stages`` stages.

    ``stage_conv`` (one type per stage) when given, else ``conv`` in every stage. ValueError, naming the
    value and what ``model`` allows, for a type it does not offer or a list of the wrong length.
    """
    if conv not in allowed:
        raise ValueError(f"conv={conv!r} is not available in {model}; expected one of {', '.join(allowed)}")
    if stage_conv is None:
        return (conv,) * num_stages
    if isinstance(stage_conv, str) or not isinstance(stage_conv, Sequence):
        raise ValueError(f"stage_conv={stage_conv!r} must be a list of {num_stages} conv types, one per stage "
                         f"of {model}")
    convs = list(stage_conv)
    if len(convs) != num_stages:
        raise ValueError(f"stage_conv={convs!r} has {len(convs)} entries; {model} has {num_stages} stages: "
                         "give one conv type per stage")
    for i, stage in enumerate(convs):
        if stage not in allowed:
            raise ValueError(f"stage_conv[{i}]={stage!r} is not available in {model}; expected one of "
                             f"{', '.join(allowed)}")
    return tuple(convs)


def check_kernel_size(dw_kernel_size: int) -> None:
    """ValueError unless ``dw_kernel_size`` is one of :data:`dsnet.blocks.DW_KERNEL_SIZES`."""
    if type(dw_kernel_size) is not int or dw_kernel_size not in DW_KERNEL_SIZES:
        raise ValueError(f"dw_kernel_size={dw_kernel_size!r}; expected one of "
                         f"{', '.join(map(str, DW_KERNEL_SIZES))}")


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
        zero padding. Every downsampling step of these backbones is a strided convolution; a block's
        stride is its largest convolution stride (parallel branches, as in ``repdsconv``, stride alike).
        """
        def stride(block: nn.Module) -> int:
            return max((m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d)), default=1)

        return math.prod(stride(block) for block in (self.stem, *self.features.children()))

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
