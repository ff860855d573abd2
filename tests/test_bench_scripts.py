"""Smoke runs of the benchmark scripts at minimal sizes (synthetic data, a few batches).

They check that each script runs end to end on the real configs, prints its ratio lines and the
environment, and that the ratios it prints are the ones its raw numbers give. No timing is
asserted: the machine the tests run on is shared, so any speed threshold would be flaky.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import entrypoints
from conftest import ROOT

# The synthetic data set keeps the runs offline and short: 256 training images of 16 px.
SYNTHETIC = ("data=synthetic", "data.image_size=16", "data.num_train=320", "data.val_size=64",
             "data.num_test=32", "data.batch_size=32")


def run_script(name: str, *args: str, cwd) -> str:
    """What ``python scripts/<name> *args`` shows on a terminal: stdout and stderr together."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def ratio_lines(out: str) -> dict[str, float]:
    """``ratio <name>: <number>`` lines -> {name: number}."""
    return {name: float(value) for name, value in re.findall(r"^ratio (\S+): ([0-9.]+)", out, re.M)}


def test_bench_data_prints_both_ratios_from_its_rates(tmp_path):
    out = run_script("bench_data.py", "--threads", "1", "--repeats", "2", "--memory-batches", "2",
                     "--torchvision-batches", "2", "--train-steps", "1", "--warmup", "1",
                     "--json", str(tmp_path / "raw.json"), *SYNTHETIC, cwd=tmp_path)
    ratios = ratio_lines(out)
    assert set(ratios) == {"data/train", "memory/torchvision"}
    assert "target >= 20x" in out and "target >= 3x" in out
    assert "num_threads=1" in out and "torch=" in out and "load average" in out
    raw = json.loads((tmp_path / "raw.json").read_text())
    rates = raw["images_per_s"]
    assert all(len(rates[path]) == 2 and min(rates[path]) > 0 for path in ("memory", "torchvision", "train"))
    per_round = [m / t for m, t in zip(rates["memory"], rates["train"])]
    assert raw["ratio_data_over_train"] == pytest.approx(per_round)
    # The printed ratio is the median over rounds (of two rounds: their mean), to one decimal.
    assert ratios["data/train"] == pytest.approx(sum(per_round) / 2, abs=0.051)


def test_bench_train_prints_ratio_and_overhead_per_step(tmp_path):
    out = run_script("bench_train.py", "--threads", "1", "--steps", "3", "--val-batches", "1", "--repeats", "1",
                     "--json", str(tmp_path / "raw.json"), *SYNTHETIC, cwd=tmp_path)
    assert set(ratio_lines(out)) == {"dsnet/plain"}
    assert re.search(r"^overhead per step: -?[0-9.]+ .* ms from wall epoch, .* ms from CPU epoch; target <= 1 ms$",
                     out, re.M)
    assert "plain PyTorch loop" in out and "dsnet train() (Lightning)" in out and "num_threads=1" in out
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["steps"] == 3
    # Both sides: one clock read at the epoch's start and one per step of the timed epoch.
    assert [len(s) for side in ("plain", "dsnet") for s in raw["stamps_wall_cpu_s"][side]] == [4, 4]
    walls = raw["epoch_wall_s"]
    assert raw["ratio"]["wall"] == pytest.approx([walls["dsnet"][0] / walls["plain"][0]])
    assert not list(tmp_path.glob("outputs")), "the dsnet runs must write into temporary directories"


def test_bench_deploy_prints_each_forms_p50_and_their_ratio(tmp_path):
    rows_file = tmp_path / "rows.json"
    out = run_script("bench_deploy.py", "--networks", "mobilenet_v1 dsconv", "--runtimes", "eager",
                     "--threads", "1", "--rounds", "3", "--min-run-time", "0.02", "--retries", "0",
                     "--json", str(rows_file), cwd=tmp_path)
    # The environment is the first JSON line (a library's warning on stderr may come before it).
    assert json.loads(next(line for line in out.splitlines() if line.startswith("{")))["torch"]
    [row] = json.loads(rows_file.read_text())
    assert (row["network"], row["runtime"], row["threads"], row["rounds"]) == ("mobilenet_v1 dsconv", "eager", 1, 6)
    assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]
    line = next(line for line in out.splitlines() if line.startswith("mobilenet_v1 dsconv"))
    assert f"{row['training_ms']:.2f}" in line and f"{row['deploy_ms']:.2f}" in line and f"{row['speedup']:.2f}x" in line


def test_latency_agreement_judges_each_pair_by_its_intervals(tmp_path):
    rows_file = tmp_path / "pairs.json"
    result = entrypoints.run("scripts/latency_agreement.py", "--pairs", "1", "--json", str(rows_file), "--",
                             "data=synthetic", "data.image_size=16", "latency.rounds=3",
                             "latency.min_run_time=0.02", "latency.contention.retries=0", cwd=tmp_path)
    out = result.output  # what the terminal shows: stdout and stderr together
    assert result.returncode == 0, out[-4000:]
    # 3 rounds state [min, max]: the chances with nothing changed, 18/20 and 8/20 (dsnet.intervals)
    assert "(3 values): intervals overlap with p = 0.900, medians inside with p = 0.400 per pair" in out
    [pair] = json.loads(rows_file.read_text())["pairs"]
    a, b = pair["runs"]
    assert a["rounds"] == b["rounds"] == 3
    disjoint = a["latency_ms_p50_high"] < b["latency_ms_p50_low"] or b["latency_ms_p50_high"] < a["latency_ms_p50_low"]
    assert pair["agree"] is not disjoint
    verdict = "intervals overlap" if pair["agree"] else "intervals DISJOINT"
    assert re.search(rf"^pair 1: best rounds differ by [0-9.]+ %, medians by [0-9.]+ %: {verdict}", out, re.M)
    assert re.search(rf"^agreeing pairs \(intervals overlap\): {int(pair['agree'])}/1, longest streak "
                     rf"{int(pair['agree'])}; medians inside: {int(pair['medians_inside'])}/1", out, re.M)
