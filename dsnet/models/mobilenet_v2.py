"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
arXiv:1801.04381), built from dsnet's block library with the same ``conv`` switch as MobileNetV1.

``conv`` picks the spatial step of every inverted residual: depthwise (``dsconv``, the paper's
network; parameters equal torchvision's ``mobilenet_v2``), full 3×3 (``standard``) or grouped
(``group``), MobileOne's re-parameterisable depthwise step (``repdsconv``) or FasterNet's partial
convolution on the expanded channels (``pconv``, ``pconv_ratio`` of them); ``conv="fused"`` makes
every block a fused MBConv (EfficientNetV2: one full k×k in place of the expansion 1×1 and the
depthwise k×k). ``stage_conv`` gives one type per stage, a stage being a row of Table 2 (seven), e.g.
``[fused, fused, fused, dsconv, dsconv, dsconv, dsconv]``, EfficientNetV2's "fused early" choice;
``dw_kernel_size`` (3, 5 or 7) is the kernel of every block's spatial step.

``small_input=True`` follows the CIFAR ports (kuangliu/pytorch-cifar): stem stride 1 and the first
24-channel stage at stride 1, a total stride of 8 instead of 32.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from dsnet.blocks import CONV_TYPES, ConvNormAct, init_weights, inverted_residual, make_divisible
from dsnet.models._common import (
    Backbone,
    ClassifierHead,
    activation,
    check_kernel_size,
    naming_layer,
    stage_convs,
)
from dsnet.models._registry import register_model


class Stage(NamedTuple):
    expand_ratio: int  # t
    out_chs: int       # c
    num_blocks: int    # n
    stride: int        # s, of the first block


STEM_CHS = 32
LAST_CHS = 1280

# Sandler et al. 2018, Table 2. A row is a stage: stage_conv[i] is the conv type of row i's blocks.
#      t    c   n  s
STAGES = (
    Stage(1, 16, 1, 1),
    Stage(6, 24, 2, 2),
    Stage(6, 32, 3, 2),
    Stage(6, 64, 4, 2),
    Stage(6, 96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)
SMALL_INPUT_STRIDE_ONE_STAGES = (1,)  # the 24-channel stage, as in the CIFAR ports


class MobileNetV2(Backbone):
    """MobileNetV2 with a switchable convolution type; see the module docstring."""

    def __init__(
        self,
        conv: str = "dsconv",
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        groups: int | None = None,
        dropout: float = 0.2,
        act: str = "relu6",
        stage_conv: list[str] | None = None,
        dw_kernel_size: int = 3,
        pconv_ratio: float = 0.25,
        rep_branches: int = 1,
    ):
        super().__init__()
        self.num_classes = num_classes
        act = activation(act)
        convs = stage_convs("MobileNetV2", conv, stage_conv, len(STAGES), CONV_TYPES)
        check_kernel_size(dw_kernel_size)
        in_chs = make_divisible(STEM_CHS * width)
        with naming_layer("stem"):
            self.stem = ConvNormAct(in_chans, in_chs, 3, stride=1 if small_input else 2, act_layer=act)
        blocks = []
        for stage_idx, stage in enumerate(STAGES):
            out_chs = make_divisible(stage.out_chs * width)
            stride = 1 if small_input and stage_idx in SMALL_INPUT_STRIDE_ONE_STAGES else stage.stride
            for block_idx in range(stage.num_blocks):
                name = f"features.{len(blocks)} ({in_chs} -> {out_chs} channels)"
                with naming_layer(name):
                    blocks.append(inverted_residual(
                        convs[stage_idx], in_chs, out_chs, stride if block_idx == 0 else 1, stage.expand_ratio,
                        dw_kernel_size, act, groups=groups, pconv_ratio=pconv_ratio, rep_branches=rep_branches,
                    ))
                in_chs = out_chs
        # The last 1×1 conv widens with the multiplier but never narrows (as in the paper).
        self.num_features = make_divisible(LAST_CHS * max(1.0, width))
        blocks.append(ConvNormAct(in_chs, self.num_features, 1, act_layer=act))
        self.features = nn.Sequential(*blocks)
        self.head = ClassifierHead(self.num_features, num_classes, dropout)
        init_weights(self)


register_model("mobilenet_v2", MobileNetV2)
