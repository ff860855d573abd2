"""The report: run discovery, accuracy fallback, seed aggregation, exact tables, plots and the CLI.

One hand-written sweep (see ``sweep``) is reported once per module through the real CLI; the
tests then read the files it wrote.
"""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import read_csv

from dsnet.report import build_report, pareto_front
from dsnet.results import SCHEMA_VERSION, write_json_atomic, write_results


def record_dict(**overrides):
    """A valid results record; the sweep below overrides what each run varies."""
    data = dict(
        arch="mobilenet_v1", conv="dsconv", width=1.0, groups=None, image_size=28, in_chans=1,
        num_classes=10, dataset="fashion_mnist", seed=0, params=400_000, macs=70_000_000,
        train_macs=210_000_000, macs_breakdown={}, top1=0.9, top5=None, latency_ms_p50=4.0,
        latency_ms_p90=5.0, latency_ms_iqr=0.5, throughput_img_s=250.0, batch_size=64,
        device="cpu", device_name="Test CPU", precision="fp32", channels_last=False,
        num_threads=2, torch="2.14.1", git_rev="abc1234", ckpt_path=None, run_dir="/runs/eval",
        schema_version=SCHEMA_VERSION,
    )
    data.update(overrides)
    return data


# (run name, overrides): costs chosen so every ratio is a round number.
DSCONV_BREAKDOWN = {"pointwise": {"params": 300_000, "macs": 63_000_000},
                    "depthwise": {"params": 20_000, "macs": 3_500_000},
                    "standard": {"params": 1_000, "macs": 700_000},
                    "linear": {"params": 70_000, "macs": 2_800_000}}
STANDARD = dict(conv="standard", params=3_200_000, macs=560_000_000, latency_ms_p50=10.0,
                throughput_img_s=100.0, macs_breakdown={
                    "standard": {"params": 3_100_000, "macs": 557_200_000},
                    "linear": {"params": 70_000, "macs": 2_800_000}})
DSCONV = dict(conv="dsconv", params=400_000, macs=70_000_000, macs_breakdown=DSCONV_BREAKDOWN)
EVAL_RUNS = {
    # the standard run's eval had no top-1: it comes from its training run's metrics.json
    "std_w1_s0": dict(STANDARD, seed=0, top1=None, top5=None),
    "ds_w1_s0": dict(DSCONV, seed=0, top1=0.90, latency_ms_p50=4.0, throughput_img_s=250.0),
    "ds_w1_s1": dict(DSCONV, seed=1, top1=0.91, latency_ms_p50=5.0, throughput_img_s=200.0),
    "ds_w1_s2": dict(DSCONV, seed=2, top1=0.92, latency_ms_p50=4.5, throughput_img_s=240.0),
    "ds_w05_s0": dict(DSCONV, width=0.5, params=120_000, macs=20_000_000, top1=0.85,
                      latency_ms_p50=2.0, macs_breakdown={}),
    "group4_w1": dict(conv="group", groups=4, params=900_000, macs=150_000_000, top1=0.80,
                      latency_ms_p50=6.0, macs_breakdown={}),
}


