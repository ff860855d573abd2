"""Network conversion: timm and torchvision networks of three families, converted to dsconv and group.

Output shapes stay, every parameter learns, parameters and MACs equal the analytic count, converting
ResNet-18 gives exactly dsnet's own ResNet-18, and what cannot be converted is refused in one line.
"""

import importlib.util
import logging

import pytest
import torch
from conftest import ROOT, compose_train
from hydra.utils import instantiate
from torch import nn

from dsnet.blocks import spatial_conv
from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model
from dsnet.models.convert import build_source, convert_convs, convert_network, is_full_spatial
from dsnet.task import train

SIDE = 64  # px: every ResNet stage keeps a map larger than 1x1, so a misplaced stride would show


@pytest.mark.parametrize("library,conv,options", [
    ("timm", "dsconv", {}), ("timm", "group", {"groups": 2}), ("timm", "dsconv", {"convert_stem": True}),
    ("torchvision", "dsconv", {}), ("torchvision", "group", {"groups": 4}),
], ids=["timm-dsconv", "timm-group2", "timm-dsconv_stem", "torchvision-dsconv", "torchvision-group4"])
def test_converted_resnet18_equals_dsnets_own_resnet18(library, conv, options):  # standard: test_resnet.py
    converted = create_model(f"{library}:resnet18", conv=conv, image_size=SIDE, **options)
    ours = create_model("resnet18", conv=conv, **options)
    assert count_params(converted) == count_params(ours)
    assert count_macs(converted, (3, SIDE, SIDE)) == count_macs(ours, (3, SIDE, SIDE))
    assert converted.report.params_after == count_params(ours)


def _output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        def hook(m, i, out, name=name):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape)
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


FAMILIES = [  # (source, conv, options, convolutions converted)
    ("timm:resnet18", "dsconv", {}, 16),
    ("timm:convnext_atto", "group", {"groups": 8}, 3),     # the three 2x2 stride-2 downsampling convs
    ("timm:efficientnet_b0", "dsconv", {"convert_stem": True}, 1),  # its only full 3x3 is the stem
    ("torchvision:resnet18", "group", {"groups": 4}, 16),
]


