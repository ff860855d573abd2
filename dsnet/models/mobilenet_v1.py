"""MobileNetV1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", arXiv:1704.04861), with the convolution type as a switch.

``conv="dsconv"`` is the paper's MobileNet, ``conv="standard"`` its "Conv MobileNet" (Table 4),
``conv="group"`` replaces the depthwise step with a ``groups``-way grouped one. ``width`` is the
paper's width multiplier α (Table 6); the input resolution is free (Table 7's ρ).

``small_input=True`` is the small-image variant used by the well-known CIFAR ports (e.g.
kuangliu/pytorch-cifar): the stem has stride 1 instead of 2, so a 32 px input ends at 2×2
(total stride 16) instead of collapsing to 1×1. Nothing else changes.

``conv`` may also be ``repdsconv`` (MobileOne's re-parameterisable separable block) or ``pconv``
(FasterNet's partial convolution, ``pconv_ratio`` of the channels); ``stage_conv`` gives one type
per stage (the five groups of rows at one resolution, the ``stage`` column below), e.g.
``[standard, standard, dsconv, dsconv, dsconv]``; ``dw_kernel_size`` (3, 5 or 7) is the kernel of
every layer's spatial step. The stem stays a full 3×3 convolution.

``act`` is the activation: ``relu`` as in the paper, or ``relu6`` as in the TensorFlow release and
timm's ``mobilenetv1_100``, to compare with those like for like.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from dsnet.blocks import LAYER_CONV_TYPES, ConvNormAct, create_conv_block, init_weights, make_divisible
from dsnet.models._common import (
    Backbone,
    ClassifierHead,
    activation,
    check_kernel_size,
    naming_layer,
    stage_convs,
)
from dsnet.models._registry import register_model


class Layer(NamedTuple):
    out_chs: int
    stride: int
    stage: int  # the layers at one feature-map size: stage_conv[stage] is their conv type


STEM_CHS = 32  # Table 1, row 1: full 3×3 conv, stride 2

# Table 1 after the stem: each row is "Conv dw 3×3 + Conv 1×1" with conv="dsconv",
# one full 3×3 conv with conv="standard".
#      out_chs stride stage  # feature map at 224 px
LAYERS = (
    Layer(64, 1, 0),         # 112
    Layer(128, 2, 1),        # 56
    Layer(128, 1, 1),
    Layer(256, 2, 2),        # 28
    Layer(256, 1, 2),
    Layer(512, 2, 3),        # 14
    *[Layer(512, 1, 3)] * 5,
    Layer(1024, 2, 4),       # 7
    Layer(1024, 1, 4),       # Table 1 prints s2, but its output stays 7×7: a known typo
)
NUM_STAGES = LAYERS[-1].stage + 1
CONV_TYPES = LAYER_CONV_TYPES  # fused MBConv is an inverted-residual block: not offered here


class MobileNetV1(Backbone):
    """MobileNetV1 with a switchable convolution type; see the module docstring."""

    def __init__(
        self,
        conv: str = "dsconv",
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        groups: int | None = None,
        depth_multiplier: int = 1,
        dropout: float = 0.0,
        act: str = "relu",
        stage_conv: list[str] | None = None,
        dw_kernel_size: int = 3,
        pconv_ratio: float = 0.25,
        rep_branches: int = 1,
    ):
        super().__init__()
        self.num_classes = num_classes
        act_layer = activation(act)
        convs = stage_convs("MobileNetV1", conv, stage_conv, NUM_STAGES, CONV_TYPES)
        check_kernel_size(dw_kernel_size)
        in_chs = make_divisible(STEM_CHS * width)
        with naming_layer("stem"):
            self.stem = ConvNormAct(in_chans, in_chs, 3, stride=1 if small_input else 2, act_layer=act_layer)
        layers = []
        for i, layer in enumerate(LAYERS):
            out_chs = make_divisible(layer.out_chs * width)
            with naming_layer(f"features.{i} ({in_chs} -> {out_chs} channels)"):
                layers.append(create_conv_block(
                    convs[layer.stage], in_chs, out_chs, dw_kernel_size, layer.stride,
                    groups=groups, depth_multiplier=depth_multiplier,
                    act_layer=act_layer, pconv_ratio=pconv_ratio, rep_branches=rep_branches,
                ))
            in_chs = out_chs
        self.features = nn.Sequential(*layers)
        self.num_features = in_chs
        self.head = ClassifierHead(in_chs, num_classes, dropout)
        init_weights(self)


register_model("mobilenet_v1", MobileNetV1)
