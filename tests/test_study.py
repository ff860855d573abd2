"""The converged study's pieces: depthwise weight decay, equal-cost width matching and its resolver,
and scripts/study.py's learning-rate choice on a search's result files."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_train, read_csv
from dsnet.matching import match_width
from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model
from dsnet.module import ClassifierModule

FMNIST = dict(image_size=28, num_classes=10, in_chans=1)  # Fashion-MNIST through the small-input stem
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


# --- scripts/study.py: the learning rate chosen per arm -------------------------------------------


def load_study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def finish_trials(jobs, runs_dir, val_acc) -> None:
    """Gives every trial not run yet a metrics.json with ``val_acc(arm, lr)``."""
    for job in jobs:
        if job.state(runs_dir) == "todo":
            job.run_dir(runs_dir).mkdir(parents=True)
            lr = float(job.config["optim"]["optimizer"]["lr"])
            (job.run_dir(runs_dir) / "metrics.json").write_text(json.dumps({"val/acc_best": val_acc(job.arm, lr)}))


def test_match_on_latency_records_the_thread_count_its_timings_ran_at(monkeypatch):
    # The timings are stood in for by a deterministic cost (latency proportional to parameters), so
    # the match is exact; what is checked is the record: the process has 2 threads, the timings 1.
    import dsnet.allocator
    import dsnet.latency

    timed_at = []

    def latency_from_params(net, input_size, num_threads, min_run_time):
        timed_at.append(num_threads)
        return {"latency_ms_p50": count_params(net) / 1e6}

    monkeypatch.setattr(dsnet.latency, "measure_latency", latency_from_params)
    monkeypatch.setattr(dsnet.allocator, "configure", lambda mode: mode)  # process-wide: not in a test worker
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = load_study().match("latency", min_run_time=0.01)
    finally:
        torch.set_num_threads(threads)
    assert (found["width"], found["cost_name"], found["target"]) == (0.74, "latency", STANDARD_W025_PARAMS / 1e6)
    assert set(timed_at) == {1} and found["environment"]["num_threads"] == 1


def test_a_latency_match_that_finds_no_width_is_a_one_line_error_and_writes_no_record(tmp_path, monkeypatch):
    # Timings stood in for by parameters, the standard network's doubled: out of dsconv's reach up to w1.0
    import dsnet.allocator
    import dsnet.latency

    def latency(net, input_size, num_threads, min_run_time):
        depthwise = any(m.groups > 1 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        return {"latency_ms_p50": count_params(net) / 1e6 * (1 if depthwise else 2)}

    monkeypatch.setattr(dsnet.latency, "measure_latency", latency)
    monkeypatch.setattr(dsnet.allocator, "configure", lambda mode: mode)  # process-wide: not in a test worker
    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", study.RESULTS_DIR)  # main() reassigns it
    with pytest.raises(SystemExit, match=r"^study.py: error: standard at width 0.25 costs 3.543 latency_ms, "
                                         r"outside what dsconv reaches at widths 0.01..1 \(.*\)$"):
        study.main(["match", "--cost", "latency", "--min-run-time", "0.01", "--results-dir", str(tmp_path),
                    "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "match_latency.json").exists()

def test_the_latency_match_record_names_the_input_and_the_report_reads_it(tmp_path, monkeypatch):
    """What study.py match writes is what python -m dsnet.report --latency-match takes: a match of
    params stands in for the timed one (the record's layout does not depend on the cost)."""
    import dsnet.allocator
    from dsnet.report.discover import read_latency_match

    monkeypatch.setattr(dsnet.allocator, "configure", lambda mode: mode)  # process-wide: not in a test worker
    found = load_study().match("params", min_run_time=0.01)
    assert {k: found[k] for k in ("arch", "image_size", "in_chans", "num_classes")} == {
        "arch": "mobilenet_v1", "image_size": 28, "in_chans": 1, "num_classes": 10}
    path = tmp_path / "match.json"
    path.write_text(json.dumps({**found, "cost_name": "latency", "environment": {"device": "cpu"}}))
    assert read_latency_match(path)["width"] == 0.74


def test_the_lr_choice_grows_the_grid_at_an_edge_for_both_arms(tmp_path):
    study = load_study()
    jobs, choice = study.choose(tmp_path)
    assert choice is None and len(jobs) == 8  # 2 arms x the 4 lr of hparams_search/converged_lr.yaml
    assert {j.name for j in jobs} == {f"{c}_w0.25_lr{lr}_e15_seed1" for c in ("standard", "dsconv")
                                      for lr in ("0.05", "0.1", "0.2", "0.4")}

    # standard peaks inside the grid; dsconv's best is its largest lr: both arms get lr 0.8
    finish_trials(jobs, tmp_path, lambda arm, lr: {"conv": 0.9 - abs(lr - 0.1), "dsconv": lr}[arm])
    jobs, choice = study.choose(tmp_path)
    assert choice is None and len(jobs) == 10
    finish_trials(jobs, tmp_path, lambda arm, lr: {"conv": 0.9 - abs(lr - 0.1), "dsconv": 0.3 if lr == 0.8 else lr}[arm])
    _, choice = study.choose(tmp_path)
    assert {arm: (c["lr"], c["trials"], c["at_edge"]) for arm, c in choice.items()} == {
        "conv": (0.1, 5, False), "dsconv": (0.4, 5, False)}
    assert choice["dsconv"]["grid"] == "0.05,0.1,0.2,0.4,0.8" and choice["dsconv"]["scores"]["0.8"] == 0.3


def test_arms_at_both_edges_grow_the_grid_at_both_in_one_round(tmp_path):
    study = load_study()
    assert study.MAX_GROW == 3

    def edges(arm, lr):  # standard flat, best at its smallest lr by the tie rule; dsconv climbing
        return lr if arm == "dsconv" else 0.9

    jobs, _ = study.choose(tmp_path)
    finish_trials(jobs, tmp_path, edges)
    jobs, choice = study.choose(tmp_path)
    assert choice is None and sorted(j.name for j in jobs if j.state(tmp_path) == "todo") == [
        f"{c}_w0.25_lr{lr}_e15_seed1" for c in ("dsconv", "standard") for lr in ("0.025", "0.8")]
    # both at their edges again, one value left: it goes where an arm still climbs (dsconv's 1.6),
    # not to the edge standard sits at only by the tie rule
    finish_trials(jobs, tmp_path, edges)
    jobs, choice = study.choose(tmp_path)
    assert choice is None and sorted(j.name for j in jobs if j.state(tmp_path) == "todo") == [
        f"{c}_w0.25_lr1.6_e15_seed1" for c in ("dsconv", "standard")]
    finish_trials(jobs, tmp_path, edges)
    jobs, choice = study.choose(tmp_path)
    assert len(jobs) == 14
    assert {arm: (c["lr"], c["trials"], c["at_edge"]) for arm, c in choice.items()} == {
        "conv": (0.025, 7, True), "dsconv": (1.6, 7, True)}
    assert choice["conv"]["grid"] == "0.025,0.05,0.1,0.2,0.4,0.8,1.6"


def test_the_converged_recipe_trains_each_arm_at_the_lr_the_search_chose(tmp_path):
    choice = json.loads((ROOT / "docs" / "results" / "converged" / "lr_choice.json").read_text())
    for arm in ("conv", "dsconv"):
        cfg = compose_train("experiment=converged", f"model={arm}", run_dir=tmp_path, tiny=False)
        hparams = OmegaConf.to_container(cfg.hparams, resolve=True)
        assert (cfg.optim.optimizer.lr, hparams["lr_trials"], hparams["lr_grid"]) == (
            choice[arm]["lr"], choice[arm]["trials"], choice[arm]["grid"]), arm
    # a conv type the search did not tune keeps the optimizer's lr, and says it was not searched
    cfg = compose_train("experiment=converged", "model=group", run_dir=tmp_path, tiny=False)
    assert (cfg.optim.optimizer.lr, cfg.hparams.lr_trials, cfg.hparams.lr_grid) == (0.1, None, None)
    # nor is a trial of the search a choice
    cfg = compose_train("experiment=converged", "hparams_search=converged_lr", "model=dsconv", run_dir=tmp_path,
                        tiny=False)
    assert (cfg.hparams.lr_trials, cfg.hparams.lr_grid) == (None, None)


# --- what a converged run records -----------------------------------------------------------------


def test_a_converged_run_records_its_hyperparameters_in_metrics_json(tmp_path):
    from dsnet.task import train

    cfg = compose_train("experiment=converged", *TINY, "model=dsconv", "module.depthwise_weight_decay=0",
                        "optim.optimizer.lr=0.1", "hparams.lr_trials=4", "hparams.lr_grid='0.05,0.1,0.2,0.4'", run_dir=tmp_path, tiny=False)
    metrics, _ = train(cfg)
    assert {k: v for k, v in metrics.items() if k.startswith("hparams/")} == {
        "hparams/lr": 0.1, "hparams/weight_decay": 5e-5, "hparams/depthwise_weight_decay": 0,
        "hparams/lr_trials": 4, "hparams/lr_grid": "0.05,0.1,0.2,0.4", "hparams/lr_selected_on": "val/acc_best"}
    assert json.loads((tmp_path / "metrics.json").read_text())["hparams/lr_trials"] == 4


# --- the stages after the search ------------------------------------------------------------------


def later_stages(study, tmp_path, latency_width=0.5, runs_dir=None):
    (tmp_path / "match_latency.json").write_text(json.dumps({"width": latency_width}))
    choice = {"conv": {"lr": 0.05, "trials": 5, "grid": "0.025,0.05,0.1,0.2,0.4"},
              "dsconv": {"lr": 0.4, "trials": 5, "grid": "0.025,0.05,0.1,0.2,0.4"}}
    return [(name, study.resolve(jobs)) for name, jobs in study.later_stages(choice, runs_dir)]


@pytest.mark.parametrize("latency_width, equal_cost_widths", [(0.5, ["0.74"]), (0.6, ["0.6", "0.74"])])
def test_later_stages_run_in_priority_order_at_each_arms_lr_and_train_no_width_twice(
        tmp_path, monkeypatch, latency_width, equal_cost_widths):
    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path)
    stages = later_stages(study, tmp_path, latency_width)
    # the stages after the 30-epoch check wait for its outcome (next test)
    assert [name for name, _ in stages] == ["table4_w0.25", "dw_decay_w0.25", "equal_cost", "long_w0.25"]
    names = {name: [j.name for j in jobs] for name, jobs in stages}
    assert names["table4_w0.25"] == [f"{c}_w0.25_lr{lr}_e15_seed{s}" for s in (2, 3, 4)
                                     for c, lr in (("standard", "0.05"), ("dsconv", "0.4"))]
    assert names["dw_decay_w0.25"] == [f"dsconv_w0.25_lr0.4_e15_seed{s}" for s in (2, 3, 4)]
    # the params- and MACs-matched width (0.74) always; the latency-matched one unless Table 4 trains it
    assert names["equal_cost"] == [f"dsconv_w{w}_lr0.4_e15_seed{s}" for s in (2, 3, 4) for w in equal_cost_widths]
    assert names["long_w0.25"] == [f"{c}_w0.25_lr{lr}_e30_seed{s}" for s in (2, 3, 4)
                                   for c, lr in (("standard", "0.05"), ("dsconv", "0.4"))]
    # the search's trial count and grid travel with every run into its metrics.json
    dw = stages[1][1][0]
    assert dw.config["module"]["depthwise_weight_decay"] == 0
    assert dw.config["hparams"]["lr_trials"] == 5 and dw.config["hparams"]["lr_grid"] == "0.025,0.05,0.1,0.2,0.4"


