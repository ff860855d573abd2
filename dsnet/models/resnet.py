"""ResNet-18/34/50 (He et al. 2016, "Deep Residual Learning for Image Recognition", CVPR,
arXiv:1512.03385), built from dsnet's block library with the same ``conv`` switch as MobileNet.

``conv="standard"`` is torchvision's ``resnet18``/``resnet34``/``resnet50`` (the same parameter
counts, 11,689,512 / 21,797,672 / 25,557,032 at 1000 classes, and multiply-adds): BasicBlocks or
Bottlenecks with projection shortcuts (the paper's option B) where the shape changes, and, as in
torchvision ("ResNet v1.5"), the stride of a Bottleneck on its 3×3 convolution, not on the first 1×1.
``conv="dsconv"`` replaces every 3×3 convolution of the residual branches by depthwise 3×3 +
pointwise 1×1, ``conv="group"`` by ``groups``-way grouped 3×3 + pointwise 1×1, through
:func:`dsnet.blocks.spatial_conv`: nothing between the two steps (Xception's choice, Chollet 2017,
section 4.7; MobileNet puts BN + ReLU there), so the BN and ReLU of the full convolution follow
the pointwise step and the block keeps its layout. 1×1 convolutions are left as they are.

``conv`` may also be ``repdsconv`` (MobileOne's re-parameterisable depthwise + pointwise, bare) or
``pconv`` (FasterNet's partial convolution, ``pconv_ratio`` of the channels, then pointwise); fused
MBConv belongs to inverted residuals and is not offered. ``stage_conv`` gives one type per stage
(the four rows of the table below), e.g. ``[standard, standard, dsconv, dsconv]``;
``dw_kernel_size`` (3, 5 or 7) is the kernel of the residual branches' spatial convolutions.

The stem stays a full convolution unless ``convert_stem=True``, as MobileNet's and Xception's first
layers do: it sees the 1 or 3 image channels, and a depthwise step on so few channels followed by a
pointwise one gives every stem output the same few filtered maps.

``small_input=True`` is the small-image stem of the CIFAR ResNets (kuangliu/pytorch-cifar): one 3×3
stride-1 convolution and no max pool, a total stride of 8 instead of 32 (a 32 px input ends at 4×4).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Callable, NamedTuple

import torch
from torch import nn

from dsnet.blocks import LAYER_CONV_TYPES, conv2d, init_weights, make_divisible, spatial_conv
from dsnet.models._common import (
    Backbone,
    ClassifierHead,
    activation,
    check_kernel_size,
    naming_layer,
    stage_convs,
)
from dsnet.models._registry import register_model

STEM_CHS = 64  # Table 1, conv1: 7×7, 64, stride 2, then a 3×3 max pool, stride 2


class Stage(NamedTuple):
    chs: int     # width of the stage's 3×3 convolutions (a Bottleneck outputs 4 × chs)
    stride: int  # of the stage's first block


# He et al. 2016, Table 1: the four stages after the stem, the same for every depth; stage_conv[i] is
# the conv type of row i's residual branches.
#      chs  stride    # Table 1 row: output size at 224 px
STAGES = (
    Stage(64, 1),     # conv2_x: 56×56 (the stem's max pool did the downsampling)
    Stage(128, 2),    # conv3_x: 28×28
    Stage(256, 2),    # conv4_x: 14×14
    Stage(512, 2),    # conv5_x: 7×7
)

# Table 1's columns: the block and the number of blocks of each stage.
#             block         blocks per stage
DEPTHS = {
    "resnet18": ("basic",      (2, 2, 2, 2)),
    "resnet34": ("basic",      (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


CONV_TYPES = LAYER_CONV_TYPES  # fused MBConv is an inverted-residual block: not offered here
SpatialConv = Callable[..., nn.Module]  # spatial_conv with the model's conv options bound


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """Projection shortcut (option B: 1×1 conv + BN) where the shape changes, else the identity (None)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(conv2d(in_chs, out_chs, 1, stride), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions of type ``conv``, each followed by BN, ReLU after the residual sum."""

    expansion = 1

    def __init__(self, in_chs: int, chs: int, stride: int = 1, conv: str = "standard", groups: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU, kernel_size: int = 3, spatial: SpatialConv = spatial_conv):
        super().__init__()
        self.conv1 = spatial(conv, in_chs, chs, kernel_size, stride, groups=groups)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = act_layer(inplace=True)
        self.conv2 = spatial(conv, chs, chs, kernel_size, groups=groups)
        self.bn2 = nn.BatchNorm2d(chs)
        self.downsample = _shortcut(in_chs, chs, stride)
        self.act2 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 of type ``conv`` (with the stride), 1×1 expand by 4, each followed by BN."""

    expansion = 4

    def __init__(self, in_chs: int, chs: int, stride: int = 1, conv: str = "standard", groups: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU, kernel_size: int = 3, spatial: SpatialConv = spatial_conv):
        super().__init__()
        out_chs = chs * self.expansion
        self.conv1 = conv2d(in_chs, chs, 1)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = act_layer(inplace=True)
        self.conv2 = spatial(conv, chs, chs, kernel_size, stride, groups=groups)
        self.bn2 = nn.BatchNorm2d(chs)
        self.act2 = act_layer(inplace=True)
        self.conv3 = conv2d(chs, out_chs, 1)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = _shortcut(in_chs, out_chs, stride)
        self.act3 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.act2(self.bn2(self.conv2(out)))))
        return self.act3(out + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(Backbone):
    """ResNet ``depth`` (a key of :data:`DEPTHS`) with a switchable convolution type; see the module docstring."""

    def __init__(
        self,
        depth: str,
        conv: str = "standard",
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        groups: int | None = None,
        convert_stem: bool = False,
        dropout: float = 0.0,
        act: str = "relu",
        stage_conv: list[str] | None = None,
        dw_kernel_size: int = 3,
        pconv_ratio: float = 0.25,
        rep_branches: int = 1,
    ):
        super().__init__()
        act_layer = activation(act)
        convs = stage_convs(f"ResNet ({depth})", conv, stage_conv, len(STAGES), CONV_TYPES)
        check_kernel_size(dw_kernel_size)
        spatial = functools.partial(spatial_conv, pconv_ratio=pconv_ratio, rep_branches=rep_branches)
        block_name, depths = DEPTHS[depth]
        block_cls = BLOCKS[block_name]
        self.num_classes = num_classes
        in_chs = make_divisible(STEM_CHS * width)
        with naming_layer(f"stem ({in_chans} -> {in_chs} channels)"):
            self.stem = self._stem(in_chans, in_chs, small_input, conv if convert_stem else "standard", groups,
                                   act_layer, spatial)
        stem_stride = 1 if small_input else 4
        stages = []
        for stage_idx, (stage, num_blocks) in enumerate(zip(STAGES, depths)):
            chs = make_divisible(stage.chs * width)
            blocks = []
            for block_idx in range(num_blocks):
                name = f"features.{stage_idx}.{block_idx} ({in_chs} -> {chs * block_cls.expansion} channels)"
                with naming_layer(name):
                    blocks.append(block_cls(in_chs, chs, stage.stride if block_idx == 0 else 1, convs[stage_idx],
                                            groups, act_layer, dw_kernel_size, spatial))
                in_chs = chs * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        # The strided shortcut convs run beside the main path, and the max pool is no conv, so
        # Backbone's product of conv strides would be wrong here: the total stride is read off the table.
        self._reduction = stem_stride * math.prod(stage.stride for stage in STAGES)
        self.num_features = in_chs
        self.head = ClassifierHead(in_chs, num_classes, dropout)
        init_weights(self)

    @staticmethod
    def _stem(in_chans: int, out_chs: int, small_input: bool, conv: str, groups: int | None,
              act_layer: type[nn.Module], spatial: SpatialConv) -> nn.Sequential:
        if small_input:  # the CIFAR ResNets' stem: 3×3 at stride 1, no pool
            layers = [("conv", spatial(conv, in_chans, out_chs, 3, 1, groups=groups))]
        else:
            layers = [("conv", spatial(conv, in_chans, out_chs, 7, 2, groups=groups))]
        layers += [("bn", nn.BatchNorm2d(out_chs)), ("act", act_layer(inplace=True))]
        if not small_input:
            layers.append(("pool", nn.MaxPool2d(3, stride=2, padding=1)))
        return nn.Sequential(OrderedDict(layers))

    @property
    def reduction(self) -> int:
        """Total stride from the input to the last feature map: 32, or 8 with the small-image stem."""
        return self._reduction


for _depth in DEPTHS:
    # partial binds the depth positionally, so create_model's option check does not offer it
    register_model(_depth, functools.partial(ResNet, _depth))
