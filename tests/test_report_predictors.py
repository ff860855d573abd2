"""Which counted cost predicts latency: Spearman correlation per environment, table and figure."""

import csv
import math

import pytest

from dsnet.report import build_report
from dsnet.report.predictors import cost_latency_correlation, predictor_rows, spearman
from dsnet.results import SCHEMA_VERSION, write_json_atomic


def test_spearman_on_exact_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties: mean ranks 1.5, 1.5, 3
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([5, 5, 5], [1, 2, 3]))  # a constant cost predicts nothing
    with pytest.raises(ValueError, match="spearman: 2 values against 3"):
        spearman([1, 2], [1, 2, 3])


def test_cost_latency_correlation_skips_rows_without_the_cost():
    rows = [dict(params=1, macs=4, activations=None, memory_traffic_bytes=10, latency_ms_p50=1.0),
            dict(params=2, macs=3, activations=5, memory_traffic_bytes=30, latency_ms_p50=2.0),
            dict(params=3, macs=2, activations=6, memory_traffic_bytes=20, latency_ms_p50=3.0)]
    corr = cost_latency_correlation(rows)
    assert corr["params"] == pytest.approx(1.0) and corr["macs"] == pytest.approx(-1.0)
    assert corr["activations"] == pytest.approx(1.0)  # two rows have it
    assert corr["memory_traffic_bytes"] == pytest.approx(0.5)


def sweep_record(conv, width, latency, *, params, macs, activations, traffic, **extra):
    """results.json of a cost-only eval at one width (no top-1)."""
    return dict(
        arch="mobilenet_v1", conv=conv, width=width, groups=None, image_size=224, in_chans=3,
        num_classes=1000, dataset="imagenet_subset", seed=0, params=params, macs=macs,
        train_macs=3 * macs, macs_breakdown={}, top1=None, top5=None, latency_ms_p50=latency,
        latency_ms_p90=latency, latency_ms_iqr=0.1, throughput_img_s=1000.0 / latency,
        batch_size=64, device="cpu", device_name="Test CPU", precision="fp32", channels_last=False,
        num_threads=1, torch="2.14.1", git_rev="abc", ckpt_path=None, run_dir="/x",
        schema_version=SCHEMA_VERSION, activations=activations, memory_traffic_bytes=traffic,
        runtime="eager", **extra)


def test_report_ranks_the_costs_by_how_well_they_order_latency_and_leaves_busy_runs_out(tmp_path):
    # Five networks ordered by latency: MACs order them exactly, params swap one adjacent pair
    # (rho = 1 - 6*2/(5*24) = 0.9), activations swap two pairs (0.8), memory traffic is reversed (-1).
    sweep = {
        "ds_w0.25": ("dsconv", 0.25, 1.0, 10, 100, 1_000, 500),
        "ds_w0.5": ("dsconv", 0.5, 2.0, 30, 200, 3_000, 400),
        "std_w0.25": ("standard", 0.25, 3.0, 20, 300, 2_000, 300),
        "ds_w1.0": ("dsconv", 1.0, 4.0, 40, 400, 5_000, 200),
        "std_w0.5": ("standard", 0.5, 5.0, 50, 500, 4_000, 100),
    }
    for name, (conv, width, latency, params, macs, acts, traffic) in sweep.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        write_json_atomic(tmp_path / "runs" / name / "results.json", sweep_record(
            conv, width, latency, params=params, macs=macs, activations=acts, traffic=traffic))
    # a sixth network timed while others used the CPUs would break MACs' perfect order: left out
    (tmp_path / "runs" / "std_w1.0").mkdir()
    write_json_atomic(tmp_path / "runs" / "std_w1.0" / "results.json", sweep_record(
        "standard", 1.0, 0.5, params=60, macs=600, activations=6_000, traffic=50, contention_flagged=True))
    summary = build_report([tmp_path / "runs"], tmp_path / "out")
    assert {"cost_predictors.md", "cost_predictors.csv", "cost_vs_latency.png", "cost_vs_latency.svg"} <= set(summary.files)
    with (tmp_path / "out" / "cost_predictors.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["runtime"] == "eager" and row["n_networks"] == "5" and row["best_predictor"] == "macs"
    assert [float(row[f"rho_{k}"]) for k in ("params", "macs", "activations", "memory_traffic_bytes")] == \
        pytest.approx([0.9, 1.0, 0.8, -1.0])
    md = (tmp_path / "out" / "cost_predictors.md").read_text()
    assert "| eager | Test CPU | 1 | 64 | 5 | 0.900 | 1.000 | 0.800 | -1.000 | macs |" in md
    assert "![latency against each counted cost](cost_vs_latency.png)" in (tmp_path / "out" / "results.md").read_text()


def test_fewer_than_four_timed_networks_give_no_correlation(tmp_path):
    for i, width in enumerate((0.25, 0.5, 1.0)):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        write_json_atomic(tmp_path / "runs" / str(i) / "results.json", sweep_record(
            "dsconv", width, 1.0 + i, params=i, macs=i, activations=i, traffic=i))
    summary = build_report([tmp_path / "runs"], tmp_path / "out")
    assert "cost_vs_latency.png" not in summary.files
    assert "No environment has 4 or more timed networks." in (tmp_path / "out" / "cost_predictors.md").read_text()


def test_costs_that_order_latency_equally_well_share_the_best_place():
    rows = [dict(runtime="eager", device="cpu", device_name="Test CPU", precision="fp32", channels_last=False,
                 num_threads=1, batch_size=64, params=i, macs=10 * i, activations=5 - i, memory_traffic_bytes=None,
                 latency_ms_p50=float(i)) for i in range(1, 5)]
    (row,) = predictor_rows(rows)
    assert row["n_networks"] == 4 and row["best_predictor"] == "params = macs"
    assert row["rho_activations"] == pytest.approx(-1.0) and math.isnan(row["rho_memory_traffic_bytes"])
