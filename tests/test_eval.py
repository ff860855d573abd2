"""The evaluation task: results.json from the real configs, the accuracy round trip with training,
and bad checkpoints refused before anything is written."""

import json
import re
import time
import shutil
import sys
from pathlib import Path

import pytest
import torch
import entrypoints
from conftest import TINY, compose_train, read_csv

from dsnet.evaluate import EvalInputError, evaluate, time_network
from dsnet.models.cost import count_macs, count_params, count_train_macs, macs_breakdown, model_cost
from dsnet.models import create_model
from dsnet.report import build_report
from dsnet.results import RESULT_KEYS, load_results
from dsnet.task import train

FAST_LATENCY = ("latency.rounds=1", "latency.min_run_time=0.01", "latency.throughput_batch_size=2",
                "latency.contention.retries=0", "latency.contention.probe_s=0")  # flag, never wait
QUIET = ("+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


def eval_cfg(run_dir: Path, *overrides: str):
    """configs/eval.yaml on conftest's tiny data (that of ``trained_run``), timed briefly."""
    return compose_train(*QUIET, *FAST_LATENCY, *overrides, run_dir=run_dir, config_name="eval")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny training run: its directory, metrics.json contents and best checkpoint."""
    run_dir = tmp_path_factory.mktemp("train")
    cfg = compose_train(*QUIET, "~callbacks.progress_bar", "~callbacks.model_summary", run_dir=run_dir)
    metrics, objects = train(cfg)
    return run_dir, metrics, Path(objects["trainer"].checkpoint_callback.best_model_path)


# --- cost only -------------------------------------------------------------------------------------

def test_cost_only_eval_writes_valid_results_with_exact_counts(tmp_path):
    out = tmp_path / "eval"
    cfg = compose_train("model=group", "model.width=0.25", "data.image_size=16", *FAST_LATENCY,
                        run_dir=out, config_name="eval", tiny=False)
    results, objects = evaluate(cfg)

    record = load_results(out / "results.json")  # validates against the schema
    assert record.to_dict() == results and tuple(results) == RESULT_KEYS
    # The counts of the same network built by hand, not through the config.
    net = create_model("mobilenet_v1", conv="group", groups=2, width=0.25, num_classes=10, in_chans=1,
                       small_input=True)
    size = (1, 16, 16)
    assert (record.params, record.macs, record.train_macs) == (
        count_params(net), count_macs(net, size), count_train_macs(net, size))
    assert record.macs_breakdown == macs_breakdown(net, size)
    assert record.macs_breakdown["grouped"]["macs"] > 0 and record.macs_breakdown["depthwise"]["macs"] == 0
    assert (record.arch, record.conv, record.width, record.groups) == ("mobilenet_v1", "group", 0.25, 2)
    assert (record.dataset, record.image_size, record.in_chans, record.num_classes) == ("Fashion-MNIST", 16, 1, 10)
    assert record.top1 is record.top5 is record.seed is record.ckpt_path is None
    assert (record.batch_size, record.latency_batch_size, record.device, record.num_threads) == (2, 1, "cpu", 1)
    assert 0 < record.latency_ms_p50 <= record.latency_ms_p90 and record.throughput_img_s > 0
    assert 0.0 <= record.cpu_contention <= 1.0  # measured on Linux (/proc/stat)
    assert record.run_dir == str(out.resolve())
    # Cost only never builds or downloads the data set.
    assert "datamodule" not in objects and not (out / "data").exists()


def load_results_from(tmp_path, results: dict):
    (tmp_path / "new.json").write_text(json.dumps(results))
    return load_results(tmp_path / "new.json")


def test_results_keys_added_by_eval_are_optional_on_read_and_range_checked(tmp_path):
    results = dict(
        arch="mobilenet_v1", conv="dsconv", width=0.5, groups=None, image_size=224, in_chans=1,
        num_classes=10, dataset="Fashion-MNIST", seed=None, params=823_018, macs=145_380_000,
        train_macs=434_330_000, macs_breakdown={}, top1=None, top5=None, latency_ms_p50=7.5,
        latency_ms_p90=9.1, latency_ms_iqr=1.0, throughput_img_s=80.0, batch_size=64, device="cpu",
        device_name="AMD EPYC", precision="fp32", channels_last=False, num_threads=1, torch="2.14.1",
        git_rev="2b4cca2", ckpt_path=None, run_dir="/runs/eval", schema_version=1,
        latency_batch_size=1, cpu_contention=0.02, runtime="onnxruntime", runtime_version="1.32.0",
        allocator="keep_freed", contention_flagged=True, activations=1_000, memory_traffic_bytes=9_000,
        hparams={"lr": 0.4, "lr_trials": 6, "lr_grid": "0.025,0.8", "depthwise_weight_decay": None},
        latency_ms_p50_median=7.8, latency_ms_p50_low=7.5, latency_ms_p50_high=8.4, latency_ms_p50_coverage=0.9375,
        deploy=True,
    )
    assert tuple(results) == RESULT_KEYS
    added = ("latency_batch_size", "cpu_contention", "runtime", "runtime_version", "allocator",
             "contention_flagged", "activations", "memory_traffic_bytes", "hparams", "latency_ms_p50_median",
             "latency_ms_p50_low", "latency_ms_p50_high", "latency_ms_p50_coverage", "deploy")
    older = {k: v for k, v in results.items() if k not in added}
    (tmp_path / "old.json").write_text(json.dumps(older))
    record = load_results(tmp_path / "old.json")  # a file written before these keys existed
    assert (record.latency_batch_size, record.cpu_contention) == (1, None)
    assert (record.runtime, record.runtime_version, record.allocator, record.contention_flagged) == (
        "eager", None, None, False)
    assert record.hparams is None and record.latency_ms_p50_low is record.latency_ms_p50_coverage is None
    assert record.deploy is None  # older files do not say which form was timed
    assert load_results_from(tmp_path, results).runtime == "onnxruntime"
    assert load_results_from(tmp_path, results).hparams["lr_trials"] == 6
    with pytest.raises(TypeError, match="key 'hparams': expected dict"):
        load_results_from(tmp_path, {**results, "hparams": {"lr": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="key 'runtime': expected one of eager, compile, onnxruntime, openvino"):
        load_results_from(tmp_path, {**results, "runtime": "tensorrt"})
    (tmp_path / "bad.json").write_text(json.dumps({**results, "cpu_contention": 1.5}))
    with pytest.raises(ValueError, match="key 'cpu_contention': expected a fraction in"):
        load_results(tmp_path / "bad.json")


@pytest.mark.parametrize("override, message", [
    ("latency.precision=fp16", "precision='fp16' is only supported on cuda"),
    ("latency.rounds=0", "latency.rounds=0 must be a positive integer"),
    ("latency.round_gap_s=-1", "latency.round_gap_s=-1 must be a finite number of seconds >= 0"),
])
def test_bad_latency_setting_is_refused_before_writing(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        evaluate(eval_cfg(tmp_path, override))
    assert not (tmp_path / "results.json").exists()


def test_rounds_are_spread_by_the_gap_asked():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    start = time.perf_counter()
    timing = time_network(net, (1, 8, 8), rounds=3, round_gap_s=0.25, min_run_time=0.01, throughput_batch_size=2,
                          contention={"retries": 0, "probe_s": 0.01})
    assert time.perf_counter() - start >= 0.5 and len(timing["round_p50s_ms"]) == 3  # two gaps between three rounds


def test_rounds_report_the_best_round():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    timing = time_network(net, (1, 8, 8), rounds=3, min_run_time=0.01, throughput_batch_size=2)
    p50s = timing["round_p50s_ms"]
    assert len(p50s) == 3 and timing["latency_ms_p50"] == min(p50s)
    assert timing["latency_ms_p50"] <= timing["latency_ms_p90"]  # both from the best round
    assert timing["throughput_batch_size"] == 2 and timing["throughput_img_s"] > 0  # the last round's
    assert timing["cpu_busy_other"] is None or 0.0 <= timing["cpu_busy_other"] <= 1.0
    assert timing["runtime"] == "eager" and timing["contention_retries"] <= 2
    # The median of the 3 rounds and its order-statistic interval: [min, max] at 75 % coverage.
    assert (timing["latency_ms_p50_median"], timing["latency_ms_p50_low"], timing["latency_ms_p50_high"],
            timing["latency_ms_p50_coverage"]) == (sorted(p50s)[1], min(p50s), max(p50s), 0.75)


# --- with a checkpoint -----------------------------------------------------------------------------

def test_eval_reproduces_the_training_test_accuracy_exactly(trained_run, tmp_path):
    run_dir, metrics, best = trained_run
    # model=conv must be ignored: the network comes from the training run's config.
    results, objects = evaluate(eval_cfg(tmp_path, f"ckpt_path={best}", "model=conv"))

    assert results["top1"] == metrics["test/acc"] and results["top5"] == metrics["test/acc5"]
    assert (results["conv"], results["width"], results["seed"]) == ("dsconv", 0.25, 42)
    assert (results["params"], results["macs"]) == (metrics["params"], metrics["macs"])
    assert results["ckpt_path"] == str(best) and results["dataset"] == "synthetic"
    assert results["hparams"] is None  # its config has no hparams node: no search chose anything
    assert load_results(tmp_path / "results.json").top1 == metrics["test/acc"]
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    for name, value in objects["net"].state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["net." + name]), name


def test_a_tuned_runs_hyperparameter_choice_goes_into_results_json_and_the_report(tmp_path):
    train_dir = tmp_path / "train"
    cfg = compose_train("experiment=converged", *TINY, *QUIET, "~callbacks.progress_bar", "~callbacks.model_summary",
                        "optim.optimizer.lr=0.4", "hparams.lr_trials=6",
                        "hparams.lr_grid='0.025,0.05,0.1,0.2,0.4,0.8'", run_dir=train_dir, tiny=False)
    _, objects = train(cfg)
    results, _ = evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={objects['trainer'].checkpoint_callback.best_model_path}"))
    assert results["hparams"] == {"lr": 0.4, "weight_decay": 5e-5, "depthwise_weight_decay": None, "lr_trials": 6,
                                  "lr_grid": "0.025,0.05,0.1,0.2,0.4,0.8", "lr_selected_on": "val/acc_best"}
    # results.json alone (its training run not shipped beside it): the report still shows the choice
    shutil.rmtree(train_dir)
    build_report([tmp_path / "eval"], tmp_path / "report")
    (row,) = read_csv(tmp_path / "report" / "results.csv")
    assert (row["hparams/lr_trials"], row["hparams/lr_grid"]) == ("6", "0.025,0.05,0.1,0.2,0.4,0.8")


def test_data_of_another_shape_than_the_trained_network_is_refused(trained_run, tmp_path):
    _, _, best = trained_run
    with pytest.raises(EvalInputError, match=r"image_size=24.*trained with .*image_size=16.*data\.image_size=16"):
        evaluate(eval_cfg(tmp_path, f"ckpt_path={best}", "data.image_size=24"))
    assert not (tmp_path / "results.json").exists()


def fake_run(root: Path, trained_run, state: dict) -> Path:
    """A run directory with the trained run's config and a checkpoint holding ``state``."""
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run[0] / "config.yaml", root / "config.yaml")
    path = root / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 0}, path)
    return path


