"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
arXiv:1801.04381), built from dsnet's block library with the same ``conv`` switch as MobileNetV1.

``conv`` picks the spatial step of every inverted residual: depthwise (``dsconv``, the paper's
network; parameters equal torchvision's ``mobilenet_v2``), full 3×3 (``standard``) or grouped
(``group``). ``small_input=True`` follows the CIFAR ports (kuangliu/pytorch-cifar): stem stride 1
and the first 24-channel stage at stride 1, a total stride of 8 instead of 32.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from dsnet.blocks import ConvNormAct, InvertedResidual, init_weights, make_divisible
from dsnet.models._common import Backbone, ClassifierHead, activation, naming_layer
from dsnet.models._registry import register_model


class Stage(NamedTuple):
    expand_ratio: int  # t
    out_chs: int       # c
    num_blocks: int    # n
    stride: int        # s, of the first block


STEM_CHS = 32
LAST_CHS = 1280

# Sandler et al. 2018, Table 2.
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
    ):
        super().__init__()
        self.num_classes = num_classes
        act = activation(act)
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
                    blocks.append(InvertedResidual(
                        in_chs, out_chs, stride if block_idx == 0 else 1, stage.expand_ratio,
                        conv=conv, groups=groups, act_layer=act,
                    ))
                in_chs = out_chs
        # The last 1×1 conv widens with the multiplier but never narrows (as in the paper).
        self.num_features = make_divisible(LAST_CHS * max(1.0, width))
        blocks.append(ConvNormAct(in_chs, self.num_features, 1, act_layer=act))
        self.features = nn.Sequential(*blocks)
        self.head = ClassifierHead(self.num_features, num_classes, dropout)
        init_weights(self)


register_model("mobilenet_v2", MobileNetV2)
