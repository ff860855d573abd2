"""The roofline: the traffic model and intensity by hand, the roof's arithmetic, the ceilings file,
and layers placed on it from both profilers (tiny networks; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import math

import pytest
from torch import nn

from conftest import ROOT
from dsnet.models.cost import layer_costs
from dsnet.models import create_model
from dsnet.roofline import (Ceilings, LayerPoint, by_kind, intensity, layer_points, profile_eager,
                            profile_onnxruntime, read_ceilings, roof_time_ms)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_depthwise_3x3_traffic_and_intensity_by_hand():
    # 4 channels, 8x8 map, stride 1: 9 MACs per output element; input, 36 weights and output once, fp32.
    (cost,) = layer_costs(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)), (4, 8, 8))
    assert cost.macs == 9 * 4 * 8 * 8 == 2304
    assert cost.memory_bytes == 4 * (256 + 36 + 256) == 2192
    assert intensity(cost.macs, cost.memory_bytes) == 4608 / 2192
    # Large maps approach 2 * 9 / (2 * 4) = 2.25 FLOP per byte, the figure usually quoted.
    (big,) = layer_costs(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)), (64, 112, 112))
    assert 2.24 < intensity(big.macs, big.memory_bytes) < 2.25


def test_pointwise_and_full_3x3_intensity_by_hand():
    (pw,) = layer_costs(nn.Sequential(nn.Conv2d(8, 8, 1, bias=False)), (8, 4, 4))
    assert (pw.macs, pw.memory_bytes) == (8 * 8 * 16, 4 * (128 + 64 + 128))
    assert intensity(pw.macs, pw.memory_bytes) == 2048 / 1280 == 1.6
    (full,) = layer_costs(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False)), (8, 4, 4))
    assert (full.macs, full.memory_bytes) == (9 * 8 * 8 * 16, 4 * (128 + 576 + 128))
    assert intensity(full.macs, full.memory_bytes) == 18432 / 3328


def test_roof_bound_ridge_and_time():
    roof = Ceilings(peak_gflops=100.0, bandwidth_gbs=10.0)
    assert roof.ridge == 10.0
    assert roof.bound_gflops(2.25) == 22.5  # memory-bound: bandwidth x intensity
    assert roof.bound_gflops(50.0) == 100.0  # compute-bound: the peak
    assert roof.time_s(2e9, 1e8) == pytest.approx(0.02)  # 2 GFLOP at 100 GFLOP/s beats 0.1 GB at 10 GB/s
    assert roof.time_s(1e8, 1e9) == pytest.approx(0.1)


def test_by_kind_shares_and_achieved_gflops_from_given_times():
    net = create_model("mobilenet_v1", conv="dsconv", width=0.25, num_classes=10, in_chans=3, small_input=False)
    points = layer_points(net, (3, 32, 32))
    kinds = [p.kind for p in points]
    assert kinds == ["stem"] + ["depthwise", "pointwise"] * 13 + ["classifier"]
    for p in points:
        p.times_ms["eager"] = 1.0  # 1 ms each: time shares are layer-count shares
    roof = Ceilings(100.0, 10.0)
    rows = by_kind(points, roof, "eager")
    assert list(rows) == ["stem", "depthwise", "pointwise", "classifier"]
    assert rows["depthwise"]["time_share"] == 13 / 28
    dw = [p for p in points if p.kind == "depthwise"]
    macs = sum(p.cost.macs for p in dw)
    assert rows["depthwise"]["macs"] == macs
    assert rows["depthwise"]["gflops"] == pytest.approx(2 * macs / 13e-3 / 1e9)
    ai = intensity(macs, sum(p.cost.memory_bytes for p in dw))
    assert rows["depthwise"]["roof_share"] == pytest.approx(rows["depthwise"]["gflops"] / min(100.0, 10.0 * ai))
    assert math.isclose(sum(r["macs_share"] for r in rows.values()), 1.0)
    assert roof_time_ms(points, roof) == pytest.approx(sum(r["roof_ms"] for r in rows.values()))


@pytest.mark.slow  # an ONNX export and two profiled runs: ~18 s on a loaded 2-core machine
def test_both_profilers_time_every_layer_of_a_tiny_network():
    net = create_model("mobilenet_v1", conv="dsconv", width=0.25, num_classes=10, in_chans=3, small_input=False)
    points = layer_points(net, (3, 32, 32))
    forward = profile_eager(net, points, (3, 32, 32), passes=2)
    assert all(0 < p.conv_ms <= p.times_ms["eager"] for p in points)
    assert sum(p.times_ms["eager"] for p in points) <= forward
    ort_forward = profile_onnxruntime(net, points, (3, 32, 32), passes=2)
    assert all(p.times_ms["onnxruntime"] > 0 for p in points)
    assert sum(p.times_ms["onnxruntime"] for p in points) <= ort_forward


def test_bench_roofline_writes_ceilings_that_read_back(tmp_path, capsys):
    bench = load_script("bench_roofline")
    path = tmp_path / "m.csv"
    rows = bench.main(["--threads", "1", "--gemm-sizes", "64", "--levels", "L2", "--min-run-time", "0.01",
                       "--tag", "m", "--csv", str(path)])
    out = capsys.readouterr().out
    lanes = bench.fp32_lanes(bench.cpu_flags())
    assert f"theoretical fp32 peak: {2 * lanes * 2} FLOP/cycle/core (2 FMA units x {lanes} lanes x 2)" in out
    gemm = next(r for r in rows if r["quantity"] == "gemm_fp32")
    triad = next(r for r in rows if r["quantity"] == "triad_L2")
    ridge = next(r for r in rows if r["quantity"] == "ridge_L2")
    assert ridge["value"] == pytest.approx(gemm["value"] / triad["value"], rel=1e-2)
    roof = read_ceilings(path, threads=1, level="L2")
    assert (roof.peak_gflops, roof.bandwidth_gbs) == (gemm["value"], triad["value"])
    with pytest.raises(ValueError, match=r"no gemm_fp32 and triad_DRAM rows at threads=1; it has threads \['1'\]"):
        read_ceilings(path, threads=1)


def test_fp32_lanes_follow_the_widest_vector_flag():
    bench = load_script("bench_roofline")
    assert bench.fp32_lanes({"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw"}) == 16  # Intel Xeon (Skylake-SP on)
    assert bench.fp32_lanes({"sse2", "avx", "avx2", "fma"}) == 8  # AMD EPYC before Zen 4
    assert bench.fp32_lanes({"sse2", "sse4_2"}) == 4


def test_read_ceilings_names_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot be read .*python scripts/bench_roofline.py"):
        read_ceilings(tmp_path / "none.csv", threads=1)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a bench_roofline CSV"):
        read_ceilings(tmp_path / "other.csv", threads=1)


def test_layer_point_intensity_matches_its_cost():
    (cost,) = layer_costs(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)), (4, 8, 8))
    point = LayerPoint(cost, "depthwise")
    assert (point.flops, point.intensity) == (4608, 4608 / 2192)
