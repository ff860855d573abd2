"""ResNet-18/34/50 from the block library: golden counts against torchvision and the analytic count
of every conv type, the small-image stem, the input-size guard, refusals, the configs."""

import math

import pytest
import torch
import torchvision
from conftest import compose_train
from hydra.utils import instantiate

from dsnet.models.cost import count_macs, count_params, layer_type, macs_breakdown
from dsnet.models import create_model
from dsnet.models.resnet import DEPTHS, STAGES


# torchvision's counts at 1000 classes (its docs print 11.7 M / 21.8 M / 25.6 M; these are exact).
GOLDEN_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("arch", sorted(GOLDEN_PARAMS))
def test_standard_resnet_has_torchvisions_golden_parameter_count(arch):
    assert count_params(create_model(arch, conv="standard")) == GOLDEN_PARAMS[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_standard_resnet_equals_torchvision_in_params_and_macs(arch):
    ours = create_model(arch, conv="standard")
    theirs = getattr(torchvision.models, arch)(weights=None)
    assert count_params(ours) == count_params(theirs) == GOLDEN_PARAMS[arch]
    # 64 px: every stage still has a map larger than 1x1, so a stride in the wrong place would show
    assert count_macs(ours, (3, 64, 64)) == count_macs(theirs, (3, 64, 64))


def _spatial_weights(conv: str, in_chs: int, out_chs: int, k: int, groups: int | None) -> int:
    """Weights of one k×k layer of type ``conv``: the formulas of blocks.py's module docstring."""
    if conv == "standard":
        return k * k * in_chs * out_chs
    g = in_chs if conv == "dsconv" else groups
    return k * k * in_chs * (in_chs // g) + in_chs * out_chs


def analytic_cost(arch, conv, width, num_classes, in_chans, side, groups=None):
    """Parameters and MACs of a small-input ResNet written out from He et al. Table 1, no modules."""
    block, depths = DEPTHS[arch]
    expansion = 4 if block == "bottleneck" else 1
    chs = [int(c * width) for c in [64] + [s.chs for s in STAGES]]
    assert all(c % 8 == 0 for c in chs), "the widths tested here give multiples of 8: no rounding"
    params = macs = 0

    def add(weights, out_chs, area):  # one conv + its BN
        nonlocal params, macs
        params += weights + 2 * out_chs
        macs += weights * area

    add(9 * in_chans * chs[0], chs[0], side * side)  # the stem stays full
    in_chs = chs[0]
    for stage, c, n in zip(STAGES, chs[1:], depths):
        for i in range(n):
            stride = stage.stride if i == 0 else 1
            in_side, side = side, math.ceil(side / stride)
            out = c * expansion
            if block == "basic":
                add(_spatial_weights(conv, in_chs, c, 3, groups), c, side * side)
                add(_spatial_weights(conv, c, c, 3, groups), c, side * side)
            else:
                add(in_chs * c, c, in_side * in_side)
                add(_spatial_weights(conv, c, c, 3, groups), c, side * side)
                add(c * out, out, side * side)
            if stride != 1 or in_chs != out:
                add(in_chs * out, out, side * side)
            in_chs = out
    params += in_chs * num_classes + num_classes
    macs += in_chs * num_classes
    return params, macs


CASES = [
    ("resnet18", "standard", 1.0, None),
    ("resnet18", "dsconv", 1.0, None),
    ("resnet18", "group", 0.5, 4),
    ("resnet34", "dsconv", 0.25, None),
    ("resnet50", "dsconv", 0.5, None),
    ("resnet50", "group", 0.25, 2),
]


@pytest.mark.parametrize("arch,conv,width,groups", CASES)
def test_params_and_macs_equal_the_analytic_count(arch, conv, width, groups):
    model = create_model(arch, conv=conv, width=width, num_classes=10, in_chans=1, small_input=True, groups=groups)
    params, macs = analytic_cost(arch, conv, width, 10, 1, 32, groups)
    assert count_params(model) == params
    assert count_macs(model, (1, 32, 32)) == macs


@pytest.mark.parametrize("conv,groups,kinds", [
    ("standard", None, {"standard": 17, "depthwise": 0, "grouped": 0, "pointwise": 3}),
    ("dsconv", None, {"standard": 1, "depthwise": 16, "grouped": 0, "pointwise": 19}),
    ("group", 2, {"standard": 1, "depthwise": 0, "grouped": 16, "pointwise": 19}),
])
def test_conv_switch_replaces_every_residual_3x3(conv, groups, kinds):
    layers = [m for m in create_model("resnet18", conv=conv, groups=groups).modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert {kind: sum(layer_type(m) == kind for m in layers) for kind in kinds} == kinds


def test_convert_stem_makes_the_stem_depthwise_separable_too():
    model = create_model("resnet18", conv="dsconv", convert_stem=True)
    assert model.stem.conv.conv_dw.groups == 3 and model.stem.conv.conv_dw.kernel_size == (7, 7)
    assert count_params(model) == 1_946_107  # = 1,955,176 - 7*7*3*64 + 7*7*3 + 3*64


def test_no_norm_or_activation_between_depthwise_and_pointwise():
    """Xception's choice (dsnet.blocks.spatial_conv): the separable step is two bare convolutions."""
    step = create_model("resnet18", conv="dsconv").features[0][0].conv1
    assert [type(m).__name__ for m in step.modules() if not isinstance(m, torch.nn.Identity)][1:] == [
        "Conv2d", "Conv2d"]
    # the 16 depthwise 3x3 steps see 64 channels 5 times, 128 and 256 4 times, 512 3 times
    assert macs_breakdown(create_model("resnet18", conv="dsconv"), (3, 64, 64))["depthwise"]["params"] == (
        9 * (5 * 64 + 4 * 128 + 4 * 256 + 3 * 512))


@pytest.mark.parametrize("small_input,side,final,reduction", [(False, 64, 2, 32), (True, 32, 4, 8)])
def test_output_shapes_and_reduction(small_input, side, final, reduction):
    model = create_model("resnet18", conv="dsconv", width=0.25, num_classes=7, small_input=small_input).eval()
    x = torch.randn(2, 3, side, side)
    assert model.forward_features(x).shape == (2, 128, final, final)
    assert model(x).shape == (2, 7)
    assert model.reduction == reduction == side // final


def test_too_small_input_is_refused_naming_the_size():
    with pytest.raises(ValueError, match=r"^image_size=28 is too small for this ResNet, which downsamples by 32: "
                                         r"use at least 32$"):
        create_model("resnet50", width=0.25).check_input_size(28)
    create_model("resnet50", width=0.25, small_input=True).check_input_size(28)  # stride 8


@pytest.mark.parametrize("arch,kwargs,message", [
    ("resnet18", {"conv": "group", "groups": 3},
     r"^features\.0\.0 \(64 -> 64 channels\): groups=3 must divide both in_chs=64 and out_chs=64$"),
    ("resnet50", {"conv": "group", "groups": 2, "convert_stem": True},
     r"^stem \(3 -> 64 channels\): groups=2 must divide both in_chs=3 and out_chs=3$"),
    ("resnet18", {"conv": "group"}, r"^groups=None must be a positive integer$"),
    ("resnet18", {"block": "basic"}, r"^unknown option\(s\) block for arch 'resnet18'"),
])
def test_bad_settings_are_refused_in_one_line(arch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(arch, **kwargs)


@pytest.mark.parametrize("name,arch,params", [("resnet18", "resnet18", 2_797_034), ("resnet50", "resnet50", None)])
def test_model_config_inherits_the_conv_switch(name, arch, params, tmp_path):
    data = ("data.in_chans=1", "data.image_size=28")  # Fashion-MNIST's shape, on synthetic data
    cfg = compose_train(f"model={name}", "model.conv=dsconv", "model.width=0.5", *data, run_dir=tmp_path)
    assert (cfg.model.arch, cfg.model.conv, cfg.model.small_input, cfg.model.in_chans) == (arch, "dsconv", True, 1)
    net = instantiate(cfg.model)
    expected = analytic_cost(arch, "dsconv", 0.5, 10, 1, 28)[0]
    assert count_params(net) == expected
    if params is not None:  # the standard twin at the same width, for the study's table
        std = instantiate(compose_train(f"model={name}", "model.width=0.5", *data, run_dir=tmp_path).model)
        assert count_params(std) == params
