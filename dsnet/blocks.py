"""The block library every dsnet backbone is built from.

The convolution types a user can switch between:

* ``standard``: one full k×k convolution, k·k·C_in·C_out weights.
* ``dsconv``:   depthwise k×k (groups = C_in) then pointwise 1×1, k·k·C_in + C_in·C_out weights.
* ``group``:    grouped k×k with ``groups`` groups then pointwise 1×1; groups = C_in is exactly ``dsconv``.
* ``repdsconv``: MobileOne's re-parameterisable separable block (Vasu et al. 2023, "MobileOne: An
  Improved One millisecond Mobile Backbone", arXiv:2206.04040): while training, the depthwise step is
  ``rep_branches`` parallel depthwise k×k conv-BN branches plus a 1×1 depthwise scale branch and, at
  stride 1, a BN identity branch; the pointwise step ``rep_branches`` 1×1 conv-BN branches plus a BN
  identity branch when C_in = C_out. :func:`dsnet.models.deploy.deploy_form` fuses it into exactly the
  depthwise + pointwise pair of ``dsconv``. Built from timm's ``MobileOneBlock``.
* ``pconv``:    FasterNet's partial convolution (Chen et al. 2023, "Run, Don't Walk", arXiv:2303.03667):
  a full k×k on the first ⌊r·C_in⌋ channels (r = 1/4 by default), the rest passed on untouched, then
  pointwise 1×1 mixing; k·k·(r·C_in)² + C_in·C_out weights.
* ``fused``:    fused MBConv (EfficientNetV2, Tan & Le 2021, arXiv:2104.00298): the inverted
  residual's expansion 1×1 and depthwise k×k replaced by one full k×k; a block of inverted-residual
  networks only (timm's ``EdgeResidual``), see :func:`inverted_residual`.

The file is longer than the house's ~300 lines because the factory and every block it can return
belong together: the convolution types are defined in one place.

:func:`spatial_groups` is the one place that maps a convolution type to the ``groups`` of its k×k
step, and :func:`conv2d` the one place an ``nn.Conv2d`` is made, so "depthwise means groups == in_chs"
and "groups must divide both channel counts" are each written once. :func:`spatial_conv` is one k×k
layer of any type with nothing between its steps, the drop-in the ResNets and network conversion use.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from timm.models._efficientnet_blocks import EdgeResidual
from timm.models.byobnet import LayerFn, MobileOneBlock
from torch import nn

CONV_TYPES = ("standard", "dsconv", "group", "repdsconv", "pconv", "fused")
LAYER_CONV_TYPES = CONV_TYPES[:-1]  # the types one k×k layer can be; fused MBConv is a whole block
DW_KERNEL_SIZES = (3, 5, 7)  # the spatial kernel sizes a backbone's ``dw_kernel_size`` offers

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
    if conv in ("dsconv", "repdsconv"):
        return in_chs  # depthwise: one k×k filter per input channel, no mixing
    if conv in ("pconv", "fused"):
        return 1  # a full k×k (on a fraction of the channels for pconv)
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


class PartialConv(nn.Module):
    """FasterNet's PConv: a full k×k on the first ``dim_conv`` = ⌊ratio·chs⌋ channels, the rest untouched.

    timm's ``Partial_conv3`` (``split_cat`` forward) generalised to any odd kernel and a stride: at
    stride s the untouched channels are sampled every s pixels, at the k×k's centres, so the output is
    the shape a strided k×k conv on all channels would give.
    """

    def __init__(self, chs: int, kernel_size: int = 3, stride: int = 1, ratio: float = 0.25):
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"pconv_ratio={ratio!r} must be a number in (0, 1]")
        self.dim_conv = max(1, int(chs * ratio))
        self.dim_untouched = chs - self.dim_conv
        self.stride = stride
        self.conv = conv2d(self.dim_conv, self.dim_conv, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        if self.stride > 1:
            x2 = x2[:, :, ::self.stride, ::self.stride]
        return torch.cat((self.conv(x1), x2), 1)


class PartialSeparableConv(nn.Module):
    """Partial k×k (:class:`PartialConv`) then pointwise 1×1, norm and activation after the pointwise step.

    As in FasterNet's block, nothing sits between the two steps: most channels pass the partial step
    untouched, and a norm there would rescale them for nothing.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        ratio: float = 0.25,
        bias: bool = False,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ):
        super().__init__()
        self.conv_partial = PartialConv(in_chs, kernel_size, stride, ratio)
        self.conv_pw = pointwise_conv(in_chs, out_chs, bias)
        self.bn = _norm(norm_layer, out_chs)
        self.act = _act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_pw(self.conv_partial(x))))


def _rep_layers(act_layer: LayerFactory | None) -> LayerFn:
    return LayerFn(act=nn.Identity if act_layer is None else act_layer)


def _check_branches(num_branches: int) -> None:
    if isinstance(num_branches, bool) or not isinstance(num_branches, int) or num_branches < 1:
        raise ValueError(f"rep_branches={num_branches!r} must be a positive integer")


