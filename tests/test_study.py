"""A study's pieces: depthwise weight decay, equal-cost width matching, the learning-rate choice of a
search, the stage commands run by Hydra's launchers, run directories collected into tidy tables, and
the report computed from those tables."""

from __future__ import annotations

import csv
import functools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_train, read_csv
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dsnet.matching import match_width
from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model
from dsnet.module import ClassifierModule
from dsnet.report.studies import report_study
from dsnet.report.tidy import read_study, read_table, write_table
from dsnet.study.__main__ import main as study_main
from dsnet.study.collect import collect, write_study
from dsnet.study.lr import choose_lr, search_scores
from dsnet.study.stages import launcher_overrides, load_study, stage_command

FMNIST = {"image_size": 28, "num_classes": 10, "in_chans": 1}  # Fashion-MNIST through the small-input stem
STANDARD_W025_PARAMS = 1771650  # model=conv at width 0.25 on Fashion-MNIST (metrics.json of the runs)


def sgd(params, weight_decay: float = 0.0):
    return torch.optim.SGD(params, lr=0.1, weight_decay=weight_decay)


def optimizer_of(conv: str, depthwise_weight_decay) -> tuple[torch.optim.Optimizer, torch.nn.Module]:
    net = create_model("mobilenet_v1", conv=conv, width=0.25, num_classes=10, in_chans=1, small_input=True)
    module = ClassifierModule(net, 10, optimizer=functools.partial(sgd, weight_decay=5e-5),
                              depthwise_weight_decay=depthwise_weight_decay)
    return module.configure_optimizers(), net


# --- depthwise weight decay -----------------------------------------------------------------------


def test_depthwise_filters_get_their_own_weight_decay_and_nothing_else_does():
    optimizer, net = optimizer_of("dsconv", 0.0)
    decay, no_decay, depthwise = optimizer.param_groups
    expected = [m.weight for m in net.modules()
                if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels and m.groups > 1]
    assert len(expected) == 13  # one per MobileNetV1 block
    assert [id(p) for p in depthwise["params"]] == [id(p) for p in expected]
    assert depthwise["weight_decay"] == 0.0
    # every other weight keeps the optimizer's decay, the stem's too (1 input channel, groups 1: not depthwise)
    assert decay["weight_decay"] == 5e-5
    assert {id(p) for p in decay["params"]} == {id(p) for p in net.parameters() if p.ndim > 1} - {id(p) for p in expected}
    every = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in net.parameters()) and len(every) == len(set(every))
    assert len(no_decay["params"]) == 2 * 27 + 1  # 27 batch norms (scale, shift) and the fc bias


def test_depthwise_weight_decay_none_or_no_depthwise_filters_keeps_two_groups():
    for conv, dw in (("dsconv", None), ("standard", 0.0)):
        optimizer, _ = optimizer_of(conv, dw)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-5, 0.0]
    with pytest.raises(ValueError, match=r"depthwise_weight_decay=-1.0 must be >= 0, or None"):
        optimizer_of("dsconv", -1.0)


# --- equal-cost width matching --------------------------------------------------------------------


def test_match_width_finds_the_dsconv_width_with_standard_w025_params():
    found = match_width("dsconv", "standard", 0.25, cost="params", max_width=1.0, **FMNIST)
    net = functools.partial(create_model, "mobilenet_v1", conv="dsconv", num_classes=10, in_chans=1, small_input=True)
    assert (found.width, found.target) == (0.74, STANDARD_W025_PARAMS)
    assert found.cost == count_params(net(width=0.74)) == 1769682
    assert abs(found.rel_error) <= 0.02 and found.rel_error == (1769682 - STANDARD_W025_PARAMS) / STANDARD_W025_PARAMS
    # the neighbouring steps are further from the target
    assert count_params(net(width=0.73)) < found.cost < STANDARD_W025_PARAMS < count_params(net(width=0.75))
    assert STANDARD_W025_PARAMS - count_params(net(width=0.73)) > STANDARD_W025_PARAMS - found.cost
    assert count_params(net(width=0.75)) - STANDARD_W025_PARAMS > STANDARD_W025_PARAMS - found.cost


def test_match_width_on_macs_and_on_a_callable_cost():
    found = match_width("dsconv", "standard", 0.25, cost="macs", max_width=1.0, **FMNIST)
    assert (found.width, found.target, found.cost) == (0.73, 22896256, 22948456)
    net = create_model("mobilenet_v1", conv="dsconv", width=0.73, num_classes=10, in_chans=1, small_input=True)
    assert count_macs(net, (1, 28, 28)) == found.cost
    assert match_width("dsconv", "standard", 0.25, cost=count_params, max_width=1.0, **FMNIST).width == 0.74


def count_head(net):
    """A stand-in for a measured cost: the head width in channels (steps of 8), plus 4 for the
    network without depthwise filters, so that no dsconv width matches standard's exactly."""
    return net.head.fc.in_features + (0 if any(m.groups > 1 for m in net.modules()
                                               if isinstance(m, torch.nn.Conv2d)) else 4)


