"""The block library: exact parameter and multiply-add counts, shapes, values and errors."""

import pytest
import torch
from torch import nn

from dsnet.blocks import (
    ConvNormAct,
    DepthwiseSeparableConv,
    InvertedResidual,
    PartialConv,
    RepSeparableConv,
    SeparableConv,
    create_conv_block,
    depthwise_conv,
    grouped_conv,
    inverted_residual,
    make_divisible,
    pointwise_conv,
    spatial_conv,
)
from dsnet.models.cost import count_macs, count_params

H = W = 5  # spatial size used for multiply-add counts; "same" padding keeps it at stride 1


def bare(conv: str, in_chs: int, out_chs: int, groups=None) -> nn.Module:
    return create_conv_block(conv, in_chs, out_chs, 3, groups=groups, norm_layer=None, act_layer=None)


def test_standard_3x3_conv_has_k_k_cin_cout_weights():
    block = bare("standard", 3, 4)
    assert count_params(block) == 3 * 3 * 3 * 4 == 108
    assert count_macs(block, (3, H, W)) == 108 * H * W


def test_separable_twin_has_k_k_cin_plus_cin_cout_weights():
    block = bare("dsconv", 3, 4)
    assert count_params(block) == 3 * 3 * 3 + 3 * 4 == 39
    assert count_macs(block, (3, H, W)) == 39 * H * W


def test_separable_cost_ratio_is_one_over_cout_plus_one_over_k_squared():
    in_chs, out_chs, k = 16, 32, 3
    ratio = count_macs(bare("dsconv", in_chs, out_chs), (in_chs, H, W)) / count_macs(
        bare("standard", in_chs, out_chs), (in_chs, H, W)
    )
    assert ratio == pytest.approx(1 / out_chs + 1 / k**2, rel=1e-12)


