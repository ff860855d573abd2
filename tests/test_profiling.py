"""Time per layer type (torch.profiler) and the rank correlation of cost metrics with latency."""

import math

import pytest

from dsnet.measure import layer_costs
from dsnet.models import create_model
from dsnet.profiling import TIME_TYPES, cost_latency_correlation, layer_type_shares, spearman


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


def test_spearman_on_exact_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties: mean ranks 1.5, 1.5, 3
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="spearman: 2 values against 3"):
        spearman([1, 2], [1, 2, 3])


def test_cost_latency_correlation_skips_runs_without_the_metric():
    runs = [dict(params=1, macs=4, activations=None, memory_traffic_bytes=10, latency_ms_p50=1.0),
            dict(params=2, macs=3, activations=5, memory_traffic_bytes=30, latency_ms_p50=2.0),
            dict(params=3, macs=2, activations=6, memory_traffic_bytes=20, latency_ms_p50=3.0)]
    corr = cost_latency_correlation(runs)
    assert corr["params"] == pytest.approx(1.0) and corr["macs"] == pytest.approx(-1.0)
    assert corr["activations"] == pytest.approx(1.0)  # two runs have it
    assert corr["memory_traffic_bytes"] == pytest.approx(0.5)