def test_a_tie_between_two_steps_goes_to_the_smaller_width():
    # Head width in channels (steps of 8), plus 4 for the network without depthwise filters: the
    # standard w0.25 target is 256 + 4, exactly between dsconv's 256 (w0.25) and 264 (w0.26).
    found = match_width("dsconv", "standard", 0.25, cost=count_head, max_width=0.5, tolerance=0.05, **FMNIST)
    assert (found.width, found.cost, found.target) == (0.25, 256, 260)


def test_a_target_out_of_reach_or_tolerance_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^standard at width 1.0 costs \d+ params, outside what dsconv reaches "
                                         r"at widths 0.01..0.5 \(\d+..\d+\)$"):
        match_width("dsconv", "standard", 1.0, cost="params", max_width=0.5, **FMNIST)
    with pytest.raises(ValueError, match=r"^no width of dsconv costs 1771650 params within 0.0%: the nearest, "
                                         r"width 0.74, costs 1769682 \(-0.1%\); try a smaller resolution$"):
        match_width("dsconv", "standard", 0.25, cost="params", max_width=1.0, tolerance=1e-4, **FMNIST)
    with pytest.raises(ValueError, match=r"cost='latency': expected one of params, macs or a callable"):
        match_width("dsconv", "standard", 0.25, cost="latency")
    # a measured cost (a callable) that misses says it may be noise: here dsconv's head width (in
    # steps of 8 channels) against standard w0.25's 256 + 4
    with pytest.raises(ValueError, match=r"^no width of dsconv costs 260 count_head within 1.0%: the nearest, "
                                         r"width 0.25, costs 256 \(-1.5%\); a measured cost may be noise: time "
                                         r"longer, on a quiet machine, or try a smaller resolution$"):
        match_width("dsconv", "standard", 0.25, cost=count_head, max_width=0.5, tolerance=0.01, **FMNIST)


def test_the_match_width_resolver_gives_the_width_to_a_config():
    cfg = OmegaConf.create({"data": FMNIST, "width": "${dsnet.match_width:dsconv,standard,0.25,params,"
                                                     "${data.image_size},${data.num_classes},${data.in_chans}}"})
    assert cfg.width == 0.74



# --- what a converged run records


def test_a_converged_run_records_its_hyperparameters_in_metrics_json(tmp_path):
    from dsnet.task import train

    cfg = compose_train("experiment=converged", *TINY, "model=dsconv", "module.depthwise_weight_decay=0",
                        "optim.optimizer.lr=0.1", "hparams.lr_trials=4", "hparams.lr_grid='0.05,0.1,0.2,0.4'", run_dir=tmp_path, tiny=False)
    metrics, _ = train(cfg)
    assert {k: v for k, v in metrics.items() if k.startswith("hparams/")} == {
        "hparams/lr": 0.1, "hparams/weight_decay": 5e-5, "hparams/depthwise_weight_decay": 0,
        "hparams/lr_trials": 4, "hparams/lr_grid": "0.05,0.1,0.2,0.4", "hparams/lr_selected_on": "val/acc_best"}
    assert json.loads((tmp_path / "metrics.json").read_text())["hparams/lr_trials"] == 4




# --- the learning-rate choice ---------------------------------------------------------------------

# val/acc_best of the Fashion-MNIST search's 14 trials (width 0.25, seed 1, 15 epochs)
SEARCH = {"standard": {0.025: 0.9309999942779541, 0.05: 0.9344000220298767, 0.1: 0.9326000213623047,
                       0.2: 0.9344000220298767, 0.4: 0.9332000017166138, 0.8: 0.9348000288009644,
                       1.6: 0.9330000281333923},
          "dsconv": {0.025: 0.8899999856948853, 0.05: 0.899399995803833, 0.1: 0.9106000065803528,
                     0.2: 0.9169999957084656, 0.4: 0.9196000099182129, 0.8: 0.9269999861717224,
                     1.6: 0.9193999767303467}}
BASE = [0.05, 0.1, 0.2, 0.4]


def on(grid, scores):
    return {arm: {lr: s[lr] for lr in grid} for arm, s in scores.items()}


def test_the_search_grew_at_both_edges_then_at_the_high_one_and_chose_08_for_both_arms():
    # standard's best on the first grid is 0.05 (tied with 0.2: the smaller wins), dsconv's 0.4
    first = choose_lr(on(BASE, SEARCH), BASE)
    assert (first.grid, first.chosen) == ([0.025, 0.05, 0.1, 0.2, 0.4, 0.8], None)
    # both arms now best at 0.8, the high edge; one value of room left
    second = choose_lr(on(first.grid, SEARCH), BASE)
    assert (second.grid, second.chosen) == ([0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6], None)
    final = choose_lr(SEARCH, BASE)
    assert final.chosen == {
        "standard": {"lr": 0.8, "val_acc_best": 0.9348000288009644, "trials": 7,
                     "grid": "0.025,0.05,0.1,0.2,0.4,0.8,1.6", "at_edge": False},
        "dsconv": {"lr": 0.8, "val_acc_best": 0.9269999861717224, "trials": 7,
                   "grid": "0.025,0.05,0.1,0.2,0.4,0.8,1.6", "at_edge": False}}


