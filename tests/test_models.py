"""Backbones: every arch × conv type runs and trains; golden counts against the papers and references."""

import pytest
import timm
import torch
import torchvision

from dsnet.models import create_model, list_models
from dsnet.models.cost import count_macs, count_params

CONVS = [("standard", {}), ("dsconv", {}), ("group", {"groups": 2})]
IMAGENET = (3, 224, 224)


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize("conv,options", CONVS, ids=[c for c, _ in CONVS])
def test_forward_backward_every_parameter_gets_a_gradient(arch, conv, options):
    torch.manual_seed(0)
    model = create_model(arch, conv=conv, width=0.25, num_classes=7, in_chans=1, small_input=True, **options)
    x = torch.randn(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 7)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch,size,final", [("mobilenet_v1", 32, 2), ("mobilenet_v2", 32, 4)])
def test_small_input_variant_downsamples_less(arch, size, final):
    x = torch.randn(1, 3, size, size)
    small = create_model(arch, small_input=True, width=0.25).eval().forward_features(x)
    full = create_model(arch, width=0.25).eval().forward_features(x)
    assert small.shape[-1] == final
    assert full.shape[-1] == 1


def test_input_resolution_is_free():
    model = create_model("mobilenet_v1", width=0.25, num_classes=3).eval()
    for size in (96, 128, 161):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)


# Howard et al. 2017 at 224 px, 1000 classes. Exact counts of this implementation (parameters include
# batch-norm scale and shift; multiply-adds count convolutions and the FC layer) next to the paper's
# printed figures: Table 4 (full vs separable), Table 6 (width), Table 7 (resolution).
#              conv        width  size  params      macs        paper M params  paper M macs
MOBILENET_V1_GOLDEN = [
    ("dsconv",   1.0,  224, 4_231_976,  568_740_352,   4.2,  569),
    ("standard", 1.0,  224, 29_294_088, 4_867_293_184, 29.3, 4866),
    ("dsconv",   0.75, 224, 2_585_560,  325_400_448,   2.6,  325),
    ("dsconv",   0.5,  224, 1_331_592,  149_497_088,   1.3,  149),
    ("dsconv",   0.25, 224, 470_072,    41_030_272,    0.5,  41),
    ("dsconv",   1.0,  192, 4_231_976,  418_121_728,   4.2,  418),
    ("dsconv",   1.0,  160, 4_231_976,  290_675_200,   4.2,  290),
    ("dsconv",   1.0,  128, 4_231_976,  186_400_768,   4.2,  186),
]


@pytest.mark.parametrize("conv,width,size,params,macs,paper_params_m,paper_macs_m", MOBILENET_V1_GOLDEN)
def test_mobilenet_v1_counts_match_the_paper(conv, width, size, params, macs, paper_params_m, paper_macs_m):
    model = create_model("mobilenet_v1", conv=conv, width=width)
    assert count_params(model) == params
    assert count_macs(model, (3, size, size)) == macs
    assert round(params / 1e6, 1) == paper_params_m
    # The paper's last digit is sometimes truncated rather than rounded (290.7M printed as 290M,
    # 4867.3M as 4866M): within 0.05% of every printed figure.
    assert macs / 1e6 == pytest.approx(paper_macs_m, rel=5e-4, abs=0.75)


def test_mobilenet_v1_params_follow_table_1_by_formula():
    """4.2M = stem + Σ(9·C_in + C_in·C_out) + FC, + 2 batch-norm parameters per channel."""
    chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    pairs = list(zip(chans, chans[1:]))
    convs = 27 * 32 + sum(9 * cin + cin * cout for cin, cout in pairs)
    bn = 2 * (32 + sum(cin + cout for cin, cout in pairs))
    fc = 1024 * 1000 + 1000
    assert count_params(create_model("mobilenet_v1")) == convs + bn + fc
    full = 27 * 32 + sum(9 * cin * cout for cin, cout in pairs) + 2 * (32 + sum(c for _, c in pairs)) + fc
    assert count_params(create_model("mobilenet_v1", conv="standard")) == full