def _run_dir(path):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Train and eval run directories as train.py / eval.py leave them, plus three bad runs."""
    root = tmp_path_factory.mktemp("runs")
    train = _run_dir(root / "train" / "std_w1_s0")
    (train / "checkpoints").mkdir()
    (train / "checkpoints" / "best.ckpt").write_bytes(b"")  # the report never opens it
    write_json_atomic(train / "metrics.json",
                      {"test/acc": 0.93, "test/acc5": 0.995, "val/acc_best": 0.94})
    for name, overrides in EVAL_RUNS.items():
        ckpt = str(train / "checkpoints" / "best.ckpt") if name == "std_w1_s0" else None
        d = _run_dir(root / "eval" / name)
        write_results(d / "results.json", record_dict(ckpt_path=ckpt, run_dir=str(d), **overrides))
    orphan = _run_dir(root / "train" / "orphan")
    write_json_atomic(orphan / "metrics.json", {"test/acc": 0.5})
    (_run_dir(root / "crashed") / "error.txt").write_text("Traceback ...\nRuntimeError: OOM\n")
    bad = record_dict()
    del bad["macs"]
    write_json_atomic(_run_dir(root / "eval" / "bad") / "results.json", bad)
    return root


@pytest.fixture(scope="module")
def report(sweep):
    """The CLI run over the sweep: (completed process, output directory)."""
    out = sweep.parent / "report"
    # eval/ds_w1_s0 is given twice (inside eval/ too): it must still count once
    dirs = [sweep / "train", sweep / "eval", sweep / "crashed", sweep / "eval" / "ds_w1_s0"]
    proc = subprocess.run([sys.executable, "-m", "dsnet.report", *map(str, dirs), "--out", out], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)  # as a terminal shows them
    return proc, out


def test_pareto_front_keeps_only_undominated_points_ordered_by_cost():
    points = [(10, 0.93), (1, 0.85), (4, 0.91), (9, 0.80), (4, 0.70), (12, 0.93), (1, 0.85)]
    # (9, .80) loses to (4, .91); (4, .70) to (4, .91); (12, .93) to (10, .93); the two equal
    # (1, .85) points do not dominate each other.
    assert pareto_front(points) == [1, 6, 2, 0]
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 0.5)]) == [0]


def test_cli_succeeds_and_prints_runs_without_results(report):
    proc, out = report
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("no results: ") for line in lines) == 3
    assert lines[-1] == (f"wrote 28 files to {out}: 6 runs in 4 configurations, "
                         "3 runs without results")


def test_results_table_aggregates_seeds_and_falls_back_to_training_accuracy(report):
    _, out = report
    rows = {(r["conv"], r["groups"], r["width"]): r for r in read_csv(out / "results.csv")}
    assert [(r["conv"], r["width"]) for r in read_csv(out / "results.csv")] == [
        ("dsconv", "0.5"), ("standard", "1.0"), ("group", "1.0"), ("dsconv", "1.0")]
    ds = rows[("dsconv", "", "1.0")]
    assert ds["n"] == "3"
    assert float(ds["top1_mean"]) == pytest.approx(0.91)
    assert float(ds["top1_std"]) == pytest.approx(0.01)  # sample std of .90 .91 .92
    assert float(ds["latency_ms_p50"]) == 4.5 and float(ds["throughput_img_s"]) == 240.0
    std = rows[("standard", "", "1.0")]
    assert float(std["top1_mean"]) == 0.93 and std["n"] == "1" and std["top1_std"] == ""
    runs = {r["run_dir"].rsplit("/", 1)[-1]: r for r in read_csv(out / "runs.csv")}
    assert runs["std_w1_s0"]["top1_source"] == "metrics.json"
    assert runs["std_w1_s0"]["top1"] == "0.93" and runs["std_w1_s0"]["top5"] == "0.995"
    assert float(std["top5_mean"]) == 0.995
    assert runs["ds_w1_s2"]["top1_source"] == "results.json"
    md = (out / "results.md").read_text()
    assert ("| fashion_mnist | mobilenet_v1 | dsconv | 1 | 28 | 0.400 | 70.00 | "
            "91.00 ± 2.48 (n=3) | 4.500 | 240 |") in md
    assert "| group (g=4) | 1 | 28 | 0.900 | 150.00 | 80.00 (n=1) |" in md


def test_theory_vs_measurement_ratios(report):
    _, out = report
    (row,) = read_csv(out / "theory_vs_measurement.csv")  # only width 1 has both conv types
    assert row["width"] == "1.0" and row["image_size"] == "28"
    assert float(row["macs_ratio"]) == 8.0 and float(row["params_ratio"]) == 8.0
    assert float(row["latency_ratio"]) == pytest.approx(10.0 / 4.5)
    assert float(row["throughput_ratio"]) == 2.4
    assert float(row["saving_delivered"]) == pytest.approx((1 - 4.5 / 10) / (1 - 1 / 8))
    assert float(row["top1_diff"]) == pytest.approx(-0.02)
    md = (out / "theory_vs_measurement.md").read_text()
    assert ("| fashion_mnist | mobilenet_v1 | 1 | 28 | eager | 8.00 | 8.00 | 2.22 | 2.40 | 63% | -2.00 |"
            in md)


def test_layer_share_table(report):
    _, out = report
    shares = {(r["conv"], r["width"]): r for r in read_csv(out / "layer_shares.csv")}
    assert set(shares) == {("standard", "1.0"), ("dsconv", "1.0")}  # others have no breakdown
    ds = shares[("dsconv", "1.0")]
    assert float(ds["pointwise_macs_share"]) == pytest.approx(0.90)
    assert float(ds["pointwise_params_share"]) == pytest.approx(0.75)
    assert float(ds["linear_params_share"]) == pytest.approx(0.175)
    assert float(ds["uncounted_params_share"]) == pytest.approx(0.0225)  # 9k of 400k: norms
    assert float(ds["uncounted_macs_share"]) == pytest.approx(0.0)
    assert float(shares[("standard", "1.0")]["standard_macs_share"]) == pytest.approx(0.995)
    md = (out / "layer_shares.md").read_text()
    assert "| dsconv | 1 | 28 | 90.00 / 75.00 | 5.00 / 5.00 | 1.00 / 0.25 | 0.00 / 0.00 | " \
           "4.00 / 17.50 | 0.00 / 2.25 |" in md


def test_runs_without_results_are_listed_with_the_reason(report):
    _, out = report
    md = (out / "results.md").read_text()
    section = md.split("## Runs without results (3)\n", 1)[1]
    assert "orphan`: metrics.json: 'arch' must be str, got None" in section
    assert "crashed`: failed run, see error.txt" in section
    assert "bad`: invalid: " in section
    assert "bad/results.json: missing key(s) ['macs']" in section
    assert "std_w1_s0" not in section  # covered by its eval run


def test_plots_are_written_as_png_and_svg(report):
    _, out = report
    for stem in ("top1_vs_params", "top1_vs_macs", "top1_vs_latency", "tradeoff"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert "Pareto front" in (out / f"{stem}.svg").read_text()
    assert "![accuracy against cost](tradeoff.png)" in (out / "results.md").read_text()


def test_a_second_report_over_the_same_runs_writes_the_same_svg_bytes(report, sweep, tmp_path):
    """Another process, another day: same rows, same SVG files (no date, no random element ids)."""
    proc, out = report
    assert proc.returncode == 0, proc.stderr
    dirs = [sweep / "train", sweep / "eval", sweep / "crashed"]
    build_report(dirs, tmp_path / "again")
    svgs = sorted(p.name for p in out.glob("*.svg"))
    assert len(svgs) >= 4 and svgs == sorted(p.name for p in (tmp_path / "again").glob("*.svg"))
    assert [n for n in svgs if (out / n).read_bytes() != (tmp_path / "again" / n).read_bytes()] == []


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dsnet.report", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_cli_missing_directory_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old report")
    proc = _run_cli(tmp_path / "nope", "--out", out)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"python -m dsnet.report: error: not a directory: {tmp_path / 'nope'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_no_runs_or_no_results_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run_cli(empty, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr == f"python -m dsnet.report: error: no run directories under {empty}\n"
    _run_dir(empty / "crashed")
    proc = _run_cli(empty, "--out", tmp_path / "out")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "none of the 1 run directories has results" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_training_accuracy_in_percent_is_refused_not_misread(tmp_path):
    train = _run_dir(tmp_path / "runs" / "train")
    (train / "checkpoints").mkdir()
    write_json_atomic(train / "metrics.json", {"test/acc": 93.0})  # percent, not a fraction
    d = _run_dir(tmp_path / "runs" / "eval")
    ckpt = train / "checkpoints" / "last.ckpt"
    write_results(d / "results.json", record_dict(top1=None, ckpt_path=str(ckpt)))
    summary = build_report([tmp_path / "runs"], tmp_path / "out")
    ((where, reason),) = summary.missing
    assert where == train.resolve()
    assert "'test/acc' must be a fraction in [0, 1], got 93.0" in reason
    (run,) = read_csv(tmp_path / "out" / "runs.csv")
    assert run["top1"] == "" and run["top1_source"] == ""


def test_an_eval_inside_its_train_run_joins_it_after_both_were_copied_elsewhere(tmp_path):
    """An eval written into <run>/eval, and the run's small files copied without checkpoints: the
    eval's ckpt_path then lies in no train run read, and the directory it sits in decides."""
    train = _run_dir(tmp_path / "copied" / "table4" / "std_seed2")
    write_json_atomic(train / "metrics.json", {
        "test/acc": 0.93, "val/acc_best": 0.94, "epochs": 15, "arch": "mobilenet_v1", "conv": "standard",
        "dataset": "fashion_mnist", "width": 1.0, "image_size": 28, "params": 3_200_000, "macs": 560_000_000})
    ev = _run_dir(train / "eval")
    write_results(ev / "results.json", record_dict(conv="standard", seed=2, top1=0.925, ckpt_path=str(
        tmp_path / "original" / "table4" / "std_seed2" / "checkpoints" / "best.ckpt"), run_dir=str(ev)))
    alone = _run_dir(tmp_path / "copied" / "elsewhere")  # an eval in no train run stays on its own
    write_results(alone / "results.json", record_dict(ckpt_path="/gone/checkpoints/best.ckpt", run_dir=str(alone)))
    summary = build_report([tmp_path / "copied"], tmp_path / "out")
    assert (summary.n_runs, summary.missing) == (2, [])
    runs = {r["run_dir"]: r for r in read_csv(tmp_path / "out" / "runs.csv")}
    assert set(runs) == {str(ev.resolve()), str(alone.resolve())}  # the train run is not a third run
    assert runs[str(ev.resolve())]["train_dir"] == str(train.resolve())
    joined, single = runs[str(ev.resolve())], runs[str(alone.resolve())]
    assert (joined["val_acc_best"], joined["epochs"], joined["top1"]) == ("0.94", "15", "0.925")
    assert (single["train_dir"], single["val_acc_best"], single["epochs"]) == ("", "", "")