def test_grouped_conv_weights_are_k_k_cin_over_g_cout_over_g_times_g():
    conv = grouped_conv(4, 6, 3, groups=2)
    assert count_params(conv) == 3 * 3 * (4 // 2) * (6 // 2) * 2 == 108
    assert count_macs(conv, (4, H, W)) == 108 * H * W


def test_depthwise_conv_has_one_filter_per_channel():
    conv = depthwise_conv(8, 3)
    assert conv.groups == 8 and conv.out_channels == 8
    assert count_params(conv) == 3 * 3 * 8
    assert count_macs(conv, (8, H, W)) == 3 * 3 * 8 * H * W


def test_depth_multiplier_gives_m_times_cin_outputs():
    conv = depthwise_conv(8, 3, depth_multiplier=3)
    assert conv.out_channels == 24
    assert count_params(conv) == 3 * 3 * 8 * 3


def test_pointwise_conv_has_cin_cout_weights():
    conv = pointwise_conv(6, 10)
    assert conv.kernel_size == (1, 1)
    assert count_params(conv) == 60
    assert count_macs(conv, (6, H, W)) == 60 * H * W


def test_depthwise_output_matches_hand_computation():
    conv = depthwise_conv(2, 3, depth_multiplier=2)  # outputs: ch0*f0, ch0*f1, ch1*f2, ch1*f3
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0    # identity on channel 0
        conv.weight[1, 0] = 1.0          # 3×3 box sum on channel 0
        conv.weight[2, 0, 0, 0] = 2.0    # 2 × the top-left neighbour of channel 1
        conv.weight[3, 0, 1, 2] = -1.0   # − the right neighbour of channel 1
    x = torch.tensor([[[1.0, 2, 3], [4, 5, 6], [7, 8, 9]],
                      [[10.0, 20, 30], [40, 50, 60], [70, 80, 90]]]).unsqueeze(0)
    y = conv(x)[0]
    assert y.shape == (4, 3, 3)
    assert y[0].tolist() == x[0, 0].tolist()
    assert y[1].tolist() == [[12, 21, 16], [27, 45, 33], [24, 39, 28]]
    assert y[2].tolist() == [[0, 0, 0], [0, 20, 40], [0, 80, 100]]
    assert y[3].tolist() == [[-20, -30, 0], [-50, -60, 0], [-80, -90, 0]]


def test_group_with_groups_equal_in_chs_is_exactly_dsconv():
    in_chs, out_chs = 16, 24
    group = bare("group", in_chs, out_chs, groups=in_chs)
    dsconv = bare("dsconv", in_chs, out_chs)
    assert count_params(group) == count_params(dsconv) == 9 * 16 + 16 * 24
    assert count_macs(group, (in_chs, H, W)) == count_macs(dsconv, (in_chs, H, W))
    assert [type(m) for m in group.modules()] == [type(m) for m in dsconv.modules()]
    assert [p.shape for p in group.parameters()] == [p.shape for p in dsconv.parameters()]


@pytest.mark.parametrize("groups,in_chs,out_chs", [(3, 4, 6), (2, 3, 4), (4, 8, 6)])
def test_groups_must_divide_both_channel_counts(groups, in_chs, out_chs):
    with pytest.raises(ValueError, match=f"groups={groups} must divide both in_chs={in_chs} and out_chs={out_chs}"):
        grouped_conv(in_chs, out_chs, 3, groups=groups)


def test_non_positive_groups_rejected():
    with pytest.raises(ValueError, match="groups=0 must be a positive integer"):
        grouped_conv(4, 4, 3, groups=0)


def test_unknown_conv_type_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown conv type 'sepconv'; expected one of standard, dsconv, group, repdsconv, pconv, fused"):
        create_conv_block("sepconv", 4, 4)


def test_group_conv_needs_groups():
    with pytest.raises(ValueError, match="conv='group' needs groups"):
        create_conv_block("group", 4, 4)


@pytest.mark.parametrize("kernel_size,stride,dilation,expected", [(3, 1, 1, 9), (5, 1, 1, 9), (3, 2, 1, 5), (3, 1, 2, 9)])
def test_padding_none_means_same(kernel_size, stride, dilation, expected):
    block = DepthwiseSeparableConv(4, 8, kernel_size, stride, dilation=dilation)
    assert block(torch.randn(1, 4, 9, 9)).shape == (1, 8, expected, expected)


def test_depthwise_separable_conv_submodules_and_bare_form():
    block = DepthwiseSeparableConv(4, 8, norm_layer=None, act_layer=None)
    assert block.conv_dw.groups == 4 and block.conv_pw.kernel_size == (1, 1)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in block.modules())
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(block(x), block.conv_pw(block.conv_dw(x)))


def test_depthwise_separable_with_norm_and_act():
    block = DepthwiseSeparableConv(4, 8)
    assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn2, nn.BatchNorm2d)
    assert block.conv_dw.bias is None and block.conv_pw.bias is None
    assert (block(torch.randn(2, 4, 6, 6)) >= 0).all()  # ends in ReLU


def test_conv_norm_act_bias_only_without_norm():
    assert ConvNormAct(3, 4).conv.bias is None
    assert ConvNormAct(3, 4, norm_layer=None).conv.bias is not None


def test_inverted_residual_counts_and_skip():
    block = InvertedResidual(16, 16, stride=1, expand_ratio=6)
    assert block.has_skip
    hidden = 96
    conv_weights = 16 * hidden + 9 * hidden + hidden * 16
    bn = 2 * (hidden + hidden + 16)
    assert count_params(block) == conv_weights + bn
    assert block.conv_dw.conv.groups == hidden
    assert isinstance(block.conv_pwl.act, nn.Identity)  # linear bottleneck
    x = torch.randn(2, 16, 8, 8)
    block.eval()
    with torch.no_grad():
        block.conv_pwl.bn.weight.zero_()  # zero the residual branch: the block becomes the identity
    assert torch.equal(block(x), x)


