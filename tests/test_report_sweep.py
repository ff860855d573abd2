"""The report straight from real training runs: a tiny sweep trained in-process, reported by the CLI
before and after one of its runs was evaluated."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train, read_csv

from dsnet.evaluate import evaluate
from dsnet.report.__main__ import main
from dsnet.study.collect import collect
from dsnet.task import train

QUIET = ("+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "~callbacks.progress_bar", "~callbacks.model_summary")
FAST_LATENCY = ("latency.rounds=1", "latency.min_run_time=0.01", "latency.throughput_batch_size=2")
ARMS = (("0", "model=conv", 0), ("1", "model=dsconv", 0), ("2", "model=dsconv", 1))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three tiny training runs as ``train.py -m`` lays them out: ``sweep/<job>/``."""
    root = tmp_path_factory.mktemp("report_sweep")
    for job, model, seed in ARMS:
        train(compose_train(*QUIET, model, f"seed={seed}", "trainer.max_epochs=2",
                            run_dir=root / "sweep" / job))
    return root


def report_cli(*args) -> subprocess.CompletedProcess:
    """``python -m dsnet.report`` with stdout and stderr together, as a terminal shows them."""
    return subprocess.run([sys.executable, "-m", "dsnet.report", *map(str, args)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)


def metrics(root: Path, job: str) -> dict:
    return json.loads((root / "sweep" / job / "metrics.json").read_text())


def test_a_sweep_of_training_runs_reports_without_an_eval_step(sweep):
    out = sweep / "report"
    proc = report_cli(sweep / "sweep", "--out", out)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    best = sorted((sweep / "sweep" / "0" / "checkpoints").glob("best*.ckpt"))[0]
    assert lines == [
        "missing: latency_ms_p50, throughput_img_s, train_macs, layer shares: no eval results for 3 "
        f"of 3 training runs; run `python eval.py ckpt_path={best}` (with the run's data.* "
        "overrides) for each, or `python scripts/reproduce.py RECIPE`, which trains, evaluates and "
        "reports",
        f"wrote 27 files to {out}: 3 runs in 2 configurations, 0 runs without results"]
    std, ds = read_csv(out / "results.csv")
    m0, m1, m2 = (metrics(sweep, job) for job in "012")
    assert (std["conv"], std["n"], ds["conv"], ds["n"]) == ("standard", "1", "dsconv", "2")
    assert float(std["top1_mean"]) == m0["test/acc"] and std["top1_ci95"] == ""
    assert int(std["params"]) == m0["params"] and int(std["macs"]) == m0["macs"]
    accs = [m1["test/acc"], m2["test/acc"]]
    assert float(ds["top1_mean"]) == pytest.approx(sum(accs) / 2)
    # two seeds: t(0.975, 1 dof) = 12.706, times s / sqrt(2) with s = |a - b| / sqrt(2)
    assert float(ds["top1_ci95"]) == pytest.approx(12.7062 * abs(accs[0] - accs[1]) / 2, rel=1e-4)
    assert float(ds["time_per_epoch_s"]) == pytest.approx(
        (m1["time_per_epoch_s"] + m2["time_per_epoch_s"]) / 2)
    assert (float(ds["cpu_h"]), ds["n_cpu"]) == (pytest.approx((m1["cpu_s"] + m2["cpu_s"]) / 3600), "2")
    assert (ds["epochs"], ds["lr"], ds["weight_decay"], ds["in_chans"]) == ("2", "0.1", "5e-05", "3")
    assert ds["latency_ms_p50"] == "" and ds["n_timed"] == "0"
    assert sorted(p.name for p in out.glob("top1_vs_*.png")) == ["top1_vs_macs.png",
                                                                 "top1_vs_params.png"]
    (theory,) = read_csv(out / "theory_vs_measurement.csv")
    assert float(theory["macs_ratio"]) == m0["macs"] / m1["macs"] and theory["latency_ratio"] == ""
    (conv,) = read_csv(out / "comparisons.csv")  # standard has seed 0 only: one pair
    assert (conv["factor"], conv["a"], conv["b"], conv["n_pairs"], conv["seeds"]) == (
        "conv", "standard", "dsconv", "1", "0")
    assert float(conv["diff_mean"]) == pytest.approx(m1["test/acc"] - m0["test/acc"])


def test_learning_curves_come_from_the_runs_csv_logs(sweep):
    out = sweep / "report"  # written by the test above; rebuilt when this test runs alone
    if not (out / "learning_curves.csv").is_file():
        assert report_cli(sweep / "sweep", "--out", out).returncode == 0
    curves = read_csv(out / "learning_curves.csv")
    assert [(c["arm"], c["epoch"], c["n"]) for c in curves] == [
        ("standard w0.25", "1", "1"), ("standard w0.25", "2", "1"), ("dsconv w0.25", "1", "2"),
        ("dsconv w0.25", "2", "2")]
    std = [float(c["val_acc_mean"]) for c in curves if c["arm"] == "standard w0.25"]
    assert max(std) == metrics(sweep, "0")["val/acc_best"]  # the best epoch's val/acc
    ds_best = [metrics(sweep, job)["val/acc_best"] for job in "12"]
    ds = [c for c in curves if c["arm"] == "dsconv w0.25"]
    assert max(float(c["val_acc_max"]) for c in ds) == max(ds_best)
    assert (out / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
    assert "![validation accuracy per epoch](learning_curves.png)" in (out / "results.md").read_text()


def test_latency_is_added_where_a_run_was_evaluated(sweep, capsys):
    job = sweep / "sweep" / "0"
    ckpt = sorted((job / "checkpoints").glob("best*.ckpt"))[0]
    results, _ = evaluate(compose_train(*QUIET[:2], *FAST_LATENCY, f"ckpt_path={ckpt}",
                                        run_dir=sweep / "eval" / "0", config_name="eval"))
    out = sweep / "report_eval"
    capsys.readouterr()  # eval's own summary
    assert main([str(sweep / "sweep"), str(sweep / "eval"), "--out", str(out)]) == 0  # in-process: faster
    printed = capsys.readouterr()
    assert (printed.out + printed.err).splitlines()[0].startswith(
        "missing: latency_ms_p50, throughput_img_s, train_macs, layer shares: no eval results for "
        "2 of 3 training runs; run `python eval.py ckpt_path=")
    std, ds = read_csv(out / "results.csv")
    assert float(std["latency_ms_p50"]) == results["latency_ms_p50"] and std["n_timed"] == "1"
    assert float(std["top1_mean"]) == results["top1"] == metrics(sweep, "0")["test/acc"]
    assert std["runtime"] == "eager" and int(std["train_macs"]) == results["train_macs"]
    assert ds["latency_ms_p50"] == ""
    runs = {Path(r["run_dir"]).name: r for r in read_csv(out / "runs.csv")}
    assert Path(runs["0"]["train_dir"]) == job and runs["0"]["top1_source"] == "results.json"
    assert math.isclose(float(runs["0"]["lr"]), 0.1)
    # a study's tidy table keeps the eval's paths relative to the runs it collected, as its keys are
    rows, _, _ = collect(sweep)
    (evaluated,) = [r for r in rows if r["eval"]]
    assert (evaluated["run"], evaluated["eval"]) == ("sweep/0", "eval/0")
    assert (evaluated["run_dir"], evaluated["ckpt_path"]) == ("eval/0", f"sweep/0/checkpoints/{ckpt.name}")


@pytest.mark.parametrize("case", ["no such dir", "no runs", "out is a file", "no DIR, no study", "bad tolerance",
                                  "bad latency tolerance"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    """In-process (the subprocess CLI's errors are tests/test_report.py's): what main() prints."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("not a directory")
    out = ["--out", str(tmp_path / "out")]
    args, message = {
        "no such dir": ([str(tmp_path / "nope"), *out], f"not a directory: {tmp_path / 'nope'}"),
        "no runs": ([str(empty), *out], f"no run directories under {empty}"),
        "out is a file": ([str(empty), "--out", str(tmp_path / "file")],
                          f"--out exists and is not a directory: {tmp_path / 'file'}"),
        "no DIR, no study": (["--results", str(empty), "--studies-out", str(tmp_path / "out")],
                             f"no study under {empty} (a folder with runs.csv)"),
        "bad tolerance": ([str(empty), *out, "--tolerance", "-0.1"],
                          "--tolerance must be a fraction in [0, 1) (0.05 = 5%), got -0.1"),
        "bad latency tolerance": ([str(empty), *out, "--latency-tolerance", "1.5"],
                                  "--latency-tolerance must be a fraction in [0, 1) (0.05 = 5%), got 1.5"),
    }[case]
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    printed = capsys.readouterr()
    assert (status, printed.out + printed.err) == (2, f"python -m dsnet.report: error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]
    assert (tmp_path / "file").read_text() == "not a directory"


def test_learning_curve_colours_are_the_tradeoff_plots_and_line_styles_tell_arms_of_one_conv_apart():
    from dsnet.report.curves import _arm_styles
    from dsnet.report.plots import series_styles

    points = [{"arm": arm, "conv": conv, "groups": groups} for arm, conv, groups in (
        ("standard w0.25", "standard", None), ("dsconv w0.25", "dsconv", None), ("dsconv w0.5", "dsconv", None),
        ("dsconv w0.5", "dsconv", None), ("group (g=4) w0.25", "group", 4), ("group (g=2) w0.25", "group", 2))]
    colour = {label: c for label, (c, _) in series_styles(points).items()}
    assert _arm_styles(points) == {
        "standard w0.25": (colour["standard"], "-", "o"), "dsconv w0.25": (colour["dsconv"], "-", "o"),
        "dsconv w0.5": (colour["dsconv"], "--", "s"), "group (g=4) w0.25": (colour["group (g=4)"], "-", "o"),
        "group (g=2) w0.25": (colour["group (g=2)"], "-", "o")}
    assert (colour["standard"], colour["dsconv"]) == ("tab:blue", "tab:orange")
    assert colour["group (g=2)"] != colour["group (g=4)"]


def test_the_zoomed_learning_curve_panel_holds_each_arms_second_half():
    """The zoom is per arm: a 15-epoch arm from epoch 8, a 30-epoch one from 16, beside each other."""
    from dsnet.report.curves import _last_half

    assert [p["epoch"] for p in _last_half([{"epoch": e} for e in range(1, 16)])] == list(range(8, 16))
    assert [p["epoch"] for p in _last_half([{"epoch": e} for e in range(1, 31)])] == list(range(16, 31))