@pytest.mark.parametrize("dsconv_gain, met", [(0.004, True), (0.005, False)])
def test_the_30_epoch_check_decides_the_schedule_of_the_tables_after_it(tmp_path, monkeypatch, dsconv_gain, met):
    """Doubling 15 -> 30 epochs moves standard by +0.2 pp and dsconv by ``dsconv_gain`` on every seed
    (float32 accuracies, as metrics.json holds them): under 0.5 pp the tables train 15 epochs, at
    0.5 pp they train 30 and a 60-epoch check comes first."""
    import numpy as np

    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path)
    runs_dir = tmp_path / "runs"
    undecided = later_stages(study, tmp_path, runs_dir=runs_dir)
    short, long = dict(undecided)["table4_w0.25"], dict(undecided)["long_w0.25"]
    base = {"standard": 0.9310, "dsconv": 0.9140}
    for job in (*short, *long):
        if job is long[-1]:
            assert study.check_met(runs_dir, short, long) is None  # one run short of the check
        epochs = job.config["trainer"]["max_epochs"]
        conv = "standard" if job.arm == "conv" else "dsconv"
        gain = {"standard": 0.002, "dsconv": dsconv_gain}[conv] if epochs == 30 else 0.0
        job.run_dir(runs_dir).mkdir(parents=True)
        (job.run_dir(runs_dir) / "metrics.json").write_text(json.dumps({
            "test/acc": float(np.float32(base[conv] + gain)), "val/acc_best": 0.93, "epochs": epochs,
            "seed": job.config["seed"], "arch": "mobilenet_v1", "conv": conv, "dataset": "Fashion-MNIST",
            "width": 0.25, "image_size": 28, "params": 1, "macs": 1}))
    assert study.check_met(runs_dir, short, long) is met
    stages = later_stages(study, tmp_path, runs_dir=runs_dir)
    names = {name: [j.name for j in jobs] for name, jobs in stages}
    epochs = 15 if met else 30
    assert [n for n, _ in stages][4:] == (["table4_w0.5", "table6", "table4_w1"] if met else
                                          ["long60_w0.25", "table4_w0.5", "equal_cost_e30", "table6", "table4_w1"])
    # Table 4 at the paper's width: the standard arm only (its dsconv arm is Table 6's w1.0), on a GPU
    # in fp32 weights; nothing else asks for one
    assert names["table4_w1"] == [f"standard_w1_lr0.05_e{epochs}_seed{s}" for s in (2, 3, 4)]
    assert [(j.needs_gpu, j.config["trainer"]["precision"]) for j in dict(stages)["table4_w1"]] == [(True, "32-true")] * 3
    assert not any(j.needs_gpu for name, jobs in stages if name != "table4_w1" for j in jobs)
    assert names["table4_w0.5"] == [f"dsconv_w0.5_lr0.4_e{epochs}_seed{s}" for s in (2, 3, 4)] + [
        f"standard_w0.5_lr0.05_e{epochs}_seed{s}" for s in (2, 3, 4)]
    assert names["table6"] == [f"dsconv_w{w}_lr0.4_e{epochs}_seed{s}" for s in (2, 3, 4) for w in ("1", "0.75")]
    if not met:
        assert names["long60_w0.25"] == [f"{c}_w0.25_lr{lr}_e60_seed{s}" for s in (2, 3, 4)
                                         for c, lr in (("standard", "0.05"), ("dsconv", "0.4"))]
        assert names["equal_cost_e30"] == [f"dsconv_w0.74_lr0.4_e30_seed{s}" for s in (2, 3, 4)]


