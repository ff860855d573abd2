"""A name → constructor registry for backbones."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, fn: Callable[..., nn.Module]) -> None:
    """Register constructor ``fn`` as ``name``; a second model of the same name is a bug."""
    if name in _MODELS:
        raise RuntimeError(f"model {name!r} is already registered")
    _MODELS[name] = fn


def list_models() -> list[str]:
    """Names accepted by :func:`dsnet.models.create_model`."""
    return sorted(_MODELS)


def get_model_fn(arch: str) -> Callable[..., nn.Module]:
    if arch not in _MODELS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(list_models())}, "
                         "or timm:<name> / torchvision:<name> to convert")
    return _MODELS[arch]
