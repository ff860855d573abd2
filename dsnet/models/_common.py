"""Pieces every backbone shares: the classifier head and naming a layer in build errors."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


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
