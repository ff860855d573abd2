"""Inference runtimes (dsnet.runtimes) and contention-aware timing (dsnet.contention)."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import entrypoints
from conftest import ROOT
from dsnet.contention import ContentionPolicy, guarded
from dsnet.models import create_model
from dsnet.runtimes import RuntimeMismatchError, RuntimeUnavailableError, create_runtime
from dsnet.runtimes.base import check_against_eager
from dsnet.runtimes.eager import Eager

FAST = dict(rounds=1, min_run_time=0.02, throughput_batch_size=3, num_threads=1,
            contention={"retries": 0, "probe_s": 0})


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_exported_runtime_matches_eager_and_is_timed(name, tmp_path):
    # Through eval.py, in a process of its own: the runtime's native library lives and dies with it.
    package = pytest.importorskip(name)
    result = entrypoints.run("eval.py", "model.width=0.25", "data=synthetic", "data.image_size=32",
                             f"latency.runtime={name}", "latency.rounds=1", "latency.min_run_time=0.02",
                             "latency.throughput_batch_size=3", "latency.contention.retries=0",
                             "latency.contention.probe_s=0", f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.output[-3000:]
    timing = json.loads((tmp_path / "results.json").read_text())
    assert (timing["runtime"], timing["runtime_version"]) == (name, package.__version__)
    assert 0 < timing["latency_ms_p50"] <= timing["latency_ms_p90"] and timing["throughput_img_s"] > 0
    assert timing["batch_size"] == 3


def test_check_against_eager_is_relative_to_the_logit_scale():
    reference = torch.tensor([[2.0, -4.0]])
    # Differences of 2**-12 and 2**-10 are exact in fp32 at these magnitudes: errors 2**-14 and 2**-12.
    assert check_against_eager("x", reference + torch.tensor([[0.0, 2**-12]]), reference, "fp32") == 2**-14
    with pytest.raises(RuntimeMismatchError, match=r"runtime=x: output differs from eager PyTorch by 2\.44e-04 of "
                                                   r"the logits' scale \(4\) on the timing input; allowed at fp32: 0\.0001"):
        check_against_eager("x", reference + torch.tensor([[2**-10, 0.0]]), reference, "fp32")
    with pytest.raises(RuntimeMismatchError, match="differs"):
        check_against_eager("x", torch.full((1, 2), float("nan")), reference, "fp32")


def test_a_wrong_conversion_is_refused_before_timing(tiny_net):
    other = create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True).eval()

    class Swapped(Eager):  # a runtime that runs some other network than the one it was given
        name = "swapped"

        def _prepare(self, x):
            return lambda: other(x)

    with pytest.raises(RuntimeMismatchError, match="runtime=swapped: output differs from eager"):
        Swapped(tiny_net.eval()).forward_for(torch.randn(1, 3, 32, 32))
    tiny_net.train()


@pytest.mark.parametrize("name, settings, message", [
    ("onnxruntime", {"precision": "bf16"}, "runtime=onnxruntime times precision fp32, not precision=bf16"),
    ("openvino", {"channels_last": True}, "runtime=openvino chooses its own memory layout"),
    ("tensorrt", {}, "runtime='tensorrt'; expected one of eager, compile, onnxruntime, openvino"),
])
def test_settings_a_runtime_cannot_run_are_refused(tiny_net, name, settings, message):
    with pytest.raises(ValueError, match=message):  # whether or not the runtime is installed here
        create_runtime(name, tiny_net, **settings)


def test_a_runtime_whose_package_is_missing_says_how_to_install_it(tiny_net, monkeypatch):
    from dsnet.runtimes.ov import OpenVino

    monkeypatch.setattr(OpenVino, "package", "dsnet_no_such_package")  # imported for real: it fails
    with pytest.raises(RuntimeUnavailableError) as err:
        create_runtime("openvino", tiny_net)
    assert str(err.value) == ("runtime=openvino needs the dsnet_no_such_package package: "
                              "pip install dsnet_no_such_package")
    with pytest.raises(RuntimeUnavailableError, match="chooses its own memory layout"):
        create_runtime("openvino", tiny_net, channels_last=True)  # the setting is named first


def test_results_schema_knows_every_runtime():
    from dsnet import results, runtimes

    assert results.RUNTIMES == tuple(runtimes.RUNTIMES)  # results.py spells them out to stay torch-free


def test_a_missing_package_names_it_and_how_to_install_it(tiny_net, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeUnavailableError) as err:
        create_runtime("onnxruntime", tiny_net)
    assert str(err.value) == "runtime=onnxruntime needs the onnxruntime package: pip install onnxruntime"


# --- contention ------------------------------------------------------------------------------------

@pytest.fixture
def spinner():
    """Another process using one CPU fully while the test runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)  # let it start spinning
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="CPU shares come from /proc/stat")
def test_a_busy_machine_is_retried_a_bounded_number_of_times_then_flagged(spinner):
    calls = []
    # Half a CPU of foreign load is contended on any machine; the spinner alone uses a whole one.
    policy = ContentionPolicy(threshold=0.5 / os.cpu_count(), probe_s=0.2, wait_s=0.05, retries=2)
    result = guarded(lambda: calls.append(1) or {"latency_ms_p50": 1.0}, policy)
    assert result["contention_flagged"] is True and result["contention_retries"] == 2
    assert result["cpu_busy_other_before"] > policy.threshold
    assert len(calls) == 1  # busy probes skip the timing; the last attempt times anyway
    assert result["latency_ms_p50"] == 1.0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="CPU shares come from /proc/stat")