def test_mobilenet_v1_equals_timm_mobilenetv1_100():
    ours, theirs = create_model("mobilenet_v1"), timm.create_model("mobilenetv1_100")
    assert count_params(ours) == count_params(theirs) == 4_231_976
    assert count_macs(ours, IMAGENET) == count_macs(theirs, IMAGENET)


def test_mobilenet_v2_equals_torchvision():
    ours, theirs = create_model("mobilenet_v2"), torchvision.models.mobilenet_v2()
    assert count_params(ours) == count_params(theirs) == 3_504_872
    assert count_macs(ours, IMAGENET) == count_macs(theirs, IMAGENET) == 300_774_272


def test_mobilenet_v2_width_matches_torchvision():
    ours = create_model("mobilenet_v2", width=0.5)
    theirs = torchvision.models.mobilenet_v2(width_mult=0.5)
    assert count_params(ours) == count_params(theirs)


def test_group_conv_model_layers_follow_the_grouped_formula():
    """Each layer: grouped 3×3 (C_in -> C_in, g groups) then pointwise, 9·C_in·C_in/g + C_in·C_out weights."""
    model = create_model("mobilenet_v1", conv="group", groups=8, width=0.5)
    first = model.features[0]  # 16 -> 32 channels
    assert first.conv_dw.groups == 8
    assert first.conv_dw.weight.numel() + first.conv_pw.weight.numel() == 9 * 16 * 16 // 8 + 16 * 32
    ds = create_model("mobilenet_v1", conv="dsconv", width=0.5)
    std = create_model("mobilenet_v1", conv="standard", width=0.5)
    assert count_params(ds) < count_params(model) < count_params(std)


def test_in_chans_and_num_classes():
    model = create_model("mobilenet_v2", width=0.5, num_classes=17, in_chans=5)
    assert model.stem.conv.in_channels == 5
    assert model.head.fc.out_features == 17 == model.num_classes