def test_with_one_value_left_the_grid_grows_where_an_arm_still_climbs():
    climbing = {"standard": {lr: 0.9 for lr in [0.0125, *BASE, 0.8]},  # flat: at 0.0125 by the tie rule
                "dsconv": {lr: lr for lr in [0.0125, *BASE, 0.8]}}      # climbing at the high edge
    assert choose_lr(climbing, BASE).grid == [0.0125, *BASE, 0.8, 1.6]
    # no room left: the choice stands, and says the best lr is at an edge
    done = choose_lr({arm: {**s, 1.6: s.get(1.6, 1.6 if arm == "dsconv" else 0.9)} for arm, s in climbing.items()}, BASE)
    assert {arm: (c["lr"], c["trials"], c["at_edge"]) for arm, c in done.chosen.items()} == {
        "standard": (0.0125, 7, True), "dsconv": (1.6, 7, True)}


def test_arms_scored_over_different_grids_are_an_error():
    with pytest.raises(ValueError, match=r"every arm needs a score at each lr of one grid"):
        choose_lr({"standard": {0.1: 0.9, 0.2: 0.8}, "dsconv": {0.1: 0.9}}, BASE)


def trial(stage_dir: Path, conv: str, lr: float, state: str, val_acc: float = 0.5) -> None:
    run_dir = stage_dir / f"{conv}_lr{lr:g}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model:\n  conv: {conv}\noptim:\n  optimizer:\n    lr: {lr}\n")
    if state == "finished":
        (run_dir / "metrics.json").write_text(json.dumps({"val/acc_best": val_acc}))
    elif state == "failed":
        (run_dir / "error.txt").write_text("Traceback: loss is NaN\n")


def test_a_failed_trial_scores_zero_and_an_unfinished_one_is_named(tmp_path):
    trial(tmp_path, "standard", 0.1, "finished", 0.91)
    trial(tmp_path, "standard", 1.6, "failed")
    trial(tmp_path, "dsconv", 0.1, "partial")
    scores, unfinished = search_scores(tmp_path)
    assert scores == {"standard": {0.1: 0.91, 1.6: 0.0}}
    assert unfinished == [tmp_path / "dsconv_lr0.1"]


def test_the_converged_recipe_holds_the_lr_the_search_chose():
    chosen = choose_lr(SEARCH, BASE).chosen
    for conv, arm in (("standard", "conv"), ("dsconv", "dsconv")):
        cfg = compose_train("experiment=converged", f"model={arm}", run_dir="/tmp/unused", tiny=False)
        assert (cfg.optim.optimizer.lr, cfg.hparams.lr_trials, cfg.hparams.lr_grid) == (
            chosen[conv]["lr"], chosen[conv]["trials"], chosen[conv]["grid"]), arm
    # a conv type the search did not tune keeps the optimizer's lr, and says it was not searched
    cfg = compose_train("experiment=converged", "model=group", run_dir="/tmp/unused", tiny=False)
    assert (cfg.optim.optimizer.lr, cfg.hparams.lr_trials, cfg.hparams.lr_grid) == (0.1, None, None)
    # the search's own trials record no choice, and run the grid it grew to
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=converged", "hparams_search=converged_lr"], return_hydra_config=True)
    assert (cfg.hparams.lr_trials, cfg.hparams.lr_grid) == (None, None)
    assert cfg.hydra.sweeper.params["optim.optimizer.lr"] == "0.025,0.05,0.1,0.2,0.4,0.8,1.6"


# --- the stages -----------------------------------------------------------------------------------


