"""LightningDataModules for the datasets dsnet trains on, and their shared pieces.

Each module maps one-to-one onto a config in ``configs/data/``; all of them expose ``num_classes``,
``in_chans`` and ``image_size`` for the model config to interpolate.
"""

from dsnet.data.base import ImageDataModule
from dsnet.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from dsnet.data.decoded_cache import DecodedCache, load_or_build
from dsnet.data.fashion_mnist import FashionMNISTDataModule
from dsnet.data.imagenet_subset import ImageNetSubsetDataModule, resolve_classes
from dsnet.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DecodedCache",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageNetSubsetDataModule",
    "SyntheticDataModule",
    "load_or_build",
    "resolve_classes",
]