def test_config_without_standard_twin_gives_empty_theory_table(tmp_path):
    d = _run_dir(tmp_path / "runs" / "only_ds")
    write_results(d / "results.json", record_dict(top1=None))
    summary = build_report([tmp_path / "runs"], tmp_path / "out")
    assert summary.n_runs == 1 and summary.missing == []
    assert "No configuration has both standard and dsconv runs." in \
        (tmp_path / "out" / "theory_vs_measurement.md").read_text()
    assert "No run has top-1, so there are no plots." in \
        (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "out" / "tradeoff.png").exists()
    assert sorted(summary.files) == sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparisons.csv", "comparisons.md", "comparisons_by_seed.csv", "convergence.csv", "convergence.md",
        "convergence_by_seed.csv", "cost_predictors.csv", "cost_predictors.md", "equal_cost.csv", "equal_cost.md",
        "hyperparameters.md", "layer_shares.csv", "layer_shares.md", "results.csv", "results.md", "runs.csv",
        "theory_vs_measurement.csv", "theory_vs_measurement.md"]


def test_report_states_the_latency_batch_size_and_flags_runs_timed_under_load(tmp_path):
    for name, contention in (("quiet", 0.01), ("busy", 0.46), ("unknown", None)):
        d = _run_dir(tmp_path / "runs" / name)
        write_results(d / "results.json", record_dict(top1=None, latency_batch_size=8, cpu_contention=contention,
                                                      seed=len(name)))
    build_report([tmp_path / "runs"], tmp_path / "out")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "latency is the median at batch size 8, measured on" in md
    assert ("**1 of 3 runs were timed while other processes used more than 5% of the CPUs, or were "
            "flagged so (up to 46%;") in md
