"""Cost accounting: the flop counter against the analytic formulas, training MACs, latency."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dsnet.environment import environment
from dsnet.latency import MIN_BLOCKS, measure_latency
from dsnet.models.cost import count_macs, count_params, count_train_macs, layer_costs, macs_breakdown
from dsnet.models import create_model


def analytic_macs(model: nn.Module, input_size) -> int:
    """Σ over layers of output elements × multiply-adds per output, from the layers' shapes."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * k_h * k_w
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("arch,conv,options", [
    ("mobilenet_v1", "standard", {}), ("mobilenet_v1", "dsconv", {}), ("mobilenet_v1", "group", {"groups": 4}),
    ("mobilenet_v2", "dsconv", {}), ("mobilenet_v2", "group", {"groups": 2}),
])
def test_flop_counter_macs_equal_analytic_formula(arch, conv, options):
    model = create_model(arch, conv=conv, width=0.5, **options)
    assert count_macs(model, (3, 96, 96)) == analytic_macs(model, (3, 96, 96))


def test_train_macs_equal_flop_counter_when_there_are_no_groups():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16 * 36, 5))
    x = torch.randn(1, 3, 6, 6)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert count_train_macs(model, (3, 6, 6)) == counter.get_total_flops() // 2
    # first conv: forward + weight grad only; the others: forward + weight grad + input grad
    fwd = [3 * 9 * 8 * 36, 8 * 16 * 36, 16 * 36 * 5]
    assert count_train_macs(model, (3, 6, 6)) == 2 * fwd[0] + 3 * fwd[1] + 3 * fwd[2]


def test_train_macs_correct_the_flop_counters_grouped_backward():
    groups = 4
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=groups))
    x = torch.randn(1, 8, 5, 5)
    grouped_fwd = 25 * 8 * (8 // groups) * 9
    pointwise_fwd = 25 * 8 * 8
    expected = 2 * pointwise_fwd + 3 * grouped_fwd
    assert count_train_macs(model, (8, 5, 5)) == expected
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    # PyTorch multiplies the grouped weight gradient by the group count; we don't.
    counted = counter.get_total_flops() // 2
    assert counted == 2 * pointwise_fwd + grouped_fwd + grouped_fwd + groups * grouped_fwd
    assert counted > expected


def test_macs_breakdown_reproduces_table_2_of_the_paper():
    """Howard et al. 2017, Table 2: 1×1 convs hold 94.86% of the MACs and 74.59% of the parameters."""
    model = create_model("mobilenet_v1")
    breakdown = macs_breakdown(model, (3, 224, 224))
    total_macs = sum(v["macs"] for v in breakdown.values())
    total_params = sum(v["params"] for v in breakdown.values())
    assert total_macs == count_macs(model, (3, 224, 224))
    assert round(100 * breakdown["pointwise"]["macs"] / total_macs, 2) == 94.86
    assert round(100 * breakdown["depthwise"]["macs"] / total_macs, 2) == 3.06
    assert round(100 * breakdown["linear"]["macs"] / total_macs, 2) == 0.18
    assert round(100 * breakdown["pointwise"]["params"] / total_params, 1) == 74.6
    assert round(100 * breakdown["linear"]["params"] / total_params, 2) == 24.35
    assert breakdown["grouped"] == {"params": 0, "macs": 0}


def test_layer_types_are_classified():
    model = create_model("mobilenet_v1", conv="group", groups=4, width=0.25, num_classes=10)
    kinds = {cost.layer_type for cost in layer_costs(model, (3, 64, 64))}
    assert kinds == {"standard", "grouped", "pointwise", "linear"}
    first = layer_costs(model, (3, 64, 64))[0]
    assert first.name == "stem.conv" and not first.input_requires_grad


def test_count_params_counts_trainable_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    assert count_params(model) == 4 * 3 + 3 + 3 + 3
    model[0].weight.requires_grad_(False)
    assert count_params(model) == 3 + 3 + 3


def test_counting_leaves_the_model_in_training_mode_and_stats_untouched():
    model = create_model("mobilenet_v1", width=0.25).train()
    before = model.stem.bn.running_mean.clone()
    count_macs(model, (3, 32, 32))
    assert model.training
    assert torch.equal(model.stem.bn.running_mean, before)


def test_bad_input_size_is_rejected():
    with pytest.raises(ValueError, match=r"input_size=\(3, 0, 32\) must be \(channels, height, width\)"):
        count_macs(create_model("mobilenet_v1", width=0.25), (3, 0, 32))


def test_latency_reports_percentiles_throughput_and_environment():
    model = create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True)
    # One thread: two threads on a machine whose other core is busy take seconds per call.
    result = measure_latency(model, (3, 32, 32), min_run_time=0.05, throughput_batch_size=8, num_threads=1)
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p90"]
    assert result["latency_ms_iqr"] >= 0
    assert result["throughput_img_s"] > 0
    assert result["device"] == "cpu" and result["precision"] == "fp32" and result["num_threads"] == 1
    assert model.training  # restored
    tiny = measure_latency(nn.Linear(4, 2), (1, 1, 4), min_run_time=0.01, throughput_batch_size=2)
    assert tiny["num_threads"] == torch.get_num_threads()  # the default: torch's setting


def test_latency_times_at_least_min_blocks_equal_blocks_even_for_a_slow_model():
    # 0.05 s of timing for a model that takes longer than that per call: still MIN_BLOCKS blocks,
    # so p50/p90/IQR come from a spread, not from one block.
    model = create_model("mobilenet_v1", width=0.25, num_classes=10)
    result = measure_latency(model, (3, 224, 224), min_run_time=0.001, throughput_batch_size=2, num_threads=1)
    assert result["latency_repeats"] == MIN_BLOCKS
    assert result["latency_ms_iqr"] > 0 and result["latency_ms_p50"] <= result["latency_ms_p90"]


def test_latency_channels_last_and_bf16_run_on_cpu():
    model = create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True)
    result = measure_latency(model, (3, 32, 32), min_run_time=0.02, throughput_batch_size=4,
                             channels_last=True, precision="bf16", num_threads=1)
    assert result["channels_last"] and result["precision"] == "bf16" and result["num_threads"] == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp8"}, "precision='fp8'; expected one of fp32, bf16, fp16"),
    ({"precision": "fp16"}, "precision='fp16' is only supported on cuda"),
    ({"device": "tpu"}, "device='tpu'; expected 'cpu' or 'cuda[:N]'"),
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
])
def test_latency_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        measure_latency(nn.Linear(2, 2), (1, 1, 2), **kwargs)


def test_environment_names_the_code_revision():
    env = environment()
    assert env["torch"] == torch.__version__
    assert env["git_rev"]
