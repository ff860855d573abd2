"""The block library every dsnet backbone is built from.

The convolution types a user can switch between:

* ``standard``: one full k×k convolution, k·k·C_in·C_out weights.
* ``dsconv``:   depthwise k×k (groups = C_in) then pointwise 1×1, k·k·C_in + C_in·C_out weights.
* ``group``:    grouped k×k with ``groups`` groups then pointwise 1×1; groups = C_in is exactly ``dsconv``.

:func:`spatial_groups` is the one place that maps a convolution type to the ``groups`` of its k×k
step, and :func:`conv2d` the one place an ``nn.Conv2d`` is made, so "depthwise means groups == in_chs"
and "groups must divide both channel counts" are each written once. :func:`spatial_conv` is one k×k
layer of any type with nothing between its steps, the drop-in the ResNets and network conversion use.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

CONV_TYPES = ("standard", "dsconv", "group")

LayerFactory = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% below it.

    The rule of the TensorFlow MobileNet code (and torchvision, timm), so width multipliers give the
    same channel counts as the reference implementations.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 (and halves it, rounded up, at stride 2)."""
    return dilation * (kernel_size - 1) // 2


def check_groups(in_chs: int, out_chs: int, groups: int) -> None:
    """Raise ``ValueError`` unless ``groups`` is a positive divisor of both channel counts."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups={groups!r} must be a positive integer")
    if in_chs % groups or out_chs % groups:
        raise ValueError(
            f"groups={groups} must divide both in_chs={in_chs} and out_chs={out_chs}"
        )


def conv2d(
    in_chs: int,
    out_chs: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    """A validated ``nn.Conv2d``; ``padding=None`` means "same"."""
    check_groups(in_chs, out_chs, groups)
    if padding is None:
        padding = same_padding(kernel_size, dilation)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias)


def spatial_groups(conv: str, in_chs: int, groups: int | None = None) -> int:
    """``groups`` of the k×k step of convolution type ``conv`` on ``in_chs`` channels.

    This is the single definition of what each convolution type means.
    """
    if conv == "standard":
        return 1
    if conv == "dsconv":
        return in_chs  # depthwise: one k×k filter per input channel, no mixing
    if conv == "group":
        if groups is None:
            raise ValueError("conv='group' needs groups (a positive divisor of the channel counts)")
        return groups
    raise ValueError(f"unknown conv type {conv!r}; expected one of {', '.join(CONV_TYPES)}")


def depthwise_conv(
    in_chs: int, kernel_size: int = 3, stride: int = 1, depth_multiplier: int = 1, **kwargs
) -> nn.Conv2d:
    """Depthwise k×k convolution: groups = in_chs, ``depth_multiplier``·in_chs outputs."""
    groups = spatial_groups("dsconv", in_chs)
    return conv2d(in_chs, in_chs * depth_multiplier, kernel_size, stride, groups=groups, **kwargs)


def pointwise_conv(in_chs: int, out_chs: int, bias: bool = False) -> nn.Conv2d:
    """Pointwise 1×1 convolution: mixes channels, no spatial extent."""
    return conv2d(in_chs, out_chs, 1, bias=bias)


def grouped_conv(
    in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, **kwargs
) -> nn.Conv2d:
    """Grouped k×k convolution: k·k·(in_chs/g)·(out_chs/g)·g weights."""
    return conv2d(in_chs, out_chs, kernel_size, stride, groups=groups, **kwargs)


def _norm(norm_layer: LayerFactory | None, chs: int) -> nn.Module:
    return nn.Identity() if norm_layer is None else norm_layer(chs)


def _act(act_layer: LayerFactory | None) -> nn.Module:
    return nn.Identity() if act_layer is None else act_layer(inplace=True)


class ConvNormAct(nn.Module):
    """Convolution, normalisation, activation: the atom of every block.

    ``bias`` defaults to ``norm_layer is None`` (a bias before batch norm is redundant);
    ``act_layer=None`` gives a linear projection.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ):
        super().__init__()
        bias = norm_layer is None if bias is None else bias
        self.conv = conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias)
        self.bn = _norm(norm_layer, out_chs)
        self.act = _act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv(nn.Module):
    """Grouped (or depthwise) k×k step, then pointwise 1×1, each followed by norm and activation.

    ``conv_dw`` is the k×k step with ``groups`` groups and ``depth_multiplier``·in_chs outputs; it is
    depthwise exactly when groups == in_chs. ``norm_layer=None, act_layer=None`` leaves the bare two
    convolutions.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        depth_multiplier: int = 1,
        bias: bool = False,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ):
        super().__init__()
        if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
            raise ValueError(f"depth_multiplier={depth_multiplier!r} must be a positive integer")
        mid_chs = in_chs * depth_multiplier
        self.conv_dw = conv2d(in_chs, mid_chs, kernel_size, stride, padding, dilation, groups, bias)
        self.bn1 = _norm(norm_layer, mid_chs)
        self.act1 = _act(act_layer)
        self.conv_pw = pointwise_conv(mid_chs, out_chs, bias)
        self.bn2 = _norm(norm_layer, out_chs)
        self.act2 = _act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class DepthwiseSeparableConv(SeparableConv):
    """Depthwise k×k (groups = in_chs) then pointwise 1×1: MobileNetV1's building block."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        depth_multiplier: int = 1,
        bias: bool = False,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ):
        super().__init__(
            in_chs, out_chs, kernel_size, stride, padding, dilation,
            groups=spatial_groups("dsconv", in_chs), depth_multiplier=depth_multiplier,
            bias=bias, norm_layer=norm_layer, act_layer=act_layer,
        )