@pytest.mark.parametrize("kwargs,message", [
    ({"arch": "resnet19"}, "unknown arch 'resnet19'; expected one of mobilenet_v1, mobilenet_v2, resnet18, resnet34, resnet50, "
                         "or timm:<name> / torchvision:<name> to convert"),
    ({"arch": "mobilenet_v1", "conv": "separable"}, "unknown conv type 'separable'; expected one of standard, dsconv, group, repdsconv, pconv, fused"),
    ({"arch": "mobilenet_v1", "width": 0}, "width=0 must be a finite positive number"),
    ({"arch": "mobilenet_v1", "width": -0.5}, "width=-0.5 must be a finite positive number"),
    ({"arch": "mobilenet_v1", "width": "wide"}, "width='wide' must be a finite positive number"),
    ({"arch": "mobilenet_v1", "num_classes": 0}, "num_classes=0 must be a positive integer"),
    ({"arch": "mobilenet_v1", "in_chans": 2.5}, "in_chans=2.5 must be a positive integer"),
    ({"arch": "mobilenet_v1", "depth": 3}, "unknown option(s) depth for arch 'mobilenet_v1'; expected any of act, depth_multiplier, dropout, dw_kernel_size, groups, pconv_ratio, rep_branches, small_input, stage_conv"),
    ({"arch": "mobilenet_v2", "depth_multiplier": 2}, "unknown option(s) depth_multiplier for arch 'mobilenet_v2'"),
    ({"arch": "mobilenet_v1", "conv": "group"}, "groups=None must be a positive integer"),
    ({"arch": "mobilenet_v1", "conv": "dsconv", "groups": 2}, "groups=2 is only used with conv='group'"),
    ({"arch": "mobilenet_v1", "conv": "fused"},
     "conv='fused' is not available in MobileNetV1; expected one of standard, dsconv, group, repdsconv, pconv"),
    ({"arch": "resnet18", "conv": "fused"},
     "conv='fused' is not available in ResNet (resnet18); expected one of standard, dsconv, group, repdsconv, pconv"),
    ({"arch": "mobilenet_v1", "stage_conv": ["standard", "dsconv"]},
     "stage_conv=['standard', 'dsconv'] has 2 entries; MobileNetV1 has 5 stages: give one conv type per stage"),
    ({"arch": "mobilenet_v2", "stage_conv": ["dsconv"] * 5},
     "stage_conv=['dsconv', 'dsconv', 'dsconv', 'dsconv', 'dsconv'] has 5 entries; MobileNetV2 has 7 stages"),
    ({"arch": "resnet50", "stage_conv": ["standard", "sep", "dsconv", "dsconv"]},
     "stage_conv[1]='sep' is not available in ResNet (resnet50); expected one of standard, dsconv, group, "
     "repdsconv, pconv"),
    ({"arch": "mobilenet_v1", "stage_conv": ["standard"] * 4 + ["fused"]},
     "stage_conv[4]='fused' is not available in MobileNetV1"),
    ({"arch": "mobilenet_v1", "stage_conv": "dsconv"},
     "stage_conv='dsconv' must be a list of 5 conv types, one per stage of MobileNetV1"),
    ({"arch": "mobilenet_v1", "stage_conv": ["dsconv", "group", "dsconv", "dsconv", "dsconv"]},
     "groups=None must be a positive integer"),
    ({"arch": "mobilenet_v2", "dw_kernel_size": 4}, "dw_kernel_size=4; expected one of 3, 5, 7"),
    ({"arch": "resnet18", "dw_kernel_size": 5.0}, "dw_kernel_size=5.0; expected one of 3, 5, 7"),
    ({"arch": "mobilenet_v1", "conv": "pconv", "pconv_ratio": 0}, "features.0 (32 -> 64 channels): pconv_ratio=0 must be a number in (0, 1]"),
])
def test_create_model_rejects_bad_input(kwargs, message):
    arch = kwargs.pop("arch")
    with pytest.raises(ValueError) as err:
        create_model(arch, **kwargs)
    assert message in str(err.value)


NEW_CONVS = [(arch, conv) for arch in list_models() for conv in ("repdsconv", "pconv", "fused")
             if conv != "fused" or arch == "mobilenet_v2"]


@pytest.mark.parametrize("arch,conv", NEW_CONVS)
def test_new_conv_types_train_every_parameter(arch, conv):
    torch.manual_seed(0)
    model = create_model(arch, conv=conv, width=0.25, num_classes=7, in_chans=1, small_input=True)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 16, 16)), torch.arange(2)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch,stage_conv,expected", [
    # MobileNetV1's stages are its feature-map sizes: 1, 2, 2, 6, 2 layers after the stem.
    ("mobilenet_v1", ["standard", "standard", "dsconv", "dsconv", "pconv"],
     ["ConvNormAct"] * 3 + ["SeparableConv"] * 8 + ["PartialSeparableConv"] * 2),
    # MobileNetV2's are the 7 rows of Table 2 (1, 2, 3, 4, 3, 3, 1 blocks), then the last 1×1 conv.
    ("mobilenet_v2", ["fused", "fused", "fused", "dsconv", "dsconv", "repdsconv", "dsconv"],
     ["EdgeResidual"] * 6 + ["InvertedResidual"] * 11 + ["ConvNormAct"]),
])
def test_stage_conv_sets_the_conv_type_of_each_stage(arch, stage_conv, expected):
    model = create_model(arch, stage_conv=stage_conv, width=0.25).eval()
    assert [type(block).__name__ for block in model.features] == expected
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_stage_conv_of_a_resnet_switches_its_four_stages():
    model = create_model("resnet18", stage_conv=["standard", "dsconv", "repdsconv", "pconv"], width=0.25)
    assert [type(stage[0].conv1).__name__ for stage in model.features] == [
        "Conv2d", "SeparableConv", "RepSeparableConv", "PartialSeparableConv"]
    assert type(model.stem.conv).__name__ == "Conv2d"


