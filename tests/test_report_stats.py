"""The report's statistics and comparison tables on hand-made numbers: Student-t intervals, paired
differences by seed, equal-cost pairs, hyperparameters, learning-curve logs, a theory row per
runtime and contended runs left out of it."""

import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from conftest import read_csv

from dsnet.report import (
    build_report,
    collect_runs,
    comparisons,
    comparisons_by_seed,
    convergence,
    convergence_by_seed,
    equal_cost,
    latency_match_pairs,
    missing_columns,
    summarise,
)
from dsnet.report.compare_md import comparisons_section, convergence_section, equal_cost_section, hparams_section
from dsnet.report.discover import Run, read_curve
from dsnet.report.markdown import cpu_cell
from dsnet.report.sensitivity import lr_arms, plot_lr_sensitivity
from dsnet.report.stats import mean_ci, paired_difference, t_quantile
from dsnet.report.tables import diverged_epochs, hparam_columns, theory_vs_measurement
from dsnet.results import SCHEMA_VERSION, write_json_atomic


def test_t_quantiles_are_the_textbook_two_sided_95_percent_values():
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (29, 2.045)):
        assert t_quantile(dof) == pytest.approx(value, abs=5e-4)
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1, got 0"):
        t_quantile(0)


def test_mean_ci_of_three_seeds_and_of_fewer():
    stats = mean_ci([0.90, 0.91, 0.92])
    assert stats["mean"] == pytest.approx(0.91) and stats["std"] == pytest.approx(0.01)
    assert stats["ci95"] == pytest.approx(4.3027 * 0.01 / math.sqrt(3), rel=1e-4)  # 0.02484
    assert stats["n"] == 3
    assert mean_ci([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "n": 1}
    assert mean_ci([]) == {"mean": None, "std": None, "ci95": None, "n": 0}


def test_paired_difference_uses_the_seeds_both_arms_have():
    a = {0: 0.90, 1: 0.92, 2: 0.91}
    b = {0: 0.88, 1: 0.91, 2: 0.87, 3: 0.50}  # seed 3 has no partner: left out
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(-0.07 / 3)  # differences -0.02, -0.01, -0.04
    # deviations from the mean: 1/300, 4/300, -5/300
    assert d["std"] == pytest.approx(math.sqrt((1 + 16 + 25) / 300**2 / 2))
    assert d["ci95"] == pytest.approx(4.3027 * d["std"] / math.sqrt(3), rel=1e-4)


def train_run(name, conv, width, seed, acc, *, params, macs, epochs=15, lr=0.1, val=None, loss=None, **extra):
    """A train run as discovery makes it (no eval results): values only; ``val`` its val/acc_best
    where it differs from its test top-1 ``acc``, ``loss`` its training loss by epoch."""
    values = dict(dataset="fashion_mnist", arch="mobilenet_v1", conv=conv, groups=None,
                  width=width, image_size=28, in_chans=1, num_classes=10, seed=seed, top1=acc,
                  top5=None, params=params, macs=macs, train_size=None, epochs=epochs, lr=lr,
                  weight_decay=5e-5, depthwise_weight_decay=None, time_per_epoch_s=1.0,
                  val_acc_best=acc if val is None else val, **extra)
    return Run(Path(f"/runs/{name}"), values, None, Path(f"/runs/{name}"), "metrics.json",
               {"train/loss_epoch": loss} if loss else {})


def write_train_run(d, values):
    """A train run on disk as dsnet leaves it: metrics.json, and config.yaml for what it does not hold."""
    d.mkdir(parents=True)
    write_json_atomic(d / "metrics.json", {
        "test/acc": values["top1"], "val/acc_best": values["val_acc_best"], "time_per_epoch_s": 1.0,
        **{k: values[k] for k in ("params", "macs", "epochs", "arch", "conv", "width", "image_size",
                                   "dataset", "seed")}})
    config = {"data": {k: values[k] for k in ("in_chans", "num_classes", "train_size")},
              "optim": {"optimizer": {k: values[k] for k in ("lr", "weight_decay")}}}
    (d / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


STD = dict(params=1_000_000, macs=10_000_000)
SWEEP = [
    *(train_run(f"std{s}", "standard", 0.25, s, acc, **STD)
      for s, acc in ((0, 0.90), (1, 0.92), (2, 0.91))),
    # dsconv at its own tuned lr: the conv comparison still pairs it with standard
    *(train_run(f"ds{s}", "dsconv", 0.25, s, acc, params=130_000, macs=1_300_000, lr=0.2)
      for s, acc in ((0, 0.88), (1, 0.91), (2, 0.87))),
    # twice the schedule, two seeds: the convergence comparison
    *(train_run(f"ds30_{s}", "dsconv", 0.25, s, acc, params=130_000, macs=1_300_000, lr=0.2,
                epochs=30) for s, acc in ((0, 0.89), (1, 0.93))),
    # wider dsconv nets whose params (4% more) or MACs (3% more) match standard w0.25
    *(train_run(f"dsw{s}", "dsconv", 0.875, s, acc, params=1_040_000, macs=12_000_000, lr=0.2)
      for s, acc in ((0, 0.93), (1, 0.94))),
    *(train_run(f"dsm{s}", "dsconv", 0.8, s, acc, params=900_000, macs=10_300_000, lr=0.2)
      for s, acc in ((0, 0.925), (2, 0.935))),
]


def test_a_configurations_cpu_hours_count_each_cpu_trained_network_once_and_say_how_many():
    runs = [train_run("a", "dsconv", 0.25, 0, 0.9, **STD, cpu_s=1800.0, train_device="cpu"),
            train_run("b", "dsconv", 0.25, 1, 0.9, **STD, cpu_s=5400.0),  # device unknown: counted
            train_run("c", "dsconv", 0.25, 2, 0.9, **STD, cpu_s=900.0, train_device="gpu"),  # not its cost
            train_run("d", "dsconv", 0.25, 3, 0.9, **STD)]  # trained before cpu_s was recorded
    (row,) = summarise(runs)
    assert (row["cpu_h"], row["n_cpu"], row["n_runs"]) == (2.0, 2, 4)
    assert cpu_cell(row) == "2.00 (2 of 4 runs)"
    (row,) = summarise(runs[:2])
    assert cpu_cell(row) == "2.00"
    (row,) = summarise(runs[2:])
    assert (row["cpu_h"], row["n_cpu"], cpu_cell(row)) == (None, 0, "–")


def test_comparisons_pair_by_seed_across_conv_type_and_schedule():
    rows = {(r["factor"], r["width"], r["a"], r["b"]): r for r in comparisons(summarise(SWEEP))}
    conv = rows[("conv", 0.25, "standard", "dsconv")]
    assert conv["n_pairs"] == 3 and conv["seeds"] == "0 1 2"
    assert conv["diff_mean"] == pytest.approx(-0.07 / 3)
    assert conv["a_top1_mean"] == pytest.approx(0.91) and conv["b_top1_mean"] == pytest.approx(0.8867, abs=1e-4)
    longer = rows[("epochs", 0.25, "dsconv: 15", "dsconv: 30")]
    assert longer["n_pairs"] == 2 and longer["seeds"] == "0 1"
    assert longer["diff_mean"] == pytest.approx(0.015)  # +0.01, +0.02
    # s = 0.005 * sqrt(2) over 2 pairs: t(0.975, 1) * s / sqrt(2)
    assert longer["diff_ci95"] == pytest.approx(12.7062 * 0.005, rel=1e-4)
    # standard w0.25 against dsconv at 30 epochs or at another width: two factors differ
    assert len(rows) == 2


def test_the_same_comparison_at_two_schedules_reads_as_two_rows_with_their_epochs():
    """Table 4 at 15 and at 30 epochs: without the schedule the two conv rows would look alike."""
    std30 = [train_run(f"std30_{s}", "standard", 0.25, s, acc, **STD, epochs=30)
             for s, acc in ((0, 0.902), (1, 0.924))]
    rows = comparisons(summarise([*SWEEP, *std30]))
    conv = sorted((r["epochs"], r["n_pairs"]) for r in rows if r["factor"] == "conv" and r["width"] == 0.25)
    assert conv == [(15, 3), (30, 2)]
    assert all(r["epochs"] is None for r in rows if r["factor"] == "epochs")  # a and b name it there
    table = comparisons_section(rows)
    assert "| resolution (px) | epochs | a | b |" in table
    assert "| conv | test | fashion_mnist | mobilenet_v1 | 0.25 | 28 | 30 | standard | dsconv | 91.30 | 91.00 | -0.30 ± " in table
    assert "| epochs | test | fashion_mnist | mobilenet_v1 | 0.25 | 28 | – | dsconv: 15 | dsconv: 30 |" in table
    cost = equal_cost_section(equal_cost(summarise(SWEEP)), 0.05, 0.10)
    assert "| resolution (px) | epochs | a |" in cost and "| params | fashion_mnist | mobilenet_v1 | 28 | 15 | standard |" in cost


def test_runs_without_a_test_split_compare_on_validation_and_label_smoothing_is_a_factor():
    """A recipe's ablation trained with test=false: label smoothing 0 against 0.1 on three seeds is
    one comparison on val, not a configuration that averages both; one seed in common is none."""
    def val_run(name, seed, val, smoothing):
        return train_run(name, "standard", 0.25, seed, None, **STD, epochs=10, val=val, label_smoothing=smoothing)

    runs = [*(val_run(f"ls01_{s}", s, v, 0.1) for s, v in ((2, 0.8134), (3, 0.8042), (4, 0.8110))),
            *(val_run(f"ls0_{s}", s, v, 0.0) for s, v in ((2, 0.8090), (3, 0.8020), (4, 0.8050)))]
    summary = summarise(runs)
    assert sorted((r["label_smoothing"], r["n_runs"]) for r in summary) == [(0.0, 3), (0.1, 3)]
    [row] = comparisons(summary)
    assert (row["factor"], row["split"], row["a"], row["b"]) == ("label_smoothing", "val", "standard: 0", "standard: 0.1")
    assert row["n_pairs"] == 3 and row["seeds"] == "2 3 4"
    assert row["diff_mean"] == pytest.approx((0.0044 + 0.0022 + 0.0060) / 3)  # 0.1 minus 0, seed by seed
    assert row["a_top1_mean"] == pytest.approx(0.8053, abs=1e-4) and row["b_top1_mean"] == pytest.approx(0.8095, abs=1e-4)
    assert "| label_smoothing | val | fashion_mnist | mobilenet_v1 | 0.25 | 28 | 10 | standard: 0 | standard: 0.1 | " \
        "80.53 | 80.95 | +0.42 ± " in comparisons_section([row])
    # one seed in common (a search's single trial, say) gives no interval: no row
    trial = val_run("trial", 2, 0.79, 0.2)
    assert comparisons(summarise([*runs[:3], trial])) == []
    # an untested configuration meets a tested one on val, where they share two seeds
    tested = [train_run(f"tested{s}", "standard", 0.25, s, 0.80, **STD, epochs=10, val=v, label_smoothing=0.0)
              for s, v in ((2, 0.8100), (3, 0.8000))]
    assert comparisons(summarise([*runs[:3], tested[0]])) == []
    [mixed] = comparisons(summarise([*runs[:3], *tested]))
    assert (mixed["split"], mixed["seeds"]) == ("val", "2 3")
    assert mixed["diff_mean"] == pytest.approx((0.0034 + 0.0042) / 2)


def test_two_conv_comparisons_alike_but_for_label_smoothing_name_it_and_list_their_seeds():
    """The label-smoothing ablation gives a second standard-vs-dsconv pair at the same width and
    schedule: both rows name their smoothing (and the rate of the arm searched at several), and the by-seed table holds
    each seed's top-1 of both sides and their difference."""
    def val_run(name, conv, seed, val, smoothing, lr):
        cost = STD if conv == "standard" else dict(params=130_000, macs=1_300_000)
        return train_run(name, conv, 0.25, seed, None, **cost, epochs=10, val=val, lr=lr, label_smoothing=smoothing)

    runs = [*(val_run(f"s{s}_{ls}", "standard", s, v, ls, 0.8) for ls, vals in ((0.1, (0.8134, 0.8042)), (0.0, (0.8050, 0.7964)))
              for s, v in zip((2, 3), vals)),
            *(val_run(f"d{s}_{ls}", "dsconv", s, v, ls, 3.2) for ls, vals in ((0.1, (0.7138, 0.7368)), (0.0, (0.7378, 0.6722)))
              for s, v in zip((2, 3), vals)),
            val_run("s1_trial", "standard", 1, 0.7900, 0.1, 0.4), val_run("s2_trial", "standard", 2, 0.7800, 0.1, 0.4)]
    rows = summarise(runs)
    conv = {(r["a"], r["b"]): r for r in comparisons(rows) if r["factor"] == "conv"}
    assert set(conv) == {("standard (lr 0.8, ls 0)", "dsconv (ls 0)"), ("standard (lr 0.8, ls 0.1)", "dsconv (ls 0.1)")}
    by_seed = {(r["a"], r["seed"]): r for r in comparisons_by_seed(rows)}
    assert len(by_seed) == 4
    smoothed = by_seed[("standard (lr 0.8, ls 0.1)", 3)]
    assert (smoothed["split"], smoothed["a_top1"], smoothed["b_top1"]) == ("val", 0.8042, 0.7368)
    assert smoothed["diff"] == pytest.approx(-0.0674) and smoothed["diverged"] == ""
    table = comparisons_section(comparisons(rows), comparisons_by_seed(rows))
    assert "| val | fashion_mnist | mobilenet_v1 | 0.25 | 28 | 10 | standard (lr 0.8, ls 0) | dsconv (ls 0) | " \
        "3 | 79.64 | 67.22 | -12.42 |" in table
    # the label-smoothing comparison itself names no smoothing beside its sides
    assert {r["a"] for r in comparisons(rows) if r["factor"] == "label_smoothing"} == {"standard: 0", "dsconv: 0"}


def test_convergence_check_pairs_each_arm_and_the_gap_by_seed_when_the_schedule_doubles():
    std30 = [train_run(f"std30_{s}", "standard", 0.25, s, acc, **STD, epochs=30)
             for s, acc in ((0, 0.902), (1, 0.924))]
    rows = {r["what"]: r for r in convergence(summarise([*SWEEP, *std30])) if r["split"] == "test"}
    assert set(rows) == {"standard", "dsconv", "standard − dsconv gap"}
    std, ds, gap = rows["standard"], rows["dsconv"], rows["standard − dsconv gap"]
    assert (std["short_epochs"], std["long_epochs"], std["n_pairs"], std["seeds"]) == (15, 30, 2, "0 1")
    assert std["change_mean"] == pytest.approx(0.003) and std["meets"] is True  # +0.002, +0.004
    assert ds["change_mean"] == pytest.approx(0.015) and ds["meets"] is False  # +0.01, +0.02
    # dsconv ran seeds 0-2 at 15 epochs, 0-1 at 30: both columns over seeds 0 and 1 (0.88, 0.91 ->
    # 0.89, 0.93), so long - short is the change; seed 2's 0.87 would pull the short mean to 0.8867
    assert (ds["short_mean"], ds["long_mean"]) == (pytest.approx(0.895), pytest.approx(0.91))
    # gap by seed: 15 epochs 0.02, 0.01; 30 epochs 0.012, -0.006; changes -0.008, -0.016
    assert gap["short_mean"] == pytest.approx(0.015) and gap["long_mean"] == pytest.approx(0.003)
    assert gap["change_mean"] == pytest.approx(-0.012) and gap["meets"] is False
    assert gap["change_ci95"] == pytest.approx(12.7062 * 0.004, rel=1e-4)  # s = 0.004 sqrt(2), n = 2
    assert convergence(summarise(SWEEP[:3])) == []  # one schedule only: nothing to check
    # the same readings seed by seed, a row for every seed of the four configurations
    by_seed = {r["seed"]: r for r in convergence_by_seed(summarise([*SWEEP, *std30])) if r["split"] == "test"}
    assert sorted(by_seed) == [0, 1, 2]
    zero, two = by_seed[0], by_seed[2]
    assert (zero["a_short"], zero["a_long"], zero["b_short"], zero["b_long"]) == (0.90, 0.902, 0.88, 0.89)
    assert (zero["a_change"], zero["b_change"]) == (pytest.approx(0.002), pytest.approx(0.01))
    assert (zero["gap_short"], zero["gap_long"], zero["gap_change"]) == (
        pytest.approx(0.02), pytest.approx(0.012), pytest.approx(-0.008))
    assert (two["a_long"], two["b_change"], two["gap_long"], two["gap_change"]) == (None, None, None, None)
    assert convergence_by_seed(summarise(SWEEP[:3])) == []


def falling(epochs: int, back_at_chance: Sequence[int] = ()) -> dict[int, float]:
    """A training loss by epoch that falls from 2.0, or sits at ln 10 at ``back_at_chance``."""
    return {e: math.log(10) if e in back_at_chance else 2.0 - e / epochs for e in range(1, epochs + 1)}


def test_a_run_back_at_chance_after_its_first_epoch_diverged_and_a_validation_dip_did_not(tmp_path):
    ds = dict(params=130_000, macs=1_300_000, epochs=80, lr=3.2)
    collapsed = train_run("c", "dsconv", 0.25, 2, None, val=0.80, loss=falling(80, range(19, 29)), **ds)
    assert diverged_epochs(collapsed) == list(range(19, 29))
    # ln 10 - 0.1 is the line: 2.21 is at chance, 2.19 is not, and the first epoch never counts
    edge = train_run("e", "dsconv", 0.25, 2, None, val=0.8, loss={1: 2.30, 2: 2.19, 3: 2.21, 4: 1.5}, **ds)
    assert diverged_epochs(edge) == [3]
    # Fashion-MNIST's one-epoch validation dip to 9.8% while the training loss kept falling
    dip = train_run("d", "dsconv", 0.25, 2, None, val=0.91, loss={1: 1.31, 2: 0.95, 3: 0.90, 4: 0.87}, **ds)
    assert diverged_epochs(dip) == [] and diverged_epochs(train_run("n", "dsconv", 0.25, 2, None, val=0.8, **ds)) == []
    # 100 classes: chance is ln 100 = 4.61, so a loss of 2.3 is learning
    cifar100 = train_run("h", "dsconv", 0.25, 2, None, val=0.5, loss=falling(80, range(19, 29)), **ds)
    cifar100.values["num_classes"] = 100
    assert diverged_epochs(cifar100) == []
    # a run directory without a tidy table: the loss comes from Lightning's CSV log
    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "csv" / "version_0" / "metrics.csv").write_text(
        "epoch,step,train/loss_epoch,val/acc\n0,351,2.05,\n0,351,,0.30\n1,703,2.31,\n1,703,,0.10\n2,1055,1.70,\n")
    raw = train_run("r", "dsconv", 0.25, 2, None, val=0.3, **ds)
    raw = dataclasses.replace(raw, train_dir=tmp_path)
    assert (diverged_epochs(raw), raw.curve()) == ([2], {1: 0.30, 2: 0.10})


def test_a_stepped_down_arm_is_checked_across_its_two_rates_and_a_diverged_seed_is_named():
    """The divergence rule: dsconv diverged at 80 epochs and lr 3.2 (seed 2) and trains 80 epochs at
    1.6. The check reads 40@3.2 against 80@1.6 and against 80@3.2, each row naming its rates, and
    every row whose seeds hold the diverged run says so; the conv comparison names each rate too."""
    std, ds = dict(params=215_000, macs=3_000_000), dict(params=30_000, macs=400_000)
    runs = [*(train_run(f"s40_{s}", "standard", 0.25, s, None, val=v, lr=0.8, epochs=40, **std)
              for s, v in ((2, 0.8586), (3, 0.8574), (4, 0.8600))),
            *(train_run(f"s80_{s}", "standard", 0.25, s, None, val=v, lr=0.8, epochs=80, **std)
              for s, v in ((2, 0.8704), (3, 0.8684), (4, 0.8690))),
            *(train_run(f"d40_{s}", "dsconv", 0.25, s, None, val=v, lr=3.2, epochs=40, **ds)
              for s, v in ((2, 0.8094), (3, 0.7980), (4, 0.8000))),
            train_run("d80_2", "dsconv", 0.25, 2, None, val=0.8024, lr=3.2, epochs=80, loss=falling(80, range(19, 29)), **ds),
            train_run("d80_3", "dsconv", 0.25, 3, None, val=0.8210, lr=3.2, epochs=80, loss=falling(80), **ds),
            *(train_run(f"h80_{s}", "dsconv", 0.25, s, None, val=v, lr=1.6, epochs=80, loss=falling(80), **ds)
              for s, v in ((2, 0.8150), (3, 0.8200), (4, 0.8100)))]
    rows = {r["what"]: r for r in convergence(summarise(runs))}
    assert set(rows) == {"standard", "dsconv (lr 3.2 → 3.2)", "dsconv (lr 3.2 → 1.6)",
                         "standard − dsconv (lr 3.2 → 3.2) gap", "standard − dsconv (lr 3.2 → 1.6) gap"}
    down, kept = rows["dsconv (lr 3.2 → 1.6)"], rows["dsconv (lr 3.2 → 3.2)"]
    assert (down["seeds"], down["diverged"], kept["seeds"], kept["diverged"]) == ("2 3 4", "", "2 3", "2")
    assert down["change_mean"] == pytest.approx((0.0056 + 0.0220 + 0.0100) / 3)  # 80@1.6 - 40@3.2, by seed
    gap = rows["standard − dsconv (lr 3.2 → 1.6) gap"]  # per-seed gaps 4.92, 5.94, 6.00 -> 5.54, 4.84, 5.90
    assert gap["change_mean"] == pytest.approx((0.0062 - 0.0110 - 0.0010) / 3) and gap["diverged"] == ""
    assert rows["standard − dsconv (lr 3.2 → 3.2) gap"]["diverged"] == "2"
    section = convergence_section(list(rows.values()))
    assert "| dsconv (lr 3.2 → 3.2) | 40 → 80 | 80.37 | 81.17 | +0.80 ± " in section
    assert "| 2 (2 3; diverged: 2) | **no** |" in section and "| 3 (2 3 4) | **no** |" in section
    # seed by seed: one table per step, the diverged run marked where it sits
    section = convergence_section(convergence(summarise(runs)), convergence_by_seed(summarise(runs)))
    assert "**val: fashion_mnist, mobilenet_v1 w0.25, 28 px, 40 → 80 epochs: standard against dsconv (lr 3.2 → 3.2)**" \
        in section
    assert "| 2 | 85.86 | 87.04 | +1.18 | 80.94 | 80.24 † | -0.70 | 4.92 | 6.80 | +1.88 |" in section
    assert "| 4 | 86.00 | 86.90 | +0.90 | 80.00 | 81.00 | +1.00 | 6.00 | 5.90 | -0.10 |" in section
    # at 80 epochs the conv comparison meets two dsconv configurations and names the rate of each
    at80 = {(r["a"], r["b"]): r for r in comparisons(summarise(runs)) if r["factor"] == "conv" and r["epochs"] == 80}
    assert set(at80) == {("standard", "dsconv (lr 3.2)"), ("standard", "dsconv (lr 1.6)")}
    assert (at80["standard", "dsconv (lr 3.2)"]["diverged"], at80["standard", "dsconv (lr 1.6)"]["n_pairs"]) == ("2", 3)


def test_a_move_of_exactly_the_threshold_does_not_pass_however_float32_rounds_it():
    import numpy as np

    # the study's standard w0.25, seed 2: 93.10% at 15 epochs, 93.60% at 30, as metrics.json holds them
    short, long = (float(np.float32(acc)) for acc in (0.9310, 0.9360))
    assert long - short < 0.005  # 0.0049999952: a plain comparison would call it under 0.5 pp
    runs = [train_run("s15", "standard", 0.25, 2, short, **STD), train_run("s30", "standard", 0.25, 2, long, **STD, epochs=30)]
    val, test = convergence(summarise(runs))  # val/acc_best equals top-1 in these runs
    assert (val["split"], test["split"]) == ("val", "test")
    assert test["change_mean"] == pytest.approx(0.005) and test["meets"] is False
    nearly = [runs[0], train_run("s30", "standard", 0.25, 2, float(np.float32(0.9359)), **STD, epochs=30)]
    assert [r["meets"] for r in convergence(summarise(nearly))] == [True, True]  # 0.49 pp: under


def test_convergence_check_reads_validation_first_and_test_only_where_runs_were_tested():
    # val moves 1.0 pp when the schedule doubles, test 0.2 pp: the check on val fails on its own
    runs = [train_run(f"s{e}_{s}", "standard", 0.25, s, acc, val=val, **STD, epochs=e)
            for e, s, acc, val in ((10, 2, 0.800, 0.810), (10, 3, 0.804, 0.812),
                                   (20, 2, 0.802, 0.820), (20, 3, 0.806, 0.822))]
    val, test = convergence(summarise(runs))
    assert (val["split"], val["short_mean"], val["long_mean"]) == ("val", pytest.approx(0.811), pytest.approx(0.821))
    assert val["change_mean"] == pytest.approx(0.010) and val["meets"] is False
    assert test["change_mean"] == pytest.approx(0.002) and test["meets"] is True
    untested = [train_run(f"u{e}_{s}", "standard", 0.25, s, None, val=val, **STD, epochs=e)
                for e, s, val in ((10, 2, 0.810), (10, 3, 0.812), (20, 2, 0.820), (20, 3, 0.822))]
    assert [r["split"] for r in convergence(summarise(untested))] == ["val"]  # a check run with test=false
    section = convergence_section(convergence(summarise(runs)))
    assert "| val | mobilenet_v1 | 0.25 | 28 | standard | 10 → 20 | 81.10 | 82.10 | +1.00 ± " in section
    assert section.count("| **no** |") == 1


def test_lr_sensitivity_draws_each_arm_tried_at_three_or_more_learning_rates(tmp_path):
    search = [train_run(f"{conv}{lr}", conv, 0.25, 1, acc, **STD, lr=lr)
              for conv, accs in (("standard", (0.93, 0.935, 0.93)), ("dsconv", (0.89, 0.91, 0.92)))
              for lr, acc in zip((0.1, 0.2, 0.4), accs)]
    other = [train_run("dsw", "dsconv", 0.5, 1, 0.9, **STD, lr=0.1), train_run("dsw2", "dsconv", 0.5, 1, 0.9, **STD, lr=0.2)]
    arms = lr_arms(summarise([*search, *other]))
    # dsconv w0.5 has two learning rates only: no line
    assert sorted((arm[0]["conv"], [r["lr"] for r in arm]) for arm in arms.values()) == [
        ("dsconv", [0.1, 0.2, 0.4]), ("standard", [0.1, 0.2, 0.4])]
    assert plot_lr_sensitivity(summarise(search), tmp_path) == ["lr_sensitivity.png", "lr_sensitivity.svg"]
    assert (tmp_path / "lr_sensitivity.png").stat().st_size > 10_000
    assert plot_lr_sensitivity(summarise(other), tmp_path / "none") == []


def test_equal_cost_pairs_conv_types_whose_cost_agrees_within_the_tolerance():
    rows = summarise(SWEEP)
    matched = {(m["metric"], m["a_width"], m["b_width"]): m for m in equal_cost(rows, 0.05)}
    assert set(matched) == {("params", 0.25, 0.875), ("macs", 0.25, 0.8)}
    params = matched[("params", 0.25, 0.875)]
    assert (params["a_conv"], params["b_conv"]) == ("standard", "dsconv")
    assert (params["a_cost"], params["b_cost"]) == (1_000_000, 1_040_000)
    assert params["cost_ratio"] == pytest.approx(1.04)
    assert params["diff_mean"] == pytest.approx(0.025) and params["n_pairs"] == 2  # seeds 0, 1
    macs = matched[("macs", 0.25, 0.8)]
    assert macs["cost_ratio"] == pytest.approx(1.03) and macs["n_pairs"] == 2  # seeds 0, 2
    assert macs["diff_mean"] == pytest.approx(0.025) and macs["diff_ci95"] == pytest.approx(0.0)
    assert equal_cost(rows, 0.02) == []  # 4% and 3% apart: no match at 2%
    with pytest.raises(ValueError, match="tolerance must be a fraction >= 0"):
        equal_cost(rows, -0.1)


def test_measured_latency_matches_within_its_own_wider_tolerance(tmp_path):
    """Eval runs (timing comes from results.json): standard w1 at 3.0 ms, dsconv w0.5 at 3.24 ms."""
    for conv, width, params, macs, latency, accs in (("standard", 1.0, 1_000_000, 10_000_000, 3.0, (0.90, 0.92)),
                                                     ("dsconv", 0.5, 800_000, 11_000_000, 3.24, (0.91, 0.94))):
        for seed, acc in enumerate(accs):
            d = tmp_path / "runs" / f"{conv}{seed}"
            d.mkdir(parents=True)
            write_json_atomic(d / "results.json", {**eval_record(conv, seed, "eager", latency), "top1": acc,
                                                   "width": width, "params": params, "macs": macs})
    rows = summarise(collect_runs([tmp_path / "runs"])[0])
    assert equal_cost(rows, 0.05) == []  # latency 8% apart; params 25%, MACs 10%
    (m,) = equal_cost(rows, 0.05, latency_tolerance=0.10)
    assert (m["metric"], m["a_conv"], m["a_width"], m["b_width"], m["tolerance"]) == (
        "latency_ms_p50", "standard", 1.0, 0.5, 0.10)
    assert (m["a_cost"], m["b_cost"]) == (3.0, 3.24) and m["cost_ratio"] == pytest.approx(1.08)
    assert m["diff_mean"] == pytest.approx(0.015) and m["n_pairs"] == 2
    assert [r["metric"] for r in equal_cost(rows, 0.11, latency_tolerance=0.05)] == ["macs"]  # 10% in MACs
    with pytest.raises(ValueError, match=r"latency_tolerance must be a fraction >= 0 \(0.05 = 5%\), got -0.1"):
        equal_cost(rows, 0.05, latency_tolerance=-0.1)
    summary = build_report([tmp_path / "runs"], tmp_path / "out")  # the default: 5%, latency 10%
    md = (tmp_path / "out" / "equal_cost.md").read_text()
    assert "agree within 5% (10% for latency, a measurement) (max/min − 1)" in md
    assert md.count("| latency p50 (ms) | imagenet_subset | mobilenet_v1 | 224 | standard | 1 | 3.000 | dsconv | 0.5 | 3.240 | 1.080 |") == 1
    assert summary.n_runs == 4


LATENCY_MATCH = {"width": 0.8, "cost": 3.1, "target": 3.0, "rel_error": 1 / 30, "target_conv": "standard",
                 "target_width": 0.25, "conv": "dsconv", "cost_name": "latency", "arch": "mobilenet_v1",
                 "image_size": 28, "num_classes": 10, "in_chans": 1,
                 "environment": {"device": "cpu", "device_name": "AMD EPYC", "num_threads": 1,
                                 "platform": "Linux-6.18-x86_64", "torch": "2.14.1"}}


def test_a_latency_match_record_pairs_its_two_widths_at_the_latencies_it_timed():
    """The runs have no eval latency at all: the pair and both costs come from the record."""
    rows = summarise(SWEEP)
    assert [m["metric"] for m in equal_cost(rows)] == ["params", "macs"]
    (m,) = latency_match_pairs(rows, LATENCY_MATCH, "match.json")
    assert (m["metric"], m["a_conv"], m["a_width"], m["b_conv"], m["b_width"], m["epochs"]) == (
        "latency_ms_p50", "standard", 0.25, "dsconv", 0.8, 15)
    assert (m["a_cost"], m["b_cost"], m["source"], m["tolerance"]) == (3.0, 3.1, "match.json", None)
    assert m["cost_ratio"] == pytest.approx(3.1 / 3.0)
    assert m["diff_mean"] == pytest.approx(0.025) and m["n_pairs"] == 2  # seeds 0 and 2
    # dsconv w0.25 at 15 and at 30 epochs: only the 15-epoch runs share standard w0.25's schedule
    (same,) = latency_match_pairs(rows, {**LATENCY_MATCH, "width": 0.25}, "m")
    assert (same["epochs"], same["n_pairs"], same["diff_mean"]) == (15, 3, pytest.approx(-0.07 / 3))
    # built for another input, or a width nobody trained: no row
    assert latency_match_pairs(rows, {**LATENCY_MATCH, "image_size": 224}, "m") == []
    assert latency_match_pairs(rows, {**LATENCY_MATCH, "width": 0.3}, "m") == []


def test_the_report_shows_a_latency_match_with_where_it_was_timed_and_notes_one_it_cannot_pair(tmp_path):
    runs = tmp_path / "runs"
    for run in SWEEP:  # the sweep as files: train runs with metrics.json and config.yaml
        write_train_run(runs / run.run_dir.name, run.values)
    good, unpaired = tmp_path / "good.json", tmp_path / "unpaired.json"
    good.write_text(json.dumps(LATENCY_MATCH))
    unpaired.write_text(json.dumps({**LATENCY_MATCH, "width": 0.3}))
    summary = build_report([runs], tmp_path / "out", latency_matches=[good, unpaired])
    md = (tmp_path / "out" / "equal_cost.md").read_text()
    assert md.count("| latency p50 (ms), match record | fashion_mnist | mobilenet_v1 | 28 | 15 | standard | "
                    "0.25 | 3.000 | dsconv | 0.8 | 3.100 | 1.033 |") == 1
    assert (f"- `{good}`: standard w0.25 3.000 ms, dsconv w0.8 3.100 ms, timed in one process on AMD EPYC "
            "(Linux-6.18-x86_64), 1 thread(s), torch 2.14.1") in md
    assert [n for n in summary.notes if n.startswith("unpaired")] == [
        f"unpaired: --latency-match {unpaired}: no two configurations with top-1 of "
        "standard w0.25 and dsconv w0.3 alike in everything else"]
    (row,) = [r for r in read_csv(tmp_path / "out" / "equal_cost.csv") if r["source"] != "runs"]
    assert (row["metric"], row["a_cost"], row["b_cost"], row["source"]) == ("latency_ms_p50", "3.0", "3.1", str(good))


@pytest.mark.parametrize("content, error", [
    (None, "cannot read it as JSON (FileNotFoundError"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({**LATENCY_MATCH, "cost_name": "params"}), "cost_name is 'params', not 'latency'"),
    (json.dumps({k: v for k, v in LATENCY_MATCH.items() if k not in ("arch", "target")}), "missing target, arch"),
    (json.dumps({**LATENCY_MATCH, "cost": "3.1 ms"}), "cost must be a number > 0, got '3.1 ms'"),
])
def test_a_bad_latency_match_record_is_a_one_line_error_and_nothing_is_written(tmp_path, content, error):
    record = tmp_path / "match.json"
    if content is not None:
        record.write_text(content)
    runs = tmp_path / "runs"
    write_train_run(runs / "std0", SWEEP[0].values)
    proc = subprocess.run([sys.executable, "-m", "dsnet.report", str(runs), "--out", str(tmp_path / "out"),
                           "--latency-match", str(record)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"python -m dsnet.report: error: --latency-match {record}: {error}")
    assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_missing_columns_say_what_no_run_fills_and_the_command_that_fills_it():
    trial = train_run("trial", "dsconv", 0.25, 1, None, params=130_000, macs=1_300_000)  # test=false
    assert missing_columns([*SWEEP[:2], trial]) == [
        "latency_ms_p50, throughput_img_s, train_macs, layer shares: no eval results for 3 of 3 "
        "training runs; run `python eval.py ckpt_path=/runs/std0/checkpoints/last.ckpt` (with the "
        "run's data.* overrides) for each, or `python scripts/reproduce.py RECIPE`, which trains, "
        "evaluates and reports",
        "top1: 1 of 3 training runs have no test accuracy (trained with test=false, as a search's "
        "trials are: their val top-1 is in hyperparameters.md); test one with "
        "`python eval.py ckpt_path=<run>/checkpoints/best-*.ckpt`"]
    assert missing_columns(SWEEP[:2])[1:] == []


def test_hparams_keys_of_metrics_json_and_the_optimiser_of_config_yaml_are_shown(tmp_path):
    for conv, lr, acc in (("standard", 0.1, 0.90), ("dsconv", 0.4, 0.85)):
        d = tmp_path / "runs" / conv
        d.mkdir(parents=True)
        write_json_atomic(d / "metrics.json", {
            "test/acc": acc, "val/acc_best": acc + 0.01, "params": 1000, "macs": 2000, "epochs": 15,
            "time_per_epoch_s": 2.5, "arch": "mobilenet_v1", "conv": conv, "width": 0.25,
            "image_size": 28, "dataset": "fashion_mnist", "seed": 2, "hparams/lr": lr,
            "hparams/lr_trials": 4, "hparams/lr_grid": "0.05,0.1,0.2,0.4"})
        (d / "config.yaml").write_text(
            f"data: {{in_chans: 1, num_classes: 10, batch_size: 128, train_size: null}}\n"
            f"optim: {{optimizer: {{lr: {lr}, weight_decay: 5.0e-05}}}}\n"
            "module: {depthwise_weight_decay: 0.0, label_smoothing: 0.1}\n", encoding="utf-8")
    runs, missing = collect_runs([tmp_path / "runs"])
    assert missing == [] and len(runs) == 2
    rows = summarise(runs)
    assert hparam_columns(rows) == ["hparams/lr", "hparams/lr_grid", "hparams/lr_trials"]
    assert [(r["conv"], r["lr"], r["weight_decay"], r["depthwise_weight_decay"], r["label_smoothing"],
             r["hparams/lr_trials"]) for r in rows] == [("standard", 0.1, 5e-05, 0.0, 0.1, 4),
                                                         ("dsconv", 0.4, 5e-05, 0.0, 0.1, 4)]
    md = hparams_section(rows, hparam_columns(rows))
    # hparams/lr repeats the config's lr: no column of its own
    assert ("| dataset | model | conv | width | epochs | lr | weight decay | depthwise wd | lr_grid | "
            "lr_trials | val top-1 (%) | runs |") in md
    assert "| fashion_mnist | mobilenet_v1 | dsconv | 0.25 | 15 | 0.4 | 5e-05 | 0 | 0.05,0.1,0.2,0.4 | 4 | 86.00 | 1 |" in md


def test_learning_curve_reads_resumed_versions_in_order_later_ones_win(tmp_path):
    header = "epoch,step,train/loss,val/acc\n"
    for version, lines in ((0, ["0,9,2.1,", "0,9,,0.25", "1,19,,0.40"]),
                           (10, ["2,39,,0.70"]),  # version_10 after version_2, not before
                           (2, ["1,19,,0.45", "2,29,,0.60"])):
        d = tmp_path / "csv" / f"version_{version}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(header + "\n".join(lines) + "\n")
    assert read_curve(tmp_path) == {1: 0.25, 2: 0.45, 3: 0.70}
    assert read_curve(tmp_path / "nothing") == {}


def eval_record(conv, seed, runtime, latency, **extra):
    """A results.json of a cost-only eval (no top-1, so no plots), with forward keys as raw JSON;
    ``runtime=None`` leaves the key out, as files written before it existed do."""
    costs = {"standard": (3_200_000, 560_000_000), "dsconv": (400_000, 70_000_000)}[conv]
    return dict(
        arch="mobilenet_v1", conv=conv, width=1.0, groups=None, image_size=224, in_chans=3,
        num_classes=1000, dataset="imagenet_subset", seed=seed, params=costs[0], macs=costs[1],
        train_macs=3 * costs[1], macs_breakdown={}, top1=None, top5=None, latency_ms_p50=latency,
        latency_ms_p90=latency, latency_ms_iqr=0.1, throughput_img_s=1000.0 / latency,
        batch_size=64, device="cpu", device_name="Test CPU", precision="fp32",
        channels_last=False, num_threads=1, torch="2.14.1", git_rev="abc", ckpt_path=None,
        run_dir="/x", schema_version=SCHEMA_VERSION, **({} if runtime is None else {"runtime": runtime}), **extra)


def test_theory_table_has_a_row_per_runtime_and_leaves_contended_runs_out(tmp_path):
    runs = {
        "std_eager": eval_record("standard", 0, None, 10.0),  # no runtime key (files before it existed): eager
        "ds_eager": eval_record("dsconv", 0, "eager", 5.0),
        "std_ort": eval_record("standard", 0, "onnxruntime", 8.0, runtime_version="1.20.1"),
        "ds_ort": eval_record("dsconv", 0, "onnxruntime", 2.0, runtime_version="1.20.1"),
        # timed while others used 30% of the CPUs, and one flagged by eval itself
        "ds_ort_busy": eval_record("dsconv", 1, "onnxruntime", 8.0, cpu_contention=0.3),
        "ds_ort_flag": eval_record("dsconv", 2, "onnxruntime", 9.0, contention_flagged=True),
    }
    for name, data in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        write_json_atomic(tmp_path / "runs" / name / "results.json", data)
    summary = build_report([tmp_path / "runs"], tmp_path / "out")
    assert (summary.n_runs, summary.n_configs) == (6, 2)
    assert summary.notes[0] == (
        "missing: top1: 6 eval runs measured an untrained network (no ckpt_path); evaluate a "
        "trained checkpoint with `python eval.py ckpt_path=<run>/checkpoints/best-*.ckpt`")
    assert "6 runs in 2 configurations (4 rows: one per measurement environment)." in \
        (tmp_path / "out" / "results.md").read_text()
    assert summary.notes[-1] == (
        "left out: 2 of 6 eval runs were timed under CPU contention (cpu_contention > 5% or "
        "contention_flagged); the ratio tables leave their timings out; --include-contended keeps them")
    theory = {r["runtime"]: r for r in theory_vs_measurement(summarise(collect_runs([tmp_path / "runs"])[0]))}
    csv_text = (tmp_path / "out" / "theory_vs_measurement.csv").read_text()
    assert csv_text.count("\n") == 3  # header, eager, onnxruntime
    md = (tmp_path / "out" / "theory_vs_measurement.md").read_text()
    # eager: latency 10/5 = 2, saving (1 - 0.5) / (1 - 1/8) = 57%; onnxruntime (quiet run only): 8/2 = 4,
    # saving (1 - 0.25) / 0.875 = 86%
    assert "| imagenet_subset | mobilenet_v1 | 1 | 224 | eager | 8.00 | 8.00 | 2.00 | 2.00 | 57% | – |" in md
    assert ("| imagenet_subset | mobilenet_v1 | 1 | 224 | onnxruntime 1.20.1 | 8.00 | 8.00 | 4.00 | "
            "4.00 | 86% | – |") in md
    # with --include-contended the dsconv onnxruntime latency is the median of 2, 8, 9
    build_report([tmp_path / "runs"], tmp_path / "out2", include_contended=True)
    md = (tmp_path / "out2" / "theory_vs_measurement.md").read_text()
    assert "| onnxruntime 1.20.1 | 8.00 | 8.00 | 1.00 | 1.00 | 0% | – |" in md
    assert theory["onnxruntime"]["latency_ratio"] == 1.0  # summarise() without a filter: all runs