def _reparameterized(block: MobileOneBlock) -> nn.Conv2d:
    """The one convolution (with bias) ``block``'s branches add up to in eval mode; ``block`` is left as it is."""
    block = copy.deepcopy(block)
    block.reparameterize()
    return block.reparam_conv


class RepConvNormAct(MobileOneBlock):
    """A k×k conv-norm-act step trained as MobileOne branches; :meth:`fuse` gives the :class:`ConvNormAct`.

    The fused form has the conv (with the branches' summed bias), no norm and the same activation:
    what :func:`dsnet.models.deploy.deploy_form` makes of a plain :class:`ConvNormAct` of that shape.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 num_branches: int = 1, act_layer: LayerFactory | None = nn.ReLU):
        _check_branches(num_branches)
        check_groups(in_chs, out_chs, groups)
        super().__init__(in_chs, out_chs, kernel_size, stride, group_size=in_chs // groups,
                         num_conv_branches=num_branches, layers=_rep_layers(act_layer))

    def fuse(self) -> ConvNormAct:
        """The inference form (timm's ``reparameterize_model`` calls this)."""
        fused = _reparameterized(self)
        out = ConvNormAct(fused.in_channels, fused.out_channels, fused.kernel_size[0], fused.stride[0],
                          groups=fused.groups, bias=True, norm_layer=None, act_layer=None)
        out.conv.load_state_dict(fused.state_dict())
        out.act = self.act
        return out


class RepSeparableConv(nn.Module):
    """MobileOne's separable block: ``conv_dw`` (depthwise k×k) and ``conv_pw`` (1×1), each a
    timm ``MobileOneBlock`` with ``num_branches`` conv-BN branches and its activation.

    :meth:`fuse` returns the :class:`SeparableConv` (``conv_dw``, ``act1``, ``conv_pw``, ``act2``, no
    norms) it equals in eval mode. Without an activation (``act_layer=None``, the drop-in of
    :func:`spatial_conv`) the depthwise bias passes linearly through the pointwise step and is moved
    into its bias, so the fused form is the bare depthwise + pointwise pair of ``dsconv`` there too.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, num_branches: int = 1,
                 act_layer: LayerFactory | None = nn.ReLU):
        super().__init__()
        self.conv_dw = RepConvNormAct(in_chs, in_chs, kernel_size, stride, in_chs, num_branches, act_layer)
        self.conv_pw = RepConvNormAct(in_chs, out_chs, 1, 1, 1, num_branches, act_layer)
        self.has_act = act_layer is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))

    def fuse(self) -> SeparableConv:
        """The inference form (timm's ``reparameterize_model`` calls this)."""
        dw, pw = _reparameterized(self.conv_dw), _reparameterized(self.conv_pw)
        out = SeparableConv(dw.in_channels, pw.out_channels, dw.kernel_size[0], dw.stride[0], groups=dw.groups,
                            bias=True, norm_layer=None, act_layer=None)
        with torch.no_grad():
            out.conv_dw.weight.copy_(dw.weight)
            out.conv_pw.weight.copy_(pw.weight)
            if self.has_act:
                out.conv_dw.bias.copy_(dw.bias)
                out.conv_pw.bias.copy_(pw.bias)
                out.act1, out.act2 = self.conv_dw.act, self.conv_pw.act
            else:  # pw(dw(x) + b_dw) = pw(dw(x)) + W_pw · b_dw
                out.conv_dw.bias = None
                out.conv_pw.bias.copy_(pw.bias + pw.weight.flatten(1) @ dw.bias)
        return out


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
    pconv_ratio: float = 0.25,
    rep_branches: int = 1,
) -> nn.Module:
    """The factory: one k×k layer from ``in_chs`` to ``out_chs`` of convolution type ``conv``.

    ``bias`` is the same for every type, so the types differ in their convolutions alone.
    ``pconv_ratio`` is ``pconv``'s r, ``rep_branches`` ``repdsconv``'s number of conv-BN branches.
    """
    k_groups = spatial_groups(conv, in_chs, groups)
    if conv == "fused":
        raise ValueError("conv='fused' (fused MBConv) replaces an inverted residual's expansion and depthwise "
                         f"steps: a block, not a layer; expected one of {', '.join(LAYER_CONV_TYPES)}")
    if conv in ("repdsconv", "pconv") and depth_multiplier != 1:
        raise ValueError(f"depth_multiplier={depth_multiplier!r} is only used with conv='dsconv' or 'group'")
    if conv == "standard":
        return ConvNormAct(in_chs, out_chs, kernel_size, stride, bias=bias, norm_layer=norm_layer,
                           act_layer=act_layer)
    if conv == "pconv":
        return PartialSeparableConv(in_chs, out_chs, kernel_size, stride, pconv_ratio, bias, norm_layer, act_layer)
    if conv == "repdsconv":
        if norm_layer is None or bias:
            raise ValueError("conv='repdsconv' trains batch-norm branches: it needs norm_layer and no bias")
        return RepSeparableConv(in_chs, out_chs, kernel_size, stride, rep_branches, act_layer)
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
    pconv_ratio: float = 0.25,
    rep_branches: int = 1,
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
    and be absorbed by its bias. ``pconv`` is :class:`PartialSeparableConv` and ``repdsconv``
    :class:`RepSeparableConv`, both bare (no norm, no activation after the pointwise step); they take
    a square kernel, "same" padding and no dilation.
    """
    k_groups = spatial_groups(conv, in_chs, groups)
    if conv == "standard":
        return conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, bias=bias)
    if conv in ("repdsconv", "pconv"):
        kernel, step = _square(kernel_size, conv, "kernel_size"), _square(stride, conv, "stride")
        if _square(dilation, conv, "dilation") != 1 or padding not in (None, same_padding(kernel),
                                                                        (same_padding(kernel),) * 2):
            raise ValueError(f"conv={conv!r} takes only 'same' padding and no dilation "
                             f"(got padding={padding!r}, dilation={dilation!r})")
        if conv == "pconv":
            return PartialSeparableConv(in_chs, out_chs, kernel, step, pconv_ratio, bias, None, None)
        if bias:
            raise ValueError("conv='repdsconv' trains batch-norm branches: it replaces only convolutions without bias")
        return RepSeparableConv(in_chs, out_chs, kernel, step, rep_branches, act_layer=None)
    if conv == "fused":
        raise ValueError(f"conv='fused' is a block of inverted-residual networks, not one k×k layer; "
                         f"expected one of {', '.join(LAYER_CONV_TYPES)}")
    block = SeparableConv(in_chs, out_chs, kernel_size, stride, padding, dilation, groups=k_groups,
                          norm_layer=None, act_layer=None)
    if bias:
        block.conv_pw = pointwise_conv(in_chs, out_chs, bias=True)
    return block


def _square(value: int | tuple[int, int], conv: str, name: str) -> int:
    """The side of a square ``kernel_size``/``stride``/``dilation``, given as an int or a pair."""
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return value[0]
    raise ValueError(f"conv={conv!r} takes a square {name}, not {name}={value!r}")


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1×1, k×k spatial step, linear 1×1 projection, residual if shapes allow.

    The spatial step ``conv_dw`` follows ``conv``: depthwise for ``dsconv`` (the paper), full for
    ``standard``, grouped for ``group``, a MobileOne-branched depthwise step for ``repdsconv``
    (:class:`RepConvNormAct`), a bare :class:`PartialConv` on the expanded channels for ``pconv``.
    ``fused`` is another block, :func:`inverted_residual` builds it.
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
        pconv_ratio: float = 0.25,
        rep_branches: int = 1,
    ):
        super().__init__()
        hidden_chs = int(round(in_chs * expand_ratio))
        k_groups = spatial_groups(conv, hidden_chs, groups)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = (
            ConvNormAct(in_chs, hidden_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
            if hidden_chs != in_chs else nn.Identity()
        )
        if conv == "fused":
            raise ValueError("conv='fused' is a block of its own: build it with inverted_residual()")
        if conv == "repdsconv":
            self.conv_dw = RepConvNormAct(hidden_chs, hidden_chs, kernel_size, stride, k_groups, rep_branches,
                                          act_layer)
        elif conv == "pconv":
            self.conv_dw = PartialConv(hidden_chs, kernel_size, stride, pconv_ratio)
        else:
            self.conv_dw = ConvNormAct(hidden_chs, hidden_chs, kernel_size, stride, groups=k_groups,
                                       norm_layer=norm_layer, act_layer=act_layer)
        self.conv_pwl = ConvNormAct(hidden_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.has_skip else out


def inverted_residual(conv: str, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 6,
                      kernel_size: int = 3, act_layer: LayerFactory = nn.ReLU6, **kwargs) -> nn.Module:
    """An inverted residual of type ``conv``: :class:`InvertedResidual`, or for ``fused`` timm's
    ``EdgeResidual`` (fused MBConv: full k×k ``conv_exp`` to the expanded width, ``bn1``, linear 1×1
    ``conv_pwl``, ``bn2``, the same skip rule), k·k·C_in·C_hidden + C_hidden·C_out weights.
    ``kwargs`` go to :class:`InvertedResidual` (``groups``, ``pconv_ratio``, ``rep_branches``)."""
    if conv != "fused":
        return InvertedResidual(in_chs, out_chs, stride, expand_ratio, kernel_size, conv, act_layer=act_layer,
                                **kwargs)
    hidden_chs = int(round(in_chs * expand_ratio))
    block = EdgeResidual(in_chs, out_chs, kernel_size, stride, exp_ratio=expand_ratio, act_layer=act_layer)
    assert block.conv_exp.out_channels == hidden_chs, "timm rounds the expanded width like InvertedResidual"
    return block


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