def test_below_the_threshold_nothing_waits_or_is_flagged(spinner):
    result = guarded(lambda: {"x": 1}, ContentionPolicy(threshold=1.0, probe_s=0.1, wait_s=10.0, retries=3))
    assert (result["contention_flagged"], result["contention_retries"], result["x"]) == (False, 0, 1)
    assert 0.0 <= result["cpu_busy_other"] <= 1.0


@pytest.mark.parametrize("field, value, message", [
    ("threshold", 1.5, r"contention.threshold=1.5 must be a fraction in \[0, 1\]"),
    ("retries", -1, "contention.retries=-1 must be a non-negative integer"),
    ("wait_s", -2.0, "contention.wait_s=-2.0 must be >= 0 seconds"),
])
def test_bad_contention_policy_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        ContentionPolicy(**{field: value})


def test_memory_traffic_and_activations_are_input_weights_and_output():
    from dsnet.models.cost import layer_costs, model_cost

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 36, 5))
    conv, fc = layer_costs(net, (3, 6, 6))
    assert (conv.activations, conv.memory_bytes) == (8 * 36, 4 * (3 * 36 + 3 * 9 * 8 + 8 * 36))
    assert (fc.activations, fc.memory_bytes) == (5, 4 * (8 * 36 + 8 * 36 * 5 + 5 + 5))
    cost = model_cost(net, (3, 6, 6))
    assert (cost["activations"], cost["memory_traffic_bytes"]) == (8 * 36 + 5, conv.memory_bytes + fc.memory_bytes)


@pytest.mark.slow  # ten inductor compilations: ~27 s on 2 cores
def test_compile_runtime_keeps_compiling_past_dynamos_default_limit_of_eight():
    # Every dsnet backbone runs one forward code object; dynamo keeps 8 compiled variants of a code
    # object by default and ran the 9th network of bench_runtimes.py eager, with only a warning.
    # Ten networks of different widths through the compile runtime: ten graphs, none run eager
    # (plain torch.compile of the same ten networks gives 8 graphs).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    x = torch.randn(2, 1, 16, 16)
    before = counters["stats"]["unique_graphs"]
    for i in range(10):
        torch.manual_seed(i)
        net = nn.Sequential(nn.Conv2d(1, 2 + i, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
        net(x)  # materialise the lazy layer before compiling
        out = create_runtime("compile", net, num_threads=1).forward_for(x)()
        torch.testing.assert_close(out, net.eval()(x), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] - before >= 10


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
    (["--device", "cuda", "--runtimes", "eager", "onnxruntime"],
     "--device cuda: runtime onnxruntime does not run there; choose from eager"),
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device is available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")),
])
def test_bench_runtimes_refuses_a_device_it_cannot_time_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "scripts/bench_runtimes.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and lines[-1] == f"bench_runtimes.py: error: {message}"
    assert "Traceback" not in proc.stdout + proc.stderr