def test_a_stage_is_a_train_py_multirun_on_the_joblib_or_the_slurm_launcher(tmp_path):
    study = load_study("fashion_mnist")
    assert [s.name for s in study.stages] == [
        "lr_search", "table4_w0.25", "dw_decay_w0.25", "equal_cost", "long_w0.25", "long60_w0.25",
        "table4_w0.5", "equal_cost_e30", "table6", "table4_w1"]
    assert [s.name for s in study.stages if s.gpu] == ["table4_w1"]
    command = stage_command(study.stage("table6"), tmp_path, launcher_overrides("joblib", 2))
    assert command == [sys.executable, "train.py", "-m", "experiment=converged_long", "model=dsconv",
                       "model.width=1,0.75", f"hydra.sweep.dir={tmp_path / 'table6'}", "ckpt_path=last",
                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert launcher_overrides("slurm", 2) == ["hydra/launcher=slurm"]


def job_name(*overrides: str) -> str:
    """The run directory name (hydra.sweep.subdir) one job of a stage composes to."""
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


@pytest.mark.parametrize("stage, job, name", [
    ("lr_search", ["model=conv", "optim.optimizer.lr=0.025", "seed=1"], "standard_w0.25_lr0.025_e15_seed1"),
    ("equal_cost", ["seed=3"], "dsconv_w0.74_lr0.8_e15_seed3"),
    ("long60_w0.25", ["model=conv", "seed=2"], "standard_w0.25_lr0.8_e60_seed2"),
    ("table6", ["model.width=1", "seed=4"], "dsconv_w1_lr0.8_e30_seed4"),
])
def test_a_stages_jobs_land_in_the_run_directories_the_study_trained_into(stage, job, name):
    """The names the published runs have: a stage re-run into the same runs dir finds (and skips) them."""
    overrides = [o for o in load_study("fashion_mnist").stage(stage).overrides if "," not in o]
    assert job_name(*overrides, *job) == name


def test_cifar10s_schedule_check_trains_table_4s_runs_without_their_test():
    """The check's runs at either schedule are the jobs experiment=cifar10 sweeps at that schedule:
    Table 4 at width 0.25 is read from them once the schedule is chosen, not trained again."""
    study = load_study("cifar10")
    assert [s.name for s in study.stages] == ["lr_search", "check", "label_smoothing", "table4_w0.5", "equal_cost",
                                              "table6"]
    for conv, epochs in (("conv", 10), ("dsconv", 20)):
        job = [f"model={conv}", "seed=3", f"trainer.max_epochs={epochs}"]
        assert job_name("experiment=cifar10_check", *job) == job_name("experiment=cifar10", *job)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        check = compose("train", overrides=["experiment=cifar10_check"], return_hydra_config=True)
    assert check.test is False
    assert dict(check.hydra.sweeper.params) == {"seed": "2,3,4", "model": "conv,dsconv",
                                                 "trainer.max_epochs": "80,40,20,10"}
    # the label-smoothing ablation: the check's 10-epoch jobs at smoothing 0, on validation
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        ablation = compose("train", overrides=["experiment=cifar10_label_smoothing"], return_hydra_config=True)
    assert (ablation.test, ablation.module.label_smoothing, ablation.trainer.max_epochs) == (False, 0.0, 10)
    # the divergence rule's step-down: dsconv trains 80 epochs at 1.6, every shorter schedule at the
    # search's 3.2, and the run's name and hparams say which; the standard arm keeps 0.8 throughout
    assert (check.module.label_smoothing, check.trainer.max_epochs, check.optim.optimizer.lr, check.hparams.lr,
            check.hparams.lr_searched) == (0.1, 80, 1.6, 1.6, 3.2)
    names = {(conv, e): job_name("experiment=cifar10_check", f"model={conv}", "seed=3", f"trainer.max_epochs={e}")
             for conv in ("conv", "dsconv") for e in (40, 80)}
    assert names == {("conv", 40): "standard_w0.25_lr0.8_e40_seed3", ("conv", 80): "standard_w0.25_lr0.8_e80_seed3",
                     ("dsconv", 40): "dsconv_w0.25_lr3.2_e40_seed3", ("dsconv", 80): "dsconv_w0.25_lr1.6_e80_seed3"}
    assert ablation.optim.optimizer.lr == 3.2 and dict(ablation.hydra.sweeper.params) == {
        "seed": "2,3,4", "model": "conv,dsconv"}
    # the search's trials keep their 10 epochs, and so their names, whatever the recipe's schedule
    search = [o for o in study.stage("lr_search").overrides if "," not in o]
    assert job_name(*search, "model=dsconv", "optim.optimizer.lr=3.2", "seed=1") == "dsconv_w0.25_lr3.2_e10_seed1"


def test_cifar10s_equal_cost_stage_trains_dsconv_at_standard_w025s_parameters():
    """Seeds 2-4 at the width whose parameters match standard w0.25 (0.74, its MACs within 5%);
    the MACs-matched width (0.72) only when asked for."""
    def cfg(*overrides: str):
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            return compose("train", overrides=["experiment=cifar10_equal_cost", *overrides], return_hydra_config=True)

    params = cfg()
    assert dict(params.hydra.sweeper.params) == {"seed": "2,3,4", "model": "dsconv", "equal_cost": "params"}
    assert (params.model.conv, params.model.width, params.equal_cost) == ("dsconv", 0.74, "params")
    assert cfg("equal_cost=macs").model.width == 0.72


def test_an_epoch_keyed_lr_is_found_whether_its_key_was_read_as_a_number_or_a_string():
    """YAML reads `{40: 0.4}` with an int key and `{"80": 1.6}` with a string key; both select their
    schedule, and every other schedule keeps the search's lr."""
    def lr(*overrides: str) -> float:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            return compose("train", overrides=["experiment=cifar10", *overrides]).optim.optimizer.lr

    assert lr("++tuned.dsconv.lr_by_epochs={40: 0.4}", "trainer.max_epochs=40") == 0.4  # int key
    assert lr("tuned.dsconv.lr_by_epochs.80=0.8") == 0.8  # the recipe's quoted key, set by its path
    assert (lr("trainer.max_epochs=20"), lr("model=conv")) == (3.2, 0.8)


def test_an_lr_by_epochs_key_that_is_no_epoch_count_is_one_line_and_trains_nothing(tmp_path):
    from test_faults import one_line, write_cifar10_layout
    from test_robustness import assert_nothing_written, run_entry

    write_cifar10_layout(tmp_path / "data" / "cifar-10-batches-py")
    result = run_entry("train.py", "experiment=cifar10", "++tuned.dsconv.lr_by_epochs={eighty: 0.4}",
                       "trainer.max_epochs=1", run_dir=tmp_path)
    assert one_line(result) == ("optim.optimizer.lr: tuned.dsconv.lr_by_epochs has the key 'eighty'; its keys are "
                                "epoch counts (integers >= 1), e.g. {80: 1.6}")
    assert_nothing_written(tmp_path)


def test_an_unknown_study_or_stage_is_one_line_and_exit_1(tmp_path, capsys):
    assert study_main(["plan", "nope", "--runs-dir", str(tmp_path)]) == 1
    assert study_main(["run", "fashion_mnist", "--runs-dir", str(tmp_path), "--stage", "table5"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("python -m dsnet.study: error: no study 'nope' (a file ")
    assert err[0].endswith("studies: cifar10, conv_mix, fashion_mnist, fashion_mnist_device_check")
    assert err[1] == ("python -m dsnet.study: error: study 'fashion_mnist' has no stage 'table5'; its stages: "
                      "lr_search, table4_w0.25, dw_decay_w0.25, equal_cost, long_w0.25, long60_w0.25, "
                      "table4_w0.5, equal_cost_e30, table6, table4_w1")


# --- tidy tables: collecting runs, reporting from them --------------------------------------------


def test_the_collector_turns_a_real_run_into_one_row_and_its_epochs(tmp_path):
    from dsnet.task import train

    run_dir = tmp_path / "runs" / "stage" / "job"
    cfg = compose_train("model=dsconv", "trainer.max_epochs=2", "seed=3", run_dir=run_dir)
    metrics, _ = train(cfg)
    rows, curves, missing = collect(tmp_path / "runs")
    assert missing == []
    [row] = rows
    assert {k: row[k] for k in ("run", "stage", "eval", "top1_source", "conv", "width", "seed", "epochs",
                                "params", "macs", "top1", "train_device", "lr")} == {
        "run": "stage/job", "stage": "stage", "eval": None, "top1_source": "metrics.json", "conv": "dsconv",
        "width": 0.25, "seed": 3, "epochs": 2, "params": metrics["params"], "macs": metrics["macs"],
        "top1": metrics["test/acc"], "train_device": "cpu", "lr": 0.1}
    with open(next((run_dir / "csv").glob("version_*/metrics.csv")), newline="") as f:
        logged = [float(r["val/acc"]) for r in csv.DictReader(f) if r["val/acc"]]
    assert [(c["run"], c["epoch"]) for c in curves] == [("stage/job", 1), ("stage/job", 2)]
    assert [c["val/acc"] for c in curves] == logged
    # written and read back: the same values, floats bit for bit
    write_study(tmp_path / "runs", tmp_path / "results")
    assert read_table(tmp_path / "results" / "runs.csv") == [{k: v for k, v in row.items()}]
    [run] = read_study(tmp_path / "results")
    assert (run.top1, run.values["time_per_epoch_s"], run.curve()) == (
        metrics["test/acc"], metrics["time_per_epoch_s"], dict(enumerate(logged, 1)))


def test_collect_replaces_its_runs_rows_and_keeps_those_of_runs_not_under_the_runs_dir(tmp_path, capsys):
    from dsnet.task import train

    # the table before: a run collected earlier from elsewhere, and an older result of the job below
    results = tmp_path / "results" / "study"
    elsewhere = tidy_run("standard", 2, 0.92)
    write_table(results / "runs.csv", [elsewhere, tidy_run("dsconv", 3, 0.5) | {"run": "stage/job", "stage": "stage"}])
    write_table(results / "curves.csv", [{"run": run, "epoch": e, "val/acc": 0.1 * e}
                                         for run in ("stage/job", elsewhere["run"]) for e in (1, 2, 3)])
    metrics, _ = train(compose_train("model=dsconv", "trainer.max_epochs=2", run_dir=tmp_path / "runs" / "stage" / "job"))
    collect_cli = ["collect", "study", "--runs-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert study_main(collect_cli) == 0
    out = capsys.readouterr().out
    assert (f"kept 1 row of {results / 'runs.csv'} whose runs are not under {tmp_path / 'runs'} (t4 1); "
            "--replace drops them") in out
    assert "(1 runs collected, 1 kept)" in out and "(5 epochs)" in out
    rows = read_table(results / "runs.csv")
    assert [r["run"] for r in rows] == ["stage/job", "t4/standard_seed2"]
    assert (rows[0]["top1"], rows[0]["conv"]) == (metrics["test/acc"], "dsconv")
    assert {k: v for k, v in rows[1].items() if v is not None} == elsewhere  # the columns it lacked are empty
    curves = read_table(results / "curves.csv")
    assert [(c["run"], c["epoch"]) for c in curves] == [("stage/job", 1), ("stage/job", 2)] + [
        ("t4/standard_seed2", e) for e in (1, 2, 3)]
    assert [c["val/acc"] for c in curves[2:]] == [0.1, 0.2, 0.1 * 3]
    # --replace: the runs under the runs dir alone
    assert study_main([*collect_cli, "--replace"]) == 0
    assert "(1 runs collected, 0 kept)" in capsys.readouterr().out
    assert [r["run"] for r in read_table(results / "runs.csv")] == ["stage/job"]
    assert [c["run"] for c in read_table(results / "curves.csv")] == ["stage/job"] * 2


def tidy_run(conv: str, seed: int, top1: float) -> dict:
    params, macs = {"standard": (1771650, 22896256), "dsconv": (215498, 2895136)}[conv]
    return {"run": f"t4/{conv}_seed{seed}", "stage": "t4", "top1_source": "metrics.json", "arch": "mobilenet_v1",
            "conv": conv, "dataset": "Fashion-MNIST", "width": 0.25, "image_size": 28, "in_chans": 1,
            "num_classes": 10, "params": params, "macs": macs, "seed": seed, "epochs": 15, "lr": 0.8,
            "weight_decay": 5e-05, "top1": top1, "val_acc_best": top1 + 0.01}


def test_the_report_of_a_tidy_table_gives_means_intervals_and_paired_differences(tmp_path):
    tops = {"standard": (0.92, 0.93, 0.94), "dsconv": (0.90, 0.92, 0.91)}
    write_table(tmp_path / "study" / "runs.csv",
                [tidy_run(conv, seed, top1) for conv, t in tops.items() for seed, top1 in zip((2, 3, 4), t)])
    report_study(tmp_path / "study", tmp_path / "out")
    results = {r["conv"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    # mean ± t(0.975, 2) * std / sqrt(3): std 0.01, so 4.303 * 0.01 / 1.732 = 0.0248
    assert {c: (float(r["top1_mean"]), round(float(r["top1_ci95"]), 6), r["n"]) for c, r in results.items()} == {
        "standard": (pytest.approx(0.93), 0.024841, "3"), "dsconv": (pytest.approx(0.91), 0.024841, "3")}
    [paired] = read_csv(tmp_path / "out" / "comparisons.csv")
    # dsconv - standard by seed: -0.02, -0.01, -0.03
    assert (float(paired["diff_mean"]), round(float(paired["diff_ci95"]), 6), paired["n_pairs"]) == (
        pytest.approx(-0.02), 0.024841, "3")
    tables = (tmp_path / "out" / "tables.md").read_text()
    assert "| 93.00 ± 2.48 (n=3) |" in tables and "| 91.00 ± 2.48 (n=3) |" in tables


def test_a_search_stage_is_reported_on_its_own_and_an_ablation_beside_what_it_ablates(tmp_path):
    """A search (an arm at several rates, no test split) gets its own report; an ablation trained the
    same way at one rate per arm (label smoothing off) stays in the study's tables and is compared
    on validation with the tested runs it ablates."""
    lrs = {"standard": 0.8, "dsconv": 3.2}
    rows = [{**tidy_run(conv, seed, 0.9), "run": f"t4/{conv}_seed{seed}", "lr": lrs[conv], "label_smoothing": 0.1}
            for conv in lrs for seed in (2, 3)]
    rows += [{**tidy_run(conv, 1, 0.0), "run": f"search/{conv}_lr{lr}", "stage": "search", "top1": None,
              "top1_source": None, "lr": lr, "val_acc_best": 0.8 + lr / 10} for conv in lrs
             for lr in (0.1, 0.2, 0.4)]
    rows += [{**tidy_run(conv, seed, 0.0), "run": f"ls/{conv}_seed{seed}", "stage": "ls", "top1": None,
              "top1_source": None, "lr": lrs[conv], "label_smoothing": 0.0, "val_acc_best": 0.9 - seed / 100}
             for conv in lrs for seed in (2, 3)]
    write_table(tmp_path / "study" / "runs.csv", rows)
    summaries = report_study(tmp_path / "study", tmp_path / "out")
    assert [(s.out_dir, s.n_runs) for s in summaries] == [(tmp_path / "out", 8), (tmp_path / "out" / "search", 6)]
    assert (tmp_path / "out" / "search" / "lr_sensitivity.png").is_file()
    ablation = {r["a"]: r for r in read_csv(tmp_path / "out" / "comparisons.csv") if r["factor"] == "label_smoothing"}
    # val/acc_best: 0.91 (smoothed) against 0.88 and 0.87 (not), by seed
    assert {a: (r["split"], round(float(r["diff_mean"]), 6), r["n_pairs"]) for a, r in ablation.items()} == {
        "standard: 0": ("val", 0.035, "2"), "dsconv: 0": ("val", 0.035, "2")}
    # reported again without its search: the search's folder and the plots no run draws any more go
    (tmp_path / "out" / "notes.txt").write_text("kept")
    write_table(tmp_path / "study" / "runs.csv", rows[:4])
    [summary] = report_study(tmp_path / "study", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*summary.files, "notes.txt"])
    assert not (tmp_path / "out" / "search").exists()


def test_a_bad_cell_in_a_tidy_table_is_one_line_naming_the_file_and_column(tmp_path):
    write_table(tmp_path / "runs.csv", [{"run": "a", "channels_last": "maybe"}])
    with pytest.raises(ValueError, match=r"runs.csv: column 'channels_last': 'maybe' is not True or False$"):
        read_table(tmp_path / "runs.csv")


# --- a stage on the joblib launcher, killed and resumed -------------------------------------------

TINY_STUDY = """\
name: tiny
stages:
  - name: sweep
    overrides: [experiment=converged, {tiny}, trainer.max_epochs=3, "seed=1,2,3", model=dsconv, test=false]
"""


def start(study: Path, runs: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe: nothing waits on a pipe a worker holds open
        return subprocess.Popen([sys.executable, "-m", "dsnet.study", "run", str(study), "--runs-dir", str(runs),
                                 "--workers", "2"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # three tiny runs on two joblib workers, twice: ~40 s idle, minutes under load
def test_a_stage_killed_mid_way_resumes_with_the_same_command_and_finishes_every_job(tmp_path, capsys):
    study, runs = tmp_path / "study.yaml", tmp_path / "runs"
    tiny = ", ".join(o for o in TINY if not o.startswith(("trainer.max_epochs", "trainer.log_every")))
    study.write_text(TINY_STUDY.format(tiny=tiny))
    names = [f"dsconv_w0.25_lr0.8_e3_seed{s}" for s in (1, 2, 3)]
    proc = start(study, runs, tmp_path / "first.log")
    stage = runs / "sweep"
    # kill once a job finished and another holds a checkpoint but no result
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        done = [n for n in names if (stage / n / "metrics.json").is_file()]
        partial = [n for n in names if (stage / n / "checkpoints" / "last.ckpt").is_file() and n not in done]
        if done and partial:
            break
        time.sleep(0.1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)  # to dsnet.study alone: it passes the signal on to the stage's processes
    proc.wait(timeout=120)
    out = (tmp_path / "first.log").read_text()
    assert proc.returncode == 1 and "the same command resumes it" in out.splitlines()[-1], out[-3000:]
    before = {n: (stage / n / "metrics.json").read_bytes() for n in done}
    unfinished = [n for n in names if not (stage / n / "metrics.json").is_file()]
    assert unfinished, "every job finished before the kill"
    # plan says how far each unfinished job got: the epochs it trained, which it resumes after
    assert study_main(["plan", str(study), "--runs-dir", str(runs)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if "partial: " in line]
    assert [line.split(": ")[1] for line in shown] == [n for n in unfinished if (stage / n / "config.yaml").is_file()]
    trained = {}
    for line in shown:
        # a job stopped within its first epoch has a checkpoint but no epoch, best score or rate yet
        found = re.fullmatch(r"  partial: (\S+): (?:no checkpoint yet, starts at epoch 1|(\d) of 3 epochs"
                             r"(, best val top-1 \d+\.\d\d%)?(, 0\.\d\d CPU-h so far(, about 0\.\d\d more)?)?)", line)
        assert found, line
        trained[found[1]] = int(found[2] or 0)
    assert max(trained.values()) >= 1, shown  # the job killed after its checkpoint
    proc = start(study, runs, tmp_path / "second.log")
    proc.wait(timeout=600)
    out = (tmp_path / "second.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert all(f"skipped: {stage / n} already holds this run, finished" in out for n in done)
    assert {n: (stage / n / "metrics.json").read_bytes() for n in done} == before
    for n in names:
        metrics = json.loads((stage / n / "metrics.json").read_text())
        assert (metrics["epochs"], metrics["seed"]) == (3, int(n[-1]))
    # the partial job continued from its last checkpoint: a second CSV log, and 3 epochs in all;
    # it trained the epochs after those plan counted, and no other (none when plan counted 3)
    assert any((stage / n / "csv" / "version_1").is_dir() for n in partial)
    for n, before_kill in ((n, k) for n, k in trained.items() if k):
        second = stage / n / "csv" / "version_1" / "metrics.csv"
        resumed = read_csv(second) if second.is_file() else []
        assert [int(float(r["epoch"])) + 1 for r in resumed if r.get("val/acc")] == list(range(before_kill + 1, 4)), n
    rows, curves, missing = collect(runs)
    assert ([r["run"] for r in rows], missing) == ([f"sweep/{n}" for n in names], [])
    assert sorted({(c["run"], c["epoch"]) for c in curves}) == [(f"sweep/{n}", e) for n in names for e in (1, 2, 3)]


def test_plan_counts_each_stages_runs_and_prints_its_command(tmp_path, capsys):
    trial(tmp_path / "equal_cost", "dsconv", 0.8, "finished")
    trial(tmp_path / "equal_cost", "dsconv", 0.4, "partial")
    trial(tmp_path / "table6", "dsconv", 0.8, "failed")
    trial(tmp_path / "table6", "dsconv", 0.4, "partial")
    damaged = tmp_path / "table6" / "dsconv_lr0.4" / "checkpoints" / "last.ckpt"
    damaged.parent.mkdir()
    damaged.write_bytes(b"PK\x03\x04 cut short")
    assert study_main(["plan", "fashion_mnist", "--runs-dir", str(tmp_path), "--workers", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    command = (f"  train.py -m experiment=converged model=dsconv model.width=0.74 "
               f"hydra.sweep.dir={tmp_path / 'equal_cost'} ckpt_path=last hydra/launcher=joblib hydra.launcher.n_jobs=3")
    # an unfinished run says how far it got, a failed one what it raised
    assert lines[6:9] == ["equal_cost: 1 finished, 1 partial, 0 failed", "  partial: dsconv_lr0.4: no checkpoint yet, starts at epoch 1", command]
    assert lines[17:19] == ["table6: 0 finished, 1 partial, 1 failed", "  partial: dsconv_lr0.4: last.ckpt: "
                            f"{damaged} is damaged, truncated or not a PyTorch checkpoint (RuntimeError: PytorchStreamReader "
                            "failed reading zip archive: not a ZIP archive); start again without ckpt_path (no best "
                            "checkpoint beside it)"]
    assert lines[19] == "  failed: dsconv_lr0.8: Traceback: loss is NaN"
    assert lines[21] == "table4_w1: 0 finished, 0 partial, 0 failed (needs a GPU)"


def test_plan_lists_a_partial_run_whose_config_yaml_does_not_parse(tmp_path, capsys):
    trial(tmp_path / "table6", "dsconv", 0.4, "partial")
    (tmp_path / "table6" / "dsconv_lr0.4" / "config.yaml").write_text("trainer: [unclosed\n")
    assert study_main(["plan", "fashion_mnist", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "  partial: dsconv_lr0.4: no checkpoint yet, starts at epoch 1" in out.out.splitlines()
    assert out.err == ""


def test_match_prints_the_equal_parameter_width_of_the_study(capsys):
    assert study_main(["match", "fashion_mnist", "--cost", "params"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["width"], found["cost"], found["target"], found["cost_name"]) == (0.74, 1769682, 1771650, "params")


def test_the_trade_off_figure_draws_one_row_of_panels_per_protocol(tmp_path):
    from dsnet.report.plots import COST_AXES, _figure
    from dsnet.report.tables import summarise

    rows = [tidy_run(conv, seed, 0.9) for conv in ("standard", "dsconv") for seed in (2, 3)]
    rows += [{**r, "run": r["run"] + "_e30", "epochs": 30} for r in rows]
    write_table(tmp_path / "runs.csv", rows)
    fig = _figure(summarise(read_study(tmp_path)), COST_AXES[:2])
    assert [ax.get_title() for ax in fig.axes] == ["Fashion-MNIST, 15 epochs"] * 2 + ["Fashion-MNIST, 30 epochs"] * 2
    # each panel holds its own protocol's two configurations, labelled by width
    assert [[t.get_text() for t in ax.texts] for ax in fig.axes] == [["0.25x", "0.25x"]] * 4


def test_a_finished_run_is_evaluated_on_its_best_checkpoint_with_evals_own_trainer(tmp_path):
    from dsnet.study.evaluate import eval_command, to_evaluate

    stage = load_study("fashion_mnist").stage("table4_w1")
    run_dir = tmp_path / "table4_w1" / "standard_w1_lr0.8_e30_seed2"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- seed=2\n- experiment=converged_long\n- model=conv\n- model.width=1\n- trainer=gpu\n"
        "- trainer.precision=32-true\n- ckpt_path=last\n- hydra/launcher=joblib\n")
    (run_dir / "checkpoints").mkdir()
    for name in ("best-epoch010-acc0.9400.ckpt", "best-epoch020-acc0.9450.ckpt", "last.ckpt"):
        (run_dir / "checkpoints" / name).write_bytes(b"")
    (run_dir / "metrics.json").write_text("{}")
    assert eval_command(stage, run_dir) == [
        sys.executable, "eval.py", "experiment=converged_long", "seed=2", "model=conv", "model.width=1",
        f"ckpt_path={run_dir / 'checkpoints' / 'best-epoch020-acc0.9450.ckpt'}",
        f"hydra.run.dir={run_dir / 'eval'}", "latency.num_threads=1"]
    assert to_evaluate(stage, tmp_path) == [run_dir]
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text("{}")
    assert to_evaluate(stage, tmp_path) == []  # evaluated once: the command resumes past it


def test_choose_reads_the_search_trials_and_says_the_recipe_holds_their_choice(tmp_path, capsys):
    for conv, scores in SEARCH.items():
        for lr, score in scores.items():
            trial(tmp_path / "lr_search", conv, lr, "finished", score)
    assert study_main(["choose", "fashion_mnist", "--runs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "tuned:",
        '  dsconv: {lr: 0.8, lr_trials: 7, lr_grid: "0.025,0.05,0.1,0.2,0.4,0.8,1.6"}',
        '  standard: {lr: 0.8, lr_trials: 7, lr_grid: "0.025,0.05,0.1,0.2,0.4,0.8,1.6"}',
        "# dsconv: val/acc_best 0.9270", "# standard: val/acc_best 0.9348",
        "the experiment config holds this choice"]
    # a trial still running: no choice yet
    trial(tmp_path / "lr_search", "dsconv", 3.2, "partial")
    assert study_main(["choose", "fashion_mnist", "--runs-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("python -m dsnet.study: error: the lr_search stage has 1 unfinished trials")


def test_overrides_after_a_double_dash_go_to_every_stage(tmp_path, capsys):
    assert study_main(["plan", "fashion_mnist", "--runs-dir", str(tmp_path), "--launcher", "slurm", "--",
                       "hydra.launcher.partition=cpu", "trainer.max_epochs=1"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  train.py")]
    assert len(commands) == 10
    assert all(c.endswith("ckpt_path=last hydra/launcher=slurm hydra.launcher.partition=cpu trainer.max_epochs=1")
               for c in commands)