def create_conv_block(
    conv: str,
    in_chs: int,
    out_chs: int,
    kernel_size: int = 3,
    stride: int = 1,
    *,
    groups: int | None = None,
    depth_multiplier: int = 1,
    bias: bool = False,
    norm_layer: LayerFactory | None = nn.BatchNorm2d,
    act_layer: LayerFactory | None = nn.ReLU,
) -> nn.Module:
    """The factory: one k×k layer from ``in_chs`` to ``out_chs`` of convolution type ``conv``.

    ``bias`` is the same for every type, so the types differ in their convolutions alone.
    """
    k_groups = spatial_groups(conv, in_chs, groups)
    if conv == "standard":
        return ConvNormAct(in_chs, out_chs, kernel_size, stride, bias=bias, norm_layer=norm_layer,
                           act_layer=act_layer)
    return SeparableConv(
        in_chs, out_chs, kernel_size, stride, groups=k_groups, depth_multiplier=depth_multiplier,
        bias=bias, norm_layer=norm_layer, act_layer=act_layer,
    )


def spatial_conv(
    conv: str,
    in_chs: int,
    out_chs: int,
    kernel_size: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str | None = None,
    dilation: int | tuple[int, int] = 1,
    *,
    groups: int | None = None,
    bias: bool = False,
) -> nn.Module:
    """One k×k convolution of type ``conv`` with nothing between its steps: a drop-in for a full k×k conv.

    ``standard`` is a single ``nn.Conv2d``; ``dsconv`` and ``group`` are a :class:`SeparableConv`
    (``conv_dw`` with :func:`spatial_groups` groups, then ``conv_pw``) with no norm and no activation
    between the two steps, as in Xception (Chollet 2017, section 4.7: "the absence of any
    non-linearity leads to both faster convergence and better final performance"); whatever norm and
    activation followed the replaced convolution follow ``conv_pw``. MobileNet (Howard et al. 2017)
    puts BN + ReLU between them instead (:func:`create_conv_block`). Stride, padding and dilation go
    to the k×k step, so the output shape is that of the full convolution. ``bias`` goes on the
    pointwise step only: a bias on the depthwise step would pass through the linear pointwise step
    and be absorbed by its bias.
    """
    k_groups = spatial_groups(conv, in_chs, groups)
    if conv == "standard":
        return conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, bias=bias)
    block = SeparableConv(in_chs, out_chs, kernel_size, stride, padding, dilation, groups=k_groups,
                          norm_layer=None, act_layer=None)
    if bias:
        block.conv_pw = pointwise_conv(in_chs, out_chs, bias=True)
    return block


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1×1, k×k spatial step, linear 1×1 projection, residual if shapes allow.

    The spatial step's convolution type follows ``conv`` (depthwise for ``dsconv``, as in the paper).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        conv: str = "dsconv",
        groups: int | None = None,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU6,
    ):
        super().__init__()
        hidden_chs = int(round(in_chs * expand_ratio))
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = (
            ConvNormAct(in_chs, hidden_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
            if hidden_chs != in_chs else nn.Identity()
        )
        self.conv_dw = ConvNormAct(
            hidden_chs, hidden_chs, kernel_size, stride,
            groups=spatial_groups(conv, hidden_chs, groups), norm_layer=norm_layer, act_layer=act_layer,
        )
        self.conv_pwl = ConvNormAct(hidden_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.has_skip else out


def init_weights(model: nn.Module) -> None:
    """Group-aware He init for convs (fan-out counts only the channels one filter group sees)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            fan_out = k_h * k_w * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)

