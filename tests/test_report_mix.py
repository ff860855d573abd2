"""A conv-mix study (experiment=conv_mix): runs named by their mix, not by model.conv, from the run
directory to runs.csv, the report's configurations, its comparisons, and the table per mix with its
latency per runtime, Pareto fronts and excess over the chord between the pure ends."""

from __future__ import annotations

import json

import yaml
from conftest import read_csv

from dsnet.report.studies import report_study
from dsnet.report.tidy import write_table
from dsnet.study.collect import collect

# MobileNetV1 w0.5 on Fashion-MNIST through the small-input stem: (params, MACs) of three mixes.
COST = {"dsconv": (823434, 10865216), "full2": (875450, 23428032), "standard": (7075322, 91467008)}
TOP1 = {"dsconv": (0.80, 0.82), "full2": (0.87, 0.86), "standard": (0.90, 0.88)}  # seeds 1, 2


def mix_run(mix: str, seed: int) -> dict:
    params, macs = COST[mix]
    return {"run": f"mixes/{mix}_w0.5_seed{seed}", "stage": "mixes", "top1_source": "metrics.json",
            "arch": "mobilenet_v1", "conv": "dsconv", "mix": mix, "dataset": "Fashion-MNIST", "width": 0.5,
            "image_size": 28, "in_chans": 1, "num_classes": 10, "params": params, "macs": macs, "seed": seed,
            "epochs": 3, "train_size": 10000, "lr": 0.1, "weight_decay": 5e-05, "top1": TOP1[mix][seed - 1]}


def latency_row(mix: str, runtime: str, ms: float) -> dict:
    return {"mix": mix, "runtime": runtime, "image_size": 28, "latency_ms_p50": ms, "flagged_rounds": 0,
            "device_name": "Xeon"}


def test_the_collector_reads_a_runs_mix_from_its_config_and_not_its_conv(tmp_path):
    run_dir = tmp_path / "runs" / "mixes" / "full2_w0.5_seed1"
    run_dir.mkdir(parents=True)
    params, macs = COST["full2"]
    (run_dir / "metrics.json").write_text(json.dumps({
        "test/acc": 0.87, "params": params, "macs": macs, "epochs": 3, "arch": "mobilenet_v1", "conv": "dsconv",
        "width": 0.5, "image_size": 28, "dataset": "Fashion-MNIST", "seed": 1}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"conv_mix": {"mix": "full2"}, "model": {"conv": "dsconv"}}))
    [row], _, missing = collect(tmp_path / "runs")
    assert missing == []
    assert (row["run"], row["conv"], row["mix"], row["top1"]) == ("mixes/full2_w0.5_seed1", "dsconv", "full2", 0.87)


def test_runs_of_one_conv_but_three_mixes_are_three_configurations_compared_to_all_standard(tmp_path):
    write_table(tmp_path / "study" / "runs.csv", [mix_run(m, s) for m in COST for s in (1, 2)])
    report_study(tmp_path / "study", tmp_path / "out")
    results = read_csv(tmp_path / "out" / "results.csv")
    assert [(r["conv"], r["mix"], r["n"], f"{float(r['top1_mean']):.3f}") for r in results] == [
        ("dsconv", "dsconv", "2", "0.810"), ("dsconv", "full2", "2", "0.865"), ("dsconv", "standard", "2", "0.890")]
    # each mix minus all-standard, paired by seed: dsconv -0.10, -0.06; full2 -0.03, -0.02
    assert [(c["a"], c["b"], f"{float(c['diff_mean']):.3f}") for c in read_csv(tmp_path / "out" / "comparisons.csv")] == [
        ("standard", "dsconv", "-0.080"), ("standard", "full2", "-0.025")]


def test_the_table_per_mix_marks_each_front_and_the_excess_over_the_chord(tmp_path):
    write_table(tmp_path / "study" / "runs.csv", [mix_run(m, s) for m in COST for s in (1, 2)])
    # eager: full2 at the geometric middle of the ends (t = 0.5); onnxruntime: full2 slower than standard
    write_table(tmp_path / "study" / "latency.csv",
                [latency_row(m, "eager", ms) for m, ms in (("dsconv", 1.0), ("full2", 2.0), ("standard", 4.0))]
                + [latency_row(m, "onnxruntime", ms) for m, ms in (("dsconv", 1.0), ("full2", 5.0), ("standard", 4.0))])
    [summary] = report_study(tmp_path / "study", tmp_path / "out")
    assert {"mixes.md", "mixes.csv", "top1_vs_latency_eager_28px.png", "top1_vs_latency_onnxruntime_28px.png"} <= set(
        summary.files)
    fronts = {r["mix"]: r["fronts"] for r in read_csv(tmp_path / "out" / "mixes.csv")}
    assert fronts == {"dsconv": "params macs eager_28px onnxruntime_28px", "full2": "params macs eager_28px",
                      "standard": "params macs eager_28px onnxruntime_28px"}
    text = (tmp_path / "out" / "mixes.md").read_text()
    assert "| full2 | 875,450 | 23,428,032 | 2.000 | 5.000 | 86.50 ± 6.35 | 2 | params macs eager_28px |" in text
    # chord at t = 0.5: seed 1 0.85 (full2 +0.02), seed 2 0.85 (+0.01); ± 12.706 * 0.00707 / sqrt(2)
    # onnxruntime: t = log 5 / log 4 = 1.161, past all-standard: seed 1 0.9161 (-0.0461), seed 2 0.8897 (-0.0297)
    assert "| full2 | +1.50 ± 6.35 | -3.79 ± 10.44 |" in text


def test_a_study_folders_missing_eval_line_names_the_checkpoint_under_its_runs_directory(tmp_path):
    write_table(tmp_path / "study" / "runs.csv", [mix_run(m, s) for m in COST for s in (1, 2)])
    [summary] = report_study(tmp_path / "study", tmp_path / "out")
    # the study folder holds tables, not checkpoints: the path is the run's under the runs directory
    [line] = [n for n in summary.notes if "no eval results" in n]
    assert "no eval results for 6 of 6 training runs; run `python eval.py ckpt_path=RUNS/mixes/dsconv_w0.5_seed1/" \
           "checkpoints/best-*.ckpt` (with the run's data.* overrides; RUNS: the runs directory the study was " \
           "collected from) for each" in line