def test_inverted_residual_without_skip_when_shapes_change():
    assert not InvertedResidual(16, 24, stride=1).has_skip
    assert not InvertedResidual(16, 16, stride=2).has_skip
    assert InvertedResidual(16, 24, stride=2)(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_inverted_residual_follows_conv_switch():
    assert InvertedResidual(8, 8, conv="standard").conv_dw.conv.groups == 1
    assert InvertedResidual(8, 8, conv="group", groups=4).conv_dw.conv.groups == 4


def test_separable_conv_rejects_bad_depth_multiplier():
    with pytest.raises(ValueError, match="depth_multiplier=0 must be a positive integer"):
        SeparableConv(4, 8, groups=4, depth_multiplier=0)


@pytest.mark.parametrize("value,expected", [(32 * 0.75, 24), (32 * 0.25, 8), (1280 * 1.0, 1280), (16 * 0.35, 8), (96 * 1.4, 136)])
def test_make_divisible_matches_reference_rounding(value, expected):
    assert make_divisible(value) == expected


# The newer convolution types. Batch norm counts 2 parameters per channel (scale and shift), as above;
# torch.utils.flop_counter counts no multiply-adds for it.

@pytest.mark.parametrize("k", [3, 5, 7])
def test_dsconv_with_a_larger_kernel_has_k_k_cin_plus_cin_cout_weights(k):
    block = create_conv_block("dsconv", 16, 24, k, norm_layer=None, act_layer=None)
    assert block.conv_dw.kernel_size == (k, k) and block.conv_dw.padding == ((k - 1) // 2,) * 2
    assert count_params(block) == k * k * 16 + 16 * 24
    assert count_macs(block, (16, H, W)) == (k * k * 16 + 16 * 24) * H * W


@pytest.mark.parametrize("in_chs,out_chs,stride,branches", [(8, 16, 1, 1), (16, 16, 1, 3), (8, 8, 2, 2)])
def test_repdsconv_branches_follow_the_mobileone_formula(in_chs, out_chs, stride, branches):
    """Depthwise step: b·(k²C + 2C) conv-BN branches + (C + 2C) 1×1 scale branch + 2C BN identity at
    stride 1; pointwise step: b·(C·C' + 2C') + 2C' BN identity when C = C'."""
    block = create_conv_block("repdsconv", in_chs, out_chs, 3, stride, rep_branches=branches)
    assert isinstance(block, RepSeparableConv)
    c, c_out, k = in_chs, out_chs, 3
    dw = branches * (k * k * c + 2 * c) + 3 * c + (2 * c if stride == 1 else 0)
    pw = branches * (c * c_out + 2 * c_out) + (2 * c_out if c == c_out else 0)
    assert count_params(block) == dw + pw
    h_out = (H - 1) // stride + 1
    macs = (branches * k * k * c + c) * h_out * h_out + branches * c * c_out * h_out * h_out
    assert count_macs(block, (in_chs, H, W)) == macs
    assert block(torch.randn(2, in_chs, H, W)).shape == (2, out_chs, h_out, h_out)


@pytest.mark.parametrize("in_chs,ratio,dim_conv", [(16, 0.25, 4), (24, 0.25, 6), (16, 0.5, 8), (6, 0.25, 1)])
def test_pconv_has_k_k_dim_squared_plus_cin_cout_weights(in_chs, ratio, dim_conv):
    block = create_conv_block("pconv", in_chs, 32, 3, pconv_ratio=ratio)
    assert block.conv_partial.dim_conv == dim_conv
    assert count_params(block) == 9 * dim_conv**2 + in_chs * 32 + 2 * 32
    assert count_macs(block, (in_chs, H, W)) == (9 * dim_conv**2 + in_chs * 32) * H * W


def test_partial_conv_leaves_the_other_channels_untouched_and_samples_them_at_stride_2():
    x = torch.randn(2, 16, 7, 7)
    same, strided = PartialConv(16), PartialConv(16, stride=2)
    assert torch.equal(same(x)[:, 4:], x[:, 4:])
    assert torch.equal(same(x)[:, :4], same.conv(x[:, :4]))
    y = strided(x)
    assert y.shape == (2, 16, 4, 4)
    assert torch.equal(y[:, 4:], x[:, 4:, ::2, ::2])
    assert torch.equal(y[:, :4], strided.conv(x[:, :4]))


@pytest.mark.parametrize("ratio", [0, 1.5, "a", True])
def test_pconv_ratio_out_of_range_is_refused(ratio):
    with pytest.raises(ValueError, match=rf"pconv_ratio={ratio!r} must be a number in \(0, 1\]"):
        create_conv_block("pconv", 16, 16, pconv_ratio=ratio)


@pytest.mark.parametrize("branches", [0, 1.5])
def test_rep_branches_must_be_a_positive_integer(branches):
    with pytest.raises(ValueError, match=f"rep_branches={branches!r} must be a positive integer"):
        create_conv_block("repdsconv", 16, 16, rep_branches=branches)


@pytest.mark.parametrize("in_chs,out_chs,stride,k", [(16, 16, 1, 3), (16, 24, 2, 3), (16, 16, 1, 5)])
def test_fused_mbconv_has_k_k_cin_hidden_plus_hidden_cout_weights(in_chs, out_chs, stride, k):
    block = inverted_residual("fused", in_chs, out_chs, stride, expand_ratio=6, kernel_size=k)
    hidden = 6 * in_chs
    assert block.has_skip == (stride == 1 and in_chs == out_chs)
    assert count_params(block) == k * k * in_chs * hidden + 2 * hidden + hidden * out_chs + 2 * out_chs
    h_out = (H - 1) // stride + 1
    assert count_macs(block, (in_chs, H, W)) == (k * k * in_chs * hidden + hidden * out_chs) * h_out * h_out
    assert block(torch.randn(2, in_chs, H, W)).shape == (2, out_chs, h_out, h_out)


@pytest.mark.parametrize("conv", ["repdsconv", "pconv"])
def test_inverted_residual_spatial_step_of_the_new_types(conv):
    """repdsconv: depthwise k×k conv-BN branch + 1×1 depthwise scale conv-BN + BN identity on the hidden
    width; pconv: a bare 3×3 on a quarter of the hidden channels."""
    block = inverted_residual(conv, 16, 16, 1, expand_ratio=6)
    hidden = 96
    outer = 16 * hidden + 2 * hidden + hidden * 16 + 2 * 16
    spatial = 9 * hidden + 2 * hidden + 3 * hidden + 2 * hidden if conv == "repdsconv" else 9 * (hidden // 4) ** 2
    assert count_params(block) == outer + spatial
    spatial_macs = (9 * hidden + hidden) if conv == "repdsconv" else 9 * (hidden // 4) ** 2
    assert count_macs(block, (16, H, W)) == (16 * hidden + hidden * 16 + spatial_macs) * H * W


def test_fused_is_a_block_not_a_layer():
    with pytest.raises(ValueError, match=r"^conv='fused' \(fused MBConv\) replaces an inverted residual's "
                                         r"expansion and depthwise steps: a block, not a layer; expected one of "
                                         r"standard, dsconv, group, repdsconv, pconv$"):
        create_conv_block("fused", 16, 16)


@pytest.mark.parametrize("conv", ["repdsconv", "pconv"])
def test_spatial_conv_of_the_new_types_takes_only_same_padding(conv):
    assert spatial_conv(conv, 8, 16, (3, 3), (2, 2), (1, 1), (1, 1))(torch.randn(1, 8, 9, 9)).shape == (1, 16, 5, 5)
    with pytest.raises(ValueError, match=rf"^conv='{conv}' takes only 'same' padding and no dilation "
                                         r"\(got padding=\(2, 2\), dilation=\(2, 2\)\)$"):
        spatial_conv(conv, 8, 16, (3, 3), 1, (2, 2), (2, 2))
