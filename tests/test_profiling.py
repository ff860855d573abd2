"""Time per layer type (torch.profiler) beside the params and MAC shares."""

import pytest

from dsnet.models.cost import layer_costs
from dsnet.models import create_model
from dsnet.profiling import TIME_TYPES, layer_type_shares, onnxruntime_layer_type_times


def test_layer_type_shares_partition_params_macs_and_time():
    net = create_model("mobilenet_v1", conv="dsconv", width=0.25, num_classes=10, small_input=True)
    shares = layer_type_shares(net, (3, 32, 32), passes=2)
    assert tuple(shares) == TIME_TYPES
    for column in ("params", "macs", "time"):
        assert sum(s[column] for s in shares.values()) == pytest.approx(1.0)
    costs = {c.name: c for c in layer_costs(net, (3, 32, 32))}
    total_macs = sum(c.macs for c in costs.values())
    depthwise = sum(c.macs for n, c in costs.items() if c.layer_type == "depthwise")
    assert shares["depthwise"]["macs"] == pytest.approx(depthwise / total_macs, abs=1e-12)
    assert shares["stem"]["macs"] == pytest.approx(costs["stem.conv"].macs / total_macs, abs=1e-12)
    assert shares["head"]["macs"] == pytest.approx(costs["head.fc"].macs / total_macs, abs=1e-12)
    assert shares["full"]["macs"] == shares["grouped"]["macs"] == 0.0
    # every type that has layers took measurable time; types without layers took none
    assert all(shares[k]["time"] > 0 for k in ("stem", "depthwise", "pointwise", "head"))
    assert shares["full"]["time"] == shares["grouped"]["time"] == 0.0
    assert net.training  # restored


@pytest.mark.parametrize("conv, expected", [
    ("dsconv", {"stem", "depthwise", "pointwise", "head"}),
    ("standard", {"stem", "full", "head"}),
    ("group", {"stem", "grouped", "pointwise", "head"}),  # the grouped step replaces the depthwise one
])
def test_onnxruntime_profiler_charges_kernels_to_the_layer_types_the_network_has(conv, expected):
    extra = {"groups": 2} if conv == "group" else {}
    net = create_model("mobilenet_v1", conv=conv, width=0.25, num_classes=10, in_chans=1, small_input=True, **extra)
    times = onnxruntime_layer_type_times(net, (1, 28, 28), passes=2)
    assert tuple(times) == TIME_TYPES
    assert {kind for kind, ms in times.items() if ms > 0} - {"other"} == expected