def test_ema_weights_are_preferred_over_the_raw_ones(trained_run, tmp_path):
    # Lightning's EMAWeightAveraging saves the averaged weights as state_dict, the raw ones beside.
    ckpt = torch.load(trained_run[2], map_location="cpu", weights_only=True)
    raw = {k: v + 1.0 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    path = fake_run(tmp_path / "train", trained_run, ckpt["state_dict"])
    torch.save({"state_dict": ckpt["state_dict"], "current_model_state": raw, "averaging_state": {}}, path)
    _, objects = evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={path}", "latency.throughput_batch_size=1"))
    weight = objects["net"].stem.conv.weight
    assert torch.equal(weight, ckpt["state_dict"]["net.stem.conv.weight"])
    assert not torch.equal(weight, raw["net.stem.conv.weight"])


@pytest.mark.parametrize("arch, conv, message", [
    ("mobilenet_v1", "standard", r"missing \(\d+\): features\.0\.conv_dw\.weight, .*, \.\.\.; "
                                 r"unexpected \(\d+\): features\.0\.conv\.weight"),
    ("mobilenet_v2", "dsconv", r"missing \(\d+\): .*; unexpected \(\d+\): "),
])
def test_checkpoint_of_another_architecture_lists_mismatched_keys(trained_run, tmp_path, arch, conv, message):
    other = create_model(arch, conv=conv, width=0.25, num_classes=10, in_chans=3, small_input=True)
    ckpt = fake_run(tmp_path / "train", trained_run, {"net." + k: v for k, v in other.state_dict().items()})
    with pytest.raises(EvalInputError, match=message) as err:
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={ckpt}"))
    assert "\n" not in str(err.value) and "does not fit the MobileNetV1" in str(err.value)
    assert not (tmp_path / "eval").exists()


def _truncated(path: Path, best: Path) -> None:
    path.write_bytes(best.read_bytes()[: best.stat().st_size // 2])


@pytest.mark.parametrize("make, message", [
    (None, "no such file"),
    (_truncated, "not a readable PyTorch checkpoint"),
    (lambda path, best: path.write_text("epoch,acc\n0,0.5\n"), "not a readable PyTorch checkpoint"),
    (lambda path, best: torch.save({"net.weight": torch.zeros(2)}, path), "not a Lightning checkpoint"),
    (lambda path, best: torch.save([1, 2], path), "not a Lightning checkpoint"),
    (lambda path, best: torch.save({"state_dict": {"model.fc.weight": torch.zeros(2)}}, path),
     r"no network weights \(keys net\.\*\) in its state_dict; found \(1\): model\.fc\.weight"),
])
def test_unusable_checkpoint_file_is_a_one_line_error(trained_run, tmp_path, make, message):
    path = tmp_path / "train" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    shutil.copy(trained_run[0] / "config.yaml", tmp_path / "train" / "config.yaml")
    if make is not None:
        make(path, trained_run[2])
    with pytest.raises(EvalInputError, match=message) as err:
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={path}"))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "eval").exists()


def test_checkpoint_without_a_training_config_is_refused(trained_run, tmp_path):
    ckpt = tmp_path / "copied.ckpt"
    shutil.copy(trained_run[2], ckpt)
    with pytest.raises(EvalInputError, match=r"no training config found .*config\.yaml and .*\.hydra/config\.yaml"):
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={ckpt}"))
    assert not (tmp_path / "eval").exists()


# --- the command line ----------------------------------------------------------------------------

def run_cli(*args: str) -> entrypoints.Result:
    return entrypoints.run("eval.py", *args, timeout=120)


def test_cli_cost_only_run_writes_results(tmp_path):
    proc = run_cli("data=synthetic", "data.image_size=16", "model.width=0.25", *FAST_LATENCY,
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["image_size"] == 16 and results["macs"] > 0 and results["top1"] is None
    assert "params" in proc.output and "latency p50" in proc.output  # the human summary
    # One round: its p50 is the median, and an interval of no width holds the true one with probability 0.
    assert re.search(r"p50 median of rounds \[CI\] +│ +([0-9.]+) \[\1, \1\] ms \(0.0 %\)", proc.output)
    assert results["latency_ms_p50_low"] == results["latency_ms_p50_median"] == results["latency_ms_p50_high"]
    # eval.py sets the allocator for its process (configs/eval.yaml: keep_freed) and records it.
    assert (results["allocator"], results["runtime"]) == ("keep_freed", "eager")
    assert results["runtime_version"] == torch.__version__ and isinstance(results["contention_flagged"], bool)
    # The deploy form is timed by default (configs/eval.yaml: latency.deploy), and the table says so.
    assert results["deploy"] is True and "deploy form (batch norm folded)" in proc.output


def test_cli_bad_checkpoint_exits_nonzero_with_one_line(tmp_path):
    missing = tmp_path / "nope.ckpt"
    proc = run_cli(f"ckpt_path={missing}", *FAST_LATENCY, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert proc.lines == [f"eval.py: error: ckpt_path='{missing}': no such file ({missing})"]
    assert not (tmp_path / "run" / "results.json").exists()


def _other_architecture(path: Path, trained_run) -> None:
    other = create_model("mobilenet_v1", conv="standard", width=0.25, num_classes=10, in_chans=3, small_input=True)
    torch.save({"state_dict": {"net." + k: v for k, v in other.state_dict().items()}}, path)


@pytest.mark.parametrize("make, message", [
    (lambda path, run: _truncated(path, run[2]), "not a readable PyTorch checkpoint (truncated or another format?)"),
    (lambda path, run: path.write_text("epoch,acc\n0,0.5\n"), "not a readable PyTorch checkpoint"),
    (_other_architecture, "does not fit the MobileNetV1 of its training config: missing ("),
], ids=["truncated", "not a checkpoint", "another architecture"])
def test_cli_unusable_checkpoint_exits_1_with_one_line_and_writes_nothing(trained_run, tmp_path, make, message):
    path = tmp_path / "train" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    shutil.copy(trained_run[0] / "config.yaml", tmp_path / "train" / "config.yaml")
    make(path, trained_run)
    data = [o for o in TINY if o.startswith("data")]  # the data the trained run's network was built for
    proc = run_cli(f"ckpt_path={path}", *data, *FAST_LATENCY, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    lines = proc.lines
    assert len(lines) == 1 and lines[0].startswith(f"eval.py: error: {path}: ") and message in lines[0], proc.output
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_runtime_whose_package_is_missing_is_one_line_error_and_no_results(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does for a package not installed
    with pytest.raises(EvalInputError) as err:
        evaluate(eval_cfg(tmp_path, "latency.runtime=openvino"))
    assert str(err.value) == "latency.runtime=openvino needs the openvino package: pip install openvino"
    assert not (tmp_path / "results.json").exists()


def test_cost_only_eval_records_activations_and_memory_traffic(tmp_path):
    results, objects = evaluate(eval_cfg(tmp_path))
    cost = model_cost(objects["net"], (results["in_chans"], 16, 16))  # conftest's tiny data: 16 px
    assert (results["activations"], results["memory_traffic_bytes"]) == (cost["activations"], cost["memory_traffic_bytes"])
    assert (results["runtime"], results["runtime_version"]) == ("eager", torch.__version__)
    assert results["contention_flagged"] in (True, False) and results["allocator"] in ("system", "keep_freed")
