"""The deploy form: the same outputs as the training form in eval mode, batch norm folded, branches fused."""

import pytest
import torch
from torch import nn

from dsnet.blocks import create_conv_block, spatial_conv
from dsnet.models.cost import count_params
from dsnet.models import create_model
from dsnet.models.deploy import deploy_form, fold_batch_norms

# Folding multiplies a convolution by gamma / sqrt(running_var + eps), up to ~300x for the channels a
# ReLU left dead (running_var ~ 0, as in trained networks and in calibrated() below), so float32
# rounding grows with it. Measured max |deploy - training| / max(1, max |logit|) over every case below
# (torch 2.14.1, CPU): 2.7e-5 (timm's MobileOne-S0), 2.2e-5 (ResNet-50), 1.8e-5 (torchvision's
# MobileNetV2), at most 9.3e-6 for MobileNetV1/V2, ResNet-18/34 and the other converted networks; the
# bound leaves a factor of 3.7.
RTOL = 1e-4
SIZE = 16  # px; every small-input backbone downsamples by 16 at most


def calibrated(model: nn.Module, in_chans: int = 3, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with batch norms that do something: random scales and shifts, and running
    statistics gathered from random images (so the deep networks' logits stay of order 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(8, in_chans, SIZE, SIZE, generator=gen))
    return model.eval()


def max_error(model: nn.Module, net: nn.Module, in_chans: int = 3) -> float:
    """max |net(x) - model(x)| over a batch of random images, relative to max(1, max |model(x)|)."""
    x = torch.randn(4, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
        return (reference - net(x)).abs().max().item() / max(1.0, reference.abs().max().item())


def batch_norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


CASES = [(arch, conv) for arch in ("mobilenet_v1", "mobilenet_v2", "resnet18", "resnet34", "resnet50")
         for conv in ("standard", "dsconv", "group", "repdsconv", "pconv", "fused")
         if conv != "fused" or arch == "mobilenet_v2"]


def check_deploy_form(arch: str, conv: str, **options) -> None:
    groups = {"groups": 2} if conv == "group" else {}
    torch.manual_seed(0)
    model = calibrated(create_model(arch, conv=conv, width=0.25, num_classes=10, small_input=True, **groups, **options))
    net = deploy_form(model)
    assert type(net) is type(model) and not net.training
    assert batch_norms(net) == 0  # every norm of these networks follows a convolution
    assert max_error(model, net) < RTOL


@pytest.mark.parametrize("arch,conv", CASES)
def test_deploy_form_equals_the_training_form(arch, conv):
    check_deploy_form(arch, conv)


def test_deploy_form_of_a_stage_mix():
    check_deploy_form("mobilenet_v2", "dsconv", stage_conv=["fused", "fused", "repdsconv", "pconv", "dsconv",
                                                             "standard", "dsconv"])


@pytest.mark.parametrize("source,conv", [("timm:resnet18", "dsconv"), ("timm:resnet18", "repdsconv"),
                                         ("torchvision:mobilenet_v2", "standard"),
                                         ("timm:mobilenetv3_small_050", "standard"),
                                         ("timm:mobileone_s0", "standard"), ("timm:repvgg_a0", "standard")])
def test_deploy_form_of_converted_networks(source, conv):
    """torchvision's Conv2dNormActivation and timm's BatchNormAct2d (whose activation stays) fold too,
    and timm's own re-parameterisable networks are fused by their blocks' reparameterize()."""
    torch.manual_seed(0)
    model = calibrated(create_model(source, conv=conv, num_classes=10, image_size=SIZE))
    net = deploy_form(model)
    assert batch_norms(net) == 0
    assert max_error(model, net) < RTOL


def test_deploy_form_is_exact_in_float64():
    """EfficientNet-B0 as built here (random weights, calibrated norms, 16 px) changes its logits by 3e-2
    for a 1e-6 relative change of its stem weights: float32 rounding cannot be compared there. In
    float64 the folded network agrees to 4e-12 (measured): the folding itself is exact."""
    torch.manual_seed(0)
    model = calibrated(create_model("timm:efficientnet_b0", conv="standard", num_classes=10, image_size=SIZE))
    model = model.double()
    net = deploy_form(model)
    assert batch_norms(net) == 0
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - net(x)).abs().max().item() < 1e-9 * max(1.0, model(x).abs().max().item())


def test_channels_last_deploy_form():
    model = calibrated(create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True))
    net = deploy_form(model, memory_format=torch.channels_last)
    assert net.features[3].conv_pw.weight.is_contiguous(memory_format=torch.channels_last)
    assert max_error(model, net) < RTOL


def test_the_trained_network_is_left_as_it_was():
    model = create_model("mobilenet_v1", width=0.25, num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy_form(model)
    assert model.training and batch_norms(model) == 27  # the stem and two per layer, as built
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the re-parameterised block: fused into exactly dsconv --------------------------------------

def structure(net: nn.Module) -> list[tuple[str, str, tuple]]:
    """Every module's name and class, every parameter's name and shape: what the runtimes execute."""
    return [(name, type(m).__name__, ()) for name, m in net.named_modules()] + [
        (name, "param", tuple(p.shape)) for name, p in net.named_parameters()]


@pytest.mark.parametrize("in_chs,out_chs,stride,branches", [(16, 16, 1, 3), (16, 32, 2, 1)])
def test_repdsconv_fuses_into_a_plain_dsconv_block(in_chs, out_chs, stride, branches):
    rep = calibrated(create_conv_block("repdsconv", in_chs, out_chs, 3, stride, rep_branches=branches), in_chs)
    fused = rep.fuse()
    assert max_error(rep, fused, in_chs) < RTOL
    plain = deploy_form(calibrated(create_conv_block("dsconv", in_chs, out_chs, 3, stride), in_chs))
    assert structure(fused) == structure(plain)
    assert count_params(fused) == 9 * in_chs + in_chs * out_chs + in_chs + out_chs  # weights and two biases


def test_bare_repdsconv_fuses_into_the_bare_dsconv_pair():
    """Without an activation the depthwise bias moves into the pointwise one: no bias on conv_dw, as in dsconv."""
    rep = calibrated(spatial_conv("repdsconv", 8, 16, 3, 2), 8)
    fused = rep.fuse()
    assert fused.conv_dw.bias is None and fused.conv_pw.bias is not None
    assert max_error(rep, fused, 8) < RTOL


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_deploy_form_of_repdsconv_is_that_of_dsconv(arch):
    """Same modules, same parameter shapes: the network the runtimes time is dsconv's, so its latency is too."""
    rep = deploy_form(create_model(arch, conv="repdsconv", width=0.5, rep_branches=2).eval())
    plain = deploy_form(create_model(arch, conv="dsconv", width=0.5).eval())
    assert structure(rep) == structure(plain)


# --- what is not folded, and what is refused --------------------------------------------------------

class SharedConvOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv's output is used beside the norm: folding would change it


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_a_norm_whose_conv_output_is_used_elsewhere_stays():
    model = calibrated(SharedConvOutput())
    net = deploy_form(model)
    assert isinstance(net.bn, nn.BatchNorm2d)
    assert max_error(model, net) == 0


def test_an_untraceable_network_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^cannot fold batch norm in Branchy: torch\.fx cannot trace it \(.+\)$"):
        deploy_form(Branchy())


def test_folding_needs_eval_mode_and_a_known_memory_format():
    with pytest.raises(ValueError, match=r"fold_batch_norms needs the model in eval mode"):
        fold_batch_norms(SharedConvOutput().train())
    with pytest.raises(ValueError, match=r"^memory_format=torch.preserve_format; expected one of "
                                         r"torch.contiguous_format, torch.channels_last$"):
        deploy_form(SharedConvOutput(), memory_format=torch.preserve_format)



@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_latency_times_the_deploy_form_unless_told_to_time_the_training_graph(runtime):
    from dsnet.latency import prepare_runtime

    net = create_model("mobilenet_v1", conv="repdsconv", width=0.25, num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 16, 16)
    deployed = prepare_runtime(runtime, net, num_threads=1)
    training = prepare_runtime(runtime, net, num_threads=1, deploy=False)
    norms = [sum(isinstance(m, nn.BatchNorm2d) for m in r.model.modules()) for r in (deployed, training)]
    assert (deployed.deploy, training.deploy) == (True, False)
    assert norms[0] == 0 and norms[1] == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "the caller's network is left as it was"
    with torch.inference_mode():
        expected = net(x)
        for r in (deployed, training):  # each runtime's own output, checked against eager of its model
            assert torch.allclose(r.forward_for(x)(), expected, atol=1e-4, rtol=1e-4)