@pytest.mark.parametrize("arch", ["mobilenet_v1", "resnet18"])
def test_stage_conv_of_pure_types_is_the_pure_network(arch):
    stages = 5 if arch == "mobilenet_v1" else 4
    for conv in ("standard", "dsconv"):
        mixed = create_model(arch, stage_conv=[conv] * stages, width=0.5)
        assert count_params(mixed) == count_params(create_model(arch, conv=conv, width=0.5))


def test_dw_kernel_size_widens_every_depthwise_step_by_formula():
    """MobileNetV1 dsconv at k×k: k²·C_in + C_in·C_out per layer, so k=5 adds 16·ΣC_in over the 13 layers."""
    chans = [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]  # width 0.25
    k3, k5 = (create_model("mobilenet_v1", width=0.25, dw_kernel_size=k) for k in (3, 5))
    assert k5.features[3].conv_dw.kernel_size == (5, 5)
    assert count_params(k5) - count_params(k3) == (25 - 9) * sum(chans[:-1])
    assert count_macs(k5, (3, 32, 32)) > count_macs(k3, (3, 32, 32))


def test_groups_that_do_not_divide_name_the_layer():
    with pytest.raises(ValueError, match=r"features\.0 \(32 -> 64 channels\): groups=3 must divide both in_chs=32"):
        create_model("mobilenet_v1", conv="group", groups=3)
    # MobileNetV2: groups=32 divides the hidden widths 32 and 96 of the first blocks, not 24·6 = 144.
    with pytest.raises(ValueError, match=r"features\.2 \(24 -> 24 channels\): groups=32 must divide both in_chs=144 and out_chs=144"):
        create_model("mobilenet_v2", conv="group", groups=32)


def test_depth_multiplier_widens_the_depthwise_step():
    model = create_model("mobilenet_v1", depth_multiplier=2, width=0.25)
    first = model.features[0]
    assert first.conv_dw.out_channels == 2 * first.conv_dw.in_channels
    assert first.conv_dw.groups == first.conv_dw.in_channels


@pytest.mark.parametrize("arch, small_input, reduction, conv", [
    ("mobilenet_v1", False, 32, "dsconv"), ("mobilenet_v1", True, 16, "dsconv"), ("mobilenet_v2", False, 32, "dsconv"),
    ("mobilenet_v2", True, 8, "dsconv"), ("mobilenet_v1", False, 32, "repdsconv"), ("mobilenet_v2", True, 8, "fused"),
])
def test_reduction_is_the_total_stride_and_smaller_inputs_are_refused(arch, small_input, reduction, conv):
    model = create_model(arch, conv=conv, width=0.25, num_classes=10, small_input=small_input).eval()
    assert model.reduction == reduction
    model.check_input_size(reduction)  # the smallest allowed: a 1x1 last feature map
    assert model.forward_features(torch.zeros(1, 3, reduction, reduction)).shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match=rf"image_size={reduction - 1} is too small .* downsamples by {reduction}"):
        model.check_input_size(reduction - 1)


def test_mobilenet_v1_act_option_matches_timm_relu6_network():
    ours = create_model("mobilenet_v1", act="relu6")
    theirs = timm.create_model("mobilenetv1_100")  # no weights: offline
    relu6 = lambda net: sum(isinstance(m, torch.nn.ReLU6) for m in net.modules())  # noqa: E731
    assert count_params(ours) == count_params(theirs) == 4_231_976
    assert relu6(ours) == relu6(theirs) == 27
    assert relu6(create_model("mobilenet_v1")) == 0  # the default stays the paper's ReLU
    with pytest.raises(ValueError, match=r"act='gelu'; expected one of relu, relu6"):
        create_model("mobilenet_v1", act="gelu")