@pytest.mark.parametrize("source,conv,options,n", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_conversion_keeps_every_output_shape_and_counts_analytically(source, conv, options, n):
    torch.manual_seed(0)
    net = build_source(source, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    before = _output_shapes(net, x)
    full = [(name, m) for name, m in net.named_modules() if is_full_spatial(m)]
    targets = full if options.get("convert_stem") else full[1:]
    # each k×k conv of in x out channels: k·k·in·out weights -> k·k·in·(in/g) + in·out, per output pixel
    saved = {}
    for name, m in targets:
        k = m.kernel_size[0] * m.kernel_size[1]
        g = m.in_channels if conv == "dsconv" else options["groups"]
        saved[name] = k * m.in_channels * m.out_channels - (k * m.in_channels * m.in_channels // g
                                                             + m.in_channels * m.out_channels)
    params, macs = count_params(net), count_macs(net, (3, 32, 32))

    report = convert_network(net, conv, source=source, input_size=(3, 32, 32), **options)
    assert report.converted == [name for name, _ in targets] and len(report.converted) == n
    after = _output_shapes(net, x)
    common = before.keys() & after.keys()  # every module that was there before, the converted ones included
    assert set(saved) <= common and len(common) == len(before)
    assert {name: after[name] for name in common} == {name: before[name] for name in common}
    expected_params = params - sum(saved.values())
    expected_macs = macs - sum(w * before[name][-1] * before[name][-2] for name, w in saved.items())
    assert count_params(net) == report.params_after == expected_params
    assert count_macs(net, (3, 32, 32)) == report.macs_after == expected_macs
    assert (report.params_before, report.macs_before) == (params, macs)
    kind = "depthwise" if conv == "dsconv" else "grouped"
    assert report.layers_after[kind] - report.layers_before[kind] == n
    assert report.layers_before["standard"] - report.layers_after["standard"] == n
    assert report.layers_after["pointwise"] - report.layers_before["pointwise"] == n


@pytest.mark.parametrize("source,conv,options", [
    ("timm:resnet18", "dsconv", {}),
    ("timm:convnext_atto", "group", {"groups": 4}),
    ("timm:efficientnet_b0", "dsconv", {"convert_stem": True}),
])
def test_every_parameter_of_a_converted_network_gets_a_gradient(source, conv, options):
    torch.manual_seed(0)
    net = create_model(source, conv=conv, num_classes=5, in_chans=1, image_size=32, **options)
    # timm zero-initialises the last norm of each residual branch (zero_init_last), which by design
    # blocks the branch's gradient until that norm's scale moves: start from scale 1 everywhere.
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.weight is not None:
            nn.init.ones_(module.weight)
    logits = net(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_conversion_report_is_logged_and_returned(caplog):
    with caplog.at_level(logging.INFO, logger="dsnet.models.convert"):
        net = create_model("timm:resnet18", conv="dsconv", image_size=SIDE)
    assert [r.getMessage() for r in caplog.records] == [
        "timm:resnet18 -> conv=dsconv: 16 full k×k convolutions converted (stem conv1 kept full)",
        "  layers: standard 17 -> 1, depthwise 0 -> 16, pointwise 3 -> 19, grouped 0 -> 0, linear 1 -> 1",
        "  params: 11,689,512 -> 1,955,176 (before/after 5.98x)",
        "  MACs per 3x64x64 image: 148,557,824 -> 27,964,416 (before/after 5.31x)",
    ]
    assert (net.report.params_before, net.report.macs_after) == (11_689_512, 27_964_416)


def test_total_stride_guard_for_timm_and_torchvision_networks():
    timm_net = create_model("timm:convnext_atto", conv="dsconv", image_size=32)
    tv_net = create_model("torchvision:resnet18", conv="dsconv", image_size=32)
    assert timm_net.reduction == tv_net.reduction == 32  # timm's feature_info; a probe pass for torchvision
    with pytest.raises(ValueError, match=r"^image_size=28 is too small for torchvision:resnet18, which "
                                         r"downsamples by 32: use at least 32$"):
        tv_net.check_input_size(28)
    timm_net.check_input_size(32)


class CircularPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")


@pytest.mark.parametrize("call,message", [
    (lambda: create_model("timm:no_such_net"), r"^source='timm:no_such_net': timm has no model 'no_such_net'"),
    (lambda: create_model("torchvision:no_such_net"), r"^source='torchvision:no_such_net': torchvision has no "
                                                      r"classification model 'no_such_net'"),
    (lambda: create_model("keras:resnet18"), r"^source='keras:resnet18' must be <library>:<model> with library "
                                             r"one of timm, torchvision$"),
    (lambda: create_model("torchvision:resnet18", in_chans=1), r"^source='torchvision:resnet18': torchvision "
                                                               r"networks take 3 input channels, not in_chans=1"),
    (lambda: create_model("timm:resnet18", width=0.5), r"^width=0\.5: a converted network keeps the channels of "
                                                       r"timm:resnet18; only width=1\.0$"),
    (lambda: create_model("timm:resnet18", conv="group", groups=3, image_size=32),
     r"^cannot convert layer1\.0\.conv1 \(Conv2d 64 -> 64 channels\): groups=3 must divide both in_chs=64 "
     r"and out_chs=64$"),
    (lambda: create_model("timm:tf_efficientnet_b0", convert_stem=True, image_size=32),
     r"^cannot convert conv_stem \(Conv2dSame 3 -> 32 channels\): only plain torch\.nn\.Conv2d layers"),
    (lambda: create_model("timm:efficientnet_b0", image_size=32),
     r"^timm:efficientnet_b0 has no full k×k convolution to convert to conv='dsconv' besides the stem "
     r"conv_stem \(convert_stem=true converts it\)$"),
    (lambda: create_model("timm:resnet18", source="timm:resnet34"),
     r"^arch='timm:resnet18' and source='timm:resnet34' name different networks$"),
    (lambda: convert_convs(CircularPad(), "dsconv"),
     r"^cannot convert conv \(Conv2d 8 -> 8 channels\): padding_mode='circular', only 'zeros' is supported$"),
])
def test_what_cannot_be_converted_is_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_a_refused_conversion_changes_nothing():
    net = build_source("timm:resnet18")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        convert_convs(net, "group", groups=3)
    assert count_params(net) == 11_689_512  # every layer is checked before the first is replaced


def test_model_config_converts_through_create_model(tmp_path):
    cfg = compose_train("model=convert", "model.source=timm:convnext_atto", "model.conv=group", "model.groups=8",
                        "model.width=1.0", "data.image_size=32", run_dir=tmp_path)
    assert cfg.model._target_ == "dsnet.models.create_model" and cfg.model.arch == "timm:convnext_atto"
    net = instantiate(cfg.model)
    assert net.report.converted == ["stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"]
    assert net.net.stages[1].downsample[1].conv_dw.groups == 8
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_training_a_converted_network_records_its_source(tmp_path):
    cfg = compose_train("model=convert", "model.source=timm:resnet18", "model.width=1.0", "data.image_size=32",
                        run_dir=tmp_path)
    metrics, _ = train(cfg)
    ours = create_model("resnet18", conv="dsconv", num_classes=10)
    assert (metrics["arch"], metrics["conv"], metrics["params"]) == ("timm:resnet18", "dsconv", count_params(ours))
    assert metrics["macs"] == count_macs(ours, (3, 32, 32))
    assert 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.parametrize("kernel,stride,padding,dilation", [((1, 7), 2, (0, 3), 1), (3, 1, 2, 2), (5, 2, 0, 1)])
def test_separable_step_keeps_the_full_convolutions_geometry(kernel, stride, padding, dilation):
    full = nn.Conv2d(8, 16, kernel, stride, padding, dilation, bias=True)
    step = spatial_conv("dsconv", 8, 16, kernel, stride, padding, dilation, bias=True)
    x = torch.randn(1, 8, 19, 23)
    assert step(x).shape == full(x).shape
    k = full.kernel_size[0] * full.kernel_size[1]
    # the bias sits on the pointwise step only: k·k·8 depthwise + 8·16 pointwise weights + 16 biases
    assert count_params(step) == k * 8 + 8 * 16 + 16 and step.conv_dw.bias is None


def test_convert_report_script_reports_and_refuses(capsys):
    # scripts/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("convert_report", ROOT / "scripts" / "convert_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["timm:convnext_atto", "timm:efficientnet_b0", "--image-size", "32"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "timm:convnext_atto -> conv=dsconv: 3 full k×k convolutions converted (stem stem.0 kept full)"
    assert lines[-1].startswith("timm:efficientnet_b0: refused: timm:efficientnet_b0 has no full k×k convolution")
    assert len(lines) == 5  # four report lines, one refusal