# --- the runner ------------------------------------------------------------------------------------


def test_the_processes_the_study_starts_find_this_checkout_first_and_keep_the_callers_pythonpath(monkeypatch):
    study = load_study()
    monkeypatch.setenv("PYTHONPATH", "/opt/site")
    env = study.thread_env(2)
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/opt/site"]
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("2", "2")
    monkeypatch.delenv("PYTHONPATH")
    assert study.thread_env()["PYTHONPATH"] == str(ROOT)


def _study_with_one_gpu_run_left(study, tmp_path):
    """The committed study restored under tmp_path/runs, every run finished but table4_w1's seed 2,
    and table4_w1's not evaluated yet."""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("lr_choice.json", "match_latency.json"):
        (results / name).write_text((study.RESULTS_DIR / name).read_text())
    runs_dir = tmp_path / "runs"
    assert study.restore(runs_dir) >= 55
    stages, _ = study.all_jobs(runs_dir)
    for job in (j for _, jobs in stages for j in jobs if j.state(runs_dir) != "finished"):
        job.run_dir(runs_dir).mkdir(parents=True, exist_ok=True)  # a run this test must not train
        (job.run_dir(runs_dir) / "metrics.json").write_text("{}")
    shutil.rmtree(runs_dir / "table4_w1" / "standard_w1_lr0.8_e30_seed2")
    for eval_dir in (runs_dir / "table4_w1").glob(f"*/{study.EVAL_DIR}"):  # as they came from the GPU machine
        shutil.rmtree(eval_dir)
    return runs_dir, results


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_runner_without_a_gpu_starts_no_gpu_run_and_says_which_are_left(tmp_path, capsys):
    study = load_study()
    runs_dir, results = _study_with_one_gpu_run_left(study, tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert study.main(["run", "--runs-dir", str(runs_dir), "--results-dir", str(results)]) == 0
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    out = capsys.readouterr().out
    assert "every stage finished, but for 1 runs that need a GPU (this machine has none): " \
           "table4_w1/standard_w1_lr0.8_e30_seed2" in out
    assert " start " not in out and not list(runs_dir.glob("*/*.pid"))
    # plan lists it without a CPU estimate
    assert study.main(["plan", "--runs-dir", str(runs_dir), "--results-dir", str(results)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "standard_w1_lr0.8_e30_seed2" in x)
    assert line.split()[2:] == ["todo", "0/30", "epochs", "(needs", "a", "GPU)"]


def test_a_gpu_run_without_its_checkpoint_gets_a_cost_only_eval_of_its_network_that_the_report_joins(
        tmp_path, monkeypatch):
    """The GPU sitting brings back no checkpoint of standard w1.0 (108 MiB): evaluate counts and
    times the same network with random weights into <run>/eval, and the report's row for the run
    has its eval's cost and latency with the seed, epochs and top-1 of its metrics.json."""
    from dsnet.report.discover import collect_runs

    study = load_study()
    runs_dir, results = _study_with_one_gpu_run_left(study, tmp_path)
    monkeypatch.setattr(study, "RESULTS_DIR", results)
    # a quick timing: the test checks what is joined, not how fast (standard w1.0 is ~1 s a batch of 64)
    monkeypatch.setattr(study, "EVAL_OVERRIDES", [*study.EVAL_OVERRIDES, "latency.rounds=1",
                                                  "latency.min_run_time=0.01", "latency.throughput_batch_size=1"])
    job = next(j for _, jobs in study.all_jobs(runs_dir)[0] for j in jobs if j.name == "standard_w1_lr0.8_e30_seed3")
    assert job.needs_gpu and job.state(runs_dir) == "finished" and study.best_checkpoint(job.run_dir(runs_dir)) is None
    assert study.evaluate(runs_dir, [job]) == 0
    trained = json.loads((job.run_dir(runs_dir) / "metrics.json").read_text())
    counted = json.loads((job.run_dir(runs_dir) / "eval" / "results.json").read_text())
    assert (counted["params"], counted["macs"], counted["ckpt_path"]) == (28_278_762, 365_632_000, None)
    assert counted["latency_ms_p50"] > 0 and counted["device"] == "cpu"
    runs, _ = collect_runs([results / "runs" / "table4_w1"])
    (run,) = runs
    assert run.values["top1"] == trained["test/acc"] and run.top1_source == "metrics.json"
    assert (run.values["seed"], run.values["epochs"], run.values["conv"], run.values["width"]) == (3, 30, "standard", 1.0)
    assert run.values["latency_ms_p50"] == counted["latency_ms_p50"]


def test_a_cost_only_eval_of_another_network_than_the_run_trained_is_a_failure_and_leaves_no_results(
        tmp_path, monkeypatch, capsys):
    study = load_study()
    runs_dir, results = _study_with_one_gpu_run_left(study, tmp_path)
    monkeypatch.setattr(study, "RESULTS_DIR", results)
    monkeypatch.setattr(study, "EVAL_OVERRIDES", [*study.EVAL_OVERRIDES, "latency.rounds=1", "latency.min_run_time=0.01",
                                                  "latency.throughput_batch_size=1", "model.width=0.25"])
    job = next(j for _, jobs in study.all_jobs(runs_dir)[0] for j in jobs if j.name == "standard_w1_lr0.8_e30_seed4")
    assert study.evaluate(runs_dir, [job]) == 1
    assert "eval.py's network has other params or MACs than" in capsys.readouterr().out
    assert not (job.run_dir(runs_dir) / "eval" / "results.json").exists()


@pytest.mark.slow  # two train.py processes: ~15 s idle, ~30 s beside the study's runs
def test_the_runner_trains_a_stage_two_at_a_time_and_records_each_sitting(tmp_path, monkeypatch):
    """Two real train.py processes at once; each run's CPU time lands in study_sessions.json and its
    small files in the results directory; a second pass over the finished stage starts nothing."""
    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(study, "SITTING_NOTE_S", 0.5)  # running notes too: the final record replaces them
    runs_dir = tmp_path / "runs"
    jobs = study.resolve([study.Job("smoke", ["experiment=converged", *TINY, "test=false", f"seed={seed}"], "dsconv")
                          for seed in (1, 2)])
    assert [j.name for j in jobs] == ["dsconv_w0.25_lr0.8_e1_seed1", "dsconv_w0.25_lr0.8_e1_seed2"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner = study.Runner(runs_dir, workers=2)
        start = time.time()
        assert runner.run_stage(jobs)
        assert runner.run_stage(jobs)  # finished: nothing starts again
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    sittings = [json.loads((j.run_dir(runs_dir) / "study_sessions.json").read_text()) for j in jobs]
    assert [[(x["exit"], x["cpu_s"] > 0, x["threads"]) for x in s] for s in sittings] == [[(0, True, 1)], [(0, True, 1)]]
    # the two ran side by side: each one's wall time is over half of the stage's
    assert all(s[0]["wall_s"] > (time.time() - start) / 2 for s in sittings)
    assert [j.state(runs_dir) for j in jobs] == ["finished", "finished"]
    assert not list(runs_dir.glob("smoke/*.pid")) and (runs_dir / "PIDS").read_text().startswith("pgid ")
    for job in jobs:
        copied = tmp_path / "results" / "runs" / "smoke" / job.name
        assert json.loads((copied / "metrics.json").read_text())["val/acc_best"] > 0
        assert (copied / "study_sessions.json").is_file() and list(copied.glob("csv/*/metrics.csv"))


def test_a_running_sittings_note_is_replaced_by_its_record_and_kept_when_cut_off(tmp_path):
    """The runner notes each running sitting every minute; a runner that dies with the machine
    leaves the last note (exit null) instead of nothing, and the next sitting comes after it."""
    study = load_study()

    def read() -> list[dict]:
        return json.loads((tmp_path / "study_sessions.json").read_text())

    first = time.time() - 100
    study.record_session(tmp_path, first, 50.0, None)
    study.record_session(tmp_path, first, 95.0, None)  # a later note of the same sitting
    assert [(x["cpu_s"], x["exit"]) for x in read()] == [(95.0, None)]
    study.record_session(tmp_path, first, 98.5, 0)  # the run's end: wait4's CPU time
    assert [(x["cpu_s"], x["exit"]) for x in read()] == [(98.5, 0)]
    second, third = time.time() - 50, time.time() - 10
    study.record_session(tmp_path, second, 20.0, None)  # cut off: no record follows
    study.record_session(tmp_path, third, 4.0, 143)  # the next sitting (SIGTERM)
    assert [(x["cpu_s"], x["exit"]) for x in read()] == [(98.5, 0), (20.0, None), (4.0, 143)]
    assert not list(tmp_path.glob("*.tmp"))


def test_process_cpu_counts_live_descendants_and_the_children_already_waited_for():
    """0.3 CPU-s in a child the process waited for, 0.5 in a grandchild still running; the machine's
    other processes (hours of training, say) must not count."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass\n"
    script = (f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {burn.format(0.3)!r}])\n"
              f"subprocess.Popen([sys.executable, '-c', {burn.format(0.5) + 'print(1, flush=True)' + chr(10) + 'time.sleep(60)'!r}])\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # the grandchild has burnt its 0.5 s
        cpu = load_study().process_cpu_s(proc.pid)
    finally:
        for child in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", child])
        proc.kill()
        proc.wait()
    # + three interpreters' start-up (~0.05-0.3 s each, more on a loaded machine)
    assert 0.8 <= cpu < 4.0, cpu
    assert load_study().process_cpu_s(proc.pid) == 0.0  # gone: nothing


def finished_run(run_dir, conv: str, width: float, epochs: int, walls: list[float], threads=None) -> None:
    """The files a finished run of the study leaves that the time estimates read (``threads`` per
    sitting; None: the key absent, as in sittings recorded before ``run --threads``)."""
    run_dir.mkdir(parents=True)
    OmegaConf.save({"model": {"conv": conv, "width": width}, "trainer": {"max_epochs": epochs}}, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text("{}")
    sittings = [{"start_utc": "2026-12-01T00:00:00Z", "wall_s": w, "cpu_s": w, "exit": 0} for w in walls]
    for sitting, n in zip(sittings, threads or []):
        sitting["threads"] = n
    (run_dir / "study_sessions.json").write_text(json.dumps(sittings))


def test_a_jobs_time_is_its_convolutions_measured_epoch_scaled_by_multiply_adds(tmp_path):
    """Median wall per epoch over finished runs of the same convolution (sittings summed), at the
    nearest measured width, times the job's epochs still to train, times its training MACs ratio;
    at a thread count no run of its convolution finished at, the 1-thread time over the count."""
    study = load_study()
    finished_run(tmp_path / "a" / "r1", "dsconv", 0.25, 15, [600.0])  # 40 s an epoch
    finished_run(tmp_path / "a" / "r2", "dsconv", 0.25, 30, [700.0, 800.0])  # 50 (two sittings)
    finished_run(tmp_path / "a" / "r3", "dsconv", 0.25, 10, [1000.0], threads=[1])  # 100
    finished_run(tmp_path / "a" / "r4", "standard", 1.0, 10, [3000.0])  # another convolution
    finished_run(tmp_path / "a" / "r6", "dsconv", 0.25, 10, [200.0], threads=[2])  # 20 at two threads
    finished_run(tmp_path / "a" / "r7", "dsconv", 0.25, 10, [300.0, 300.0], threads=[1, 2])  # mixed: left out
    (tmp_path / "a" / "r5").mkdir()  # unfinished: no metrics.json
    (tmp_path / "a" / "r5" / "study_sessions.json").write_text("[]")
    measured = study.measured_epoch_s(tmp_path)
    assert {key: sorted(v) for key, v in measured.items()} == {("dsconv", 0.25, 1): [40.0, 50.0, 100.0],
                                                               ("dsconv", 0.25, 2): [20.0],
                                                               ("standard", 1.0, 1): [300.0]}
    w025, w05 = study.resolve([study.Job("s", ["experiment=converged", "model=dsconv", f"model.width={w}"], "dsconv")
                               for w in (0.25, 0.5)])
    assert study.estimate_s(w025, tmp_path, measured) == 50.0 * 15
    ratio = study.train_macs("dsconv", 0.5) / study.train_macs("dsconv", 0.25)
    assert 3.0 < ratio < 4.0  # width 0.5 doubles every layer's channels: ~4x, less the fixed stem and head
    assert study.estimate_s(w05, tmp_path, measured) == pytest.approx(50.0 * 15 * ratio, rel=1e-12)
    assert study.estimate_s(w025, tmp_path, measured, threads=2) == 20.0 * 15
    # never measured at 4: the 1-thread median over 4 (linear scaling), until a 4-thread run finishes
    assert study.estimate_s(w025, tmp_path, measured, threads=4) == 50.0 * 15 / 4
    standard = study.resolve([study.Job("s", ["experiment=converged", "model=conv", "model.width=0.25"], "conv")])[0]
    assert study.estimate_s(standard, tmp_path, measured) == pytest.approx(
        300.0 * 15 * study.train_macs("standard", 0.25) / study.train_macs("standard", 1.0), rel=1e-12)
    assert study.estimate_s(standard, tmp_path, {("dsconv", 0.25, 1): [1.0]}) is None  # nothing to scale from
    assert study.estimate_s(standard, tmp_path, {("dsconv", 0.25, 2): [1.0]}, threads=2) is None


def test_finish_by_starts_no_run_that_would_end_after_it(tmp_path, capsys):
    """A sitting of known length (a machine lent for three hours, an allocation's time limit):
    a run whose estimate ends after --finish-by is skipped with a line saying why, not started."""
    study = load_study()
    runs_dir = tmp_path / "runs"
    finished_run(runs_dir / "done" / "ref", "dsconv", 0.25, 15, [15 * 60.0])  # a minute an epoch
    job = study.resolve([study.Job("next", ["experiment=converged", "model=dsconv", "seed=2"], "dsconv")])[0]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner = study.Runner(runs_dir, workers=1, finish_by=time.time() + 10 * 60)  # 15 min needed, 10 left
        assert not runner.run_stage([job])
        assert study.Runner(runs_dir, workers=1, finish_by=time.time() + 17 * 60).fits(job)  # 15 x 1.1 < 17
        assert not study.Runner(runs_dir, workers=1, finish_by=time.time() + 16 * 60).fits(job)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert job.state(runs_dir) == "todo" and not (runs_dir / "next").exists()
    out = capsys.readouterr().out
    assert f"skip next/{job.name}: needs ~15 min, 10 min left before --finish-by" in out, out
    assert out.count("skip ") == 2  # the run and the 16-min check


@pytest.mark.parametrize("flag, value, allowed", [
    *(("--finish-by", v, "is not a time of day HH:MM (UTC), e.g. 03:45") for v in ("25:00", "3h", "03:60")),
    *((flag, v, "is not a whole number of at least 1") for flag, v in (("--threads", "0"), ("--workers", "-1"),
                                                                       ("--threads", "two"))),
])
def test_a_bad_run_option_is_a_one_line_error(flag, value, allowed):
    result = subprocess.run([sys.executable, "scripts/study.py", "run", flag, value, "--runs-dir", "/nonexistent/x"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 2
    assert result.stdout.strip().splitlines()[-1] == f"study.py: error: argument {flag}: {value!r} {allowed}"
    assert not Path("/nonexistent/x").exists()


def test_log_lines_from_the_workers_threads_never_run_into_each_other(tmp_path):
    """Two jobs ending together log from two threads (sitting 11's study.log had "partial[study
    15:24:58] end ..."): into a file, as the runner's nohup log, every line stays whole."""
    script = (
        "import sys, threading\n"
        "sys.path.insert(0, 'scripts')\n"
        "import study\n"
        "sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows\n"
        "threads = [threading.Thread(target=lambda i=i: [study.log(f'worker {i} line {n}') for n in range(2000)])\n"
        "           for i in range(4)]\n"
        "[thread.start() for thread in threads]\n"
        "[thread.join() for thread in threads]\n"
    )
    log_file = tmp_path / "study.log"
    with log_file.open("w") as out:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    lines = log_file.read_text().splitlines()
    broken = [line for line in lines if not re.fullmatch(r"\[study \d\d:\d\d:\d\d\] worker \d line \d+", line)]
    assert not broken, broken[:3]  # the unlocked log(): 1,383 of 8,000 broken (2-core EPYC, 2026-12-03)
    assert len(lines) == 4 * 2000


def test_a_signal_that_comes_while_the_main_thread_logs_is_logged_without_a_hang():
    """The runner's SIGTERM handler logs; the signal may come while the main thread is inside log()."""
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, 'scripts')\n"
        "import study\n"
        "signal.signal(signal.SIGTERM, lambda *_: study.log('SIGTERM'))\n"
        "with study._LOG_LOCK:  # as log() holds it\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in this thread\n"
        "study.log('after')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=120)  # a plain Lock: hangs here
    assert result.returncode == 0, result.stdout
    assert [line.split("] ", 1)[1] for line in result.stdout.splitlines()] == ["SIGTERM", "after"]


def test_finish_by_is_the_next_such_time_of_day():
    study = load_study()
    at = study.finish_by_time("00:00")
    assert 0 < at - time.time() <= 86400 and at % 86400 == 0


@pytest.mark.slow  # one train.py and one eval.py process: ~25 s
def test_evaluate_pauses_the_study_measures_each_finished_run_once_and_the_copy_reports_joined(tmp_path, monkeypatch):
    """evaluate: eval.py on the best checkpoint into <run>/eval, its top-1 the training's own, the
    study's process group stopped meanwhile and running again after; the collected copy (no
    checkpoints) still joins eval and run in the report."""
    from dsnet.report import build_report

    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path / "results")
    runs_dir = tmp_path / "runs"
    jobs = study.resolve([study.Job("smoke", ["experiment=converged", *TINY, "seed=1"], "dsconv")])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert study.Runner(runs_dir, workers=1).run_stage(jobs)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    # a stand-in for the study's runner: its own process group, a timestamp every 50 ms
    ticks = tmp_path / "ticks"
    ticker = subprocess.Popen([sys.executable, "-c", "import time\nwhile True:\n"
                               f" open({str(ticks)!r}, 'a').write(f'{{time.time()}}\\n'); time.sleep(0.05)"],
                              start_new_session=True)
    try:
        while not ticks.is_file():
            time.sleep(0.05)
        (runs_dir / "PIDS").write_text(f"pgid {ticker.pid}\nrunner {ticker.pid}\n")
        start = time.time()
        assert study.evaluate(runs_dir, jobs) == 0
        took = time.time() - start
        time.sleep(0.5)
        stamps = [float(t) for t in ticks.read_text().split()]
    finally:
        ticker.kill()
        ticker.wait()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) > took - 1.0 > 4.0  # stopped for all of the evaluation (eval.py takes > 5 s)
    assert stamps[-1] > start + took  # and ticking again afterwards
    run = jobs[0].run_dir(runs_dir)
    result = json.loads((run / "eval" / "results.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["top1"] == metrics["test/acc"] and result["ckpt_path"].startswith(str(run / "checkpoints" / "best"))
    assert (result["num_threads"], result["precision"], result["conv"], result["width"]) == (1, "fp32", "dsconv", 0.25)
    assert result["latency_ms_p50"] > 0
    mtime = (run / "eval" / "results.json").stat().st_mtime
    assert study.evaluate(runs_dir, jobs) == 0 and (run / "eval" / "results.json").stat().st_mtime == mtime  # once
    copied = tmp_path / "results" / "runs" / "smoke" / jobs[0].name
    assert json.loads((copied / "eval" / "results.json").read_text()) == result
    summary = build_report([tmp_path / "results" / "runs"], tmp_path / "report")
    assert (summary.n_runs, summary.missing) == (1, [])
    (row,) = read_csv(tmp_path / "report" / "runs.csv")
    assert (row["train_dir"], row["top1_source"]) == (str(copied.resolve()), "results.json")
    assert float(row["val_acc_best"]) == metrics["val/acc_best"] and row["epochs"] == "1"
    # study.py report: the same, from the collected runs into the results directory (no search: one
    # report), with the study's latency-match record listed under its equal-cost table
    record = {"width": 0.5, "cost": 2.777, "target": 2.897, "target_conv": "standard", "target_width": 0.25,
              "conv": "dsconv", "cost_name": "latency", "arch": "mobilenet_v1", **study.FMNIST,
              "environment": {"device_name": "AMD EPYC", "num_threads": 1}}
    (tmp_path / "results" / "match_latency.json").write_text(json.dumps(record))
    assert study.report() == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["match_latency.json", "report", "runs"]
    assert "- `" + str(tmp_path / "results" / "match_latency.json") + "`: standard w0.25 2.897 ms, dsconv w0.5 " \
        "2.777 ms, timed in one process on AMD EPYC" in (tmp_path / "results" / "report" / "equal_cost.md").read_text()
    assert read_csv(tmp_path / "results" / "report" / "runs.csv")[0]["latency_ms_p50"] == row["latency_ms_p50"]


def test_report_without_collected_runs_is_a_one_line_error(tmp_path, monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path / "results")
    with pytest.raises(SystemExit, match=r"^study.py: error: no collected runs under .*/results/runs \(python scripts/study.py collect\)$"):
        study.report()
    assert not (tmp_path / "results").exists()
