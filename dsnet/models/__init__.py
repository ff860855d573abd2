"""Backbones and the one way to build them: :func:`create_model`.

Networks are plain ``nn.Module`` objects: nothing here imports Lightning or Hydra. What a network
costs (parameters, multiply-adds, per :func:`layer_type`) is counted in :mod:`dsnet.models.cost`.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

from torch import nn

from dsnet.blocks import CONV_TYPES
from dsnet.models import mobilenet_v1, mobilenet_v2, resnet  # noqa: F401  (registers the models)
from dsnet.models._common import small_input
from dsnet.models._registry import get_model_fn, list_models
from dsnet.models.convert import create_converted, is_source
from dsnet.models.cost import layer_type
from dsnet.models.mobilenet_v1 import MobileNetV1
from dsnet.models.mobilenet_v2 import MobileNetV2
from dsnet.models.resnet import ResNet

__all__ = ["create_model", "layer_type", "list_models", "small_input", "MobileNetV1", "MobileNetV2", "ResNet"]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def create_model(
    arch: str,
    *,
    conv: str = "dsconv",
    width: float = 1.0,
    num_classes: int = 1000,
    in_chans: int = 3,
    **arch_options,
) -> nn.Module:
    """Build backbone ``arch`` with convolution type ``conv`` and width multiplier ``width``.

    Args:
        arch: one of :func:`list_models`, or a network to convert, ``timm:<name>`` or
            ``torchvision:<name>`` (:mod:`dsnet.models.convert`; options ``convert_stem``, ``image_size``).
        conv: ``standard``, ``dsconv``, ``group`` (needs ``groups=...``), ``repdsconv``, ``pconv`` or
            ``fused`` (MobileNetV2 only); see :mod:`dsnet.blocks`. ``stage_conv=[...]`` sets one per stage.
        width: width multiplier α, any positive number; channel counts are rounded to multiples of 8.
        num_classes: size of the classifier output.
        in_chans: input channels (1 for grayscale data).
        **arch_options: the architecture's own options, e.g. ``small_input``, ``groups``, ``dropout``,
            ``stage_conv``, ``dw_kernel_size``, ``pconv_ratio``, ``rep_branches``.

    Raises:
        ValueError: an unknown arch, conv type or option, or a value out of range, named in the message.
    """
    if is_source(arch):
        source = arch_options.pop("source", arch)  # configs/model/convert.yaml sets arch: ${.source}
        if source != arch:
            raise ValueError(f"arch={arch!r} and source={source!r} name different networks")
        model_cls = functools.partial(create_converted, arch)
    else:
        model_cls = get_model_fn(arch)
    if conv not in CONV_TYPES:
        raise ValueError(f"unknown conv type {conv!r}; expected one of {', '.join(CONV_TYPES)}")
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not 0 < width < math.inf:
        raise ValueError(f"width={width!r} must be a finite positive number")
    _positive_int("num_classes", num_classes)
    _positive_int("in_chans", in_chans)

    common = {"conv", "width", "num_classes", "in_chans"}
    allowed = sorted(set(inspect.signature(model_cls).parameters) - common)
    unknown = sorted(set(arch_options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for arch {arch!r}; expected any of {', '.join(allowed)}"
        )
    groups = arch_options.get("groups")
    stage_conv = arch_options.get("stage_conv")
    stage_types = set() if stage_conv is None or isinstance(stage_conv, str) else {
        c for c in stage_conv if isinstance(c, str)}  # the backbone refuses a bad stage_conv in one line
    if "group" in {conv} | stage_types:
        _positive_int("groups", groups)
    elif groups is not None:
        raise ValueError(f"groups={groups!r} is only used with conv='group' (got conv={conv!r})")
    return model_cls(conv=conv, width=float(width), num_classes=num_classes, in_chans=in_chans, **arch_options)
