"""Where the time goes: measured time per layer type beside parameters and multiply-adds
(which counted cost predicts latency across networks: :mod:`dsnet.report.predictors`).

:func:`layer_type_shares` profiles eager forward passes with ``torch.profiler``: every leaf module
runs inside a ``record_function`` range named after its layer type, so the profiler's totals per
range are the time of that type. A norm, activation or pooling layer is charged to the layer type
of the convolution it follows (MobileNet's "layer" is conv + BN + ReLU); everything under ``stem``
and ``head`` is charged to those. Time outside every leaf (the residual adds, Python between modules)
is ``other``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from dsnet.models.cost import layer_costs, layer_type

# The paper's Table 2, generalised: the layer types time is reported for.
TIME_TYPES = ("stem", "depthwise", "pointwise", "full", "grouped", "head", "other")
_CONV_TYPE = {"standard": "full", "depthwise": "depthwise", "pointwise": "pointwise", "grouped": "grouped",
              "linear": "head"}


def _time_type(name: str, module: nn.Module, current: str) -> str:
    part = name.split(".", 1)[0]
    if part in ("stem", "head"):
        return part
    kind = layer_type(module)
    return _CONV_TYPE[kind] if kind else current


def layer_type_shares(model: nn.Module, input_size: tuple[int, int, int], *, batch_size: int = 1,
                      passes: int = 5, num_threads: int = 1) -> dict[str, dict[str, float]]:
    """Share of params, MACs and measured eager CPU time per layer type (:data:`TIME_TYPES`).

    Args:
        passes: profiled forward passes (after two untimed ones); their times are summed.

    Returns:
        ``{type: {"params": share, "macs": share, "time": share, "time_ms": ms per pass}}``; each
        share column sums to 1 over the types (params and MACs over the counted layers).
    """
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    kinds, current = {}, "stem"
    for name, module in leaves:  # definition order is execution order in these backbones
        current = kinds[name] = _time_type(name, module, current)
    x = torch.randn(batch_size, *input_size)
    prof = profile_labelled(model, x, {n: f"dsnet/{kinds[n]}" for n, _ in leaves}, passes=passes, warmup=2,
                            num_threads=num_threads, forward_label="dsnet/forward")
    totals = {e.key.removeprefix("dsnet/"): e.cpu_time_total for e in prof.key_averages() if e.key.startswith("dsnet/")}
    forward = totals.pop("forward")
    times = {kind: totals.get(kind, 0.0) for kind in TIME_TYPES if kind != "other"}
    times["other"] = max(forward - sum(times.values()), 0.0)
    counts = {kind: {"params": 0, "macs": 0} for kind in TIME_TYPES}
    for cost in layer_costs(model, input_size):
        kind = kinds.get(cost.name) or _time_type(cost.name, model.get_submodule(cost.name), "other")
        counts[kind]["params"] += cost.params
        counts[kind]["macs"] += cost.macs
    total = {key: sum(c[key] for c in counts.values()) or 1 for key in ("params", "macs")}
    return {kind: {"params": counts[kind]["params"] / total["params"], "macs": counts[kind]["macs"] / total["macs"],
                   "time": times[kind] / forward, "time_ms": times[kind] / passes / 1e3} for kind in TIME_TYPES}


_ORT_CONV_OPS = ("Conv", "FusedConv", "NchwcConv")  # ORT's conv kernels after fusion and layout changes


def _ort_kernel_type(event: dict, first_conv: bool) -> str:
    """The layer type of one kernel in ONNX Runtime's profile, from its op and its weight's shape.

    ORT fuses BN and ReLU into the conv and renames nodes (``relu_3_nchwc``), so the shapes are what
    is left to tell the convs apart: weight ``(C_out, C_in / groups, k, k)``; input ``(N, C_in, H, W)``.
    """
    op = event["args"].get("op_name", "")
    if op in _ORT_CONV_OPS:
        shapes = [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])]
        weight = shapes[1]
        if first_conv:
            return "stem"
        if weight[2] * weight[3] == 1:
            return "pointwise"
        if weight[1] == 1:
            return "depthwise"
        return "grouped" if weight[1] < shapes[0][1] else "full"
    if op in ("Gemm", "MatMul", "ReduceMean", "GlobalAveragePool", "Flatten", "Reshape"):
        return "head"
    return "other"  # ORT's layout conversions (ReorderInput/ReorderOutput) and the rest


def onnxruntime_layer_type_times(model: nn.Module, input_size: tuple[int, int, int], *, batch_size: int = 1,
                                 passes: int = 5, num_threads: int = 1) -> dict[str, float]:
    """Milliseconds per forward pass per layer type (:data:`TIME_TYPES`), from ONNX Runtime's own profiler.

    The model is exported as :class:`dsnet.runtimes.ort.OnnxRuntime` runs it (same export, same
    session options, full graph optimisation) with profiling on; two untimed runs, then ``passes``.
    ``other`` is the rest of each run: layout conversions and the session's own overhead.
    """
    runs = onnxruntime_kernel_events(model, input_size, batch_size=batch_size, passes=passes, num_threads=num_threads)
    times = dict.fromkeys(TIME_TYPES, 0.0)
    for run, kernels in runs:
        convs = [k for k in kernels if k["args"].get("op_name") in _ORT_CONV_OPS]
        for kernel in kernels:
            times[_ort_kernel_type(kernel, kernel is convs[0])] += kernel["dur"]
        times["other"] += run["dur"] - sum(k["dur"] for k in kernels)
    return {kind: t / len(runs) / 1e3 for kind, t in times.items()}  # µs summed over runs -> ms per pass


def onnxruntime_kernel_events(model: nn.Module, input_size: tuple[int, int, int], *, batch_size: int = 1,
                              passes: int = 5, num_threads: int = 1) -> list[tuple[dict, list[dict]]]:
    """ONNX Runtime's profile of ``passes`` forward passes (after two untimed ones): per pass, its
    ``model_run`` event and its kernel events in execution order (Chrome-trace dicts, times in µs)."""
    from dsnet.runtimes.onnx_export import INPUT_NAME, export_onnx
    from dsnet.runtimes.ort import session as ort_session  # here: the eager profile needs no ONNX stack

    with tempfile.TemporaryDirectory(prefix="dsnet-ort-profile-") as tmp:
        path = export_onnx(model.eval(), input_size, tmp)
        session = ort_session(path, num_threads, batch_size, enable_profiling=True,
                              profile_file_prefix=str(Path(tmp) / "ort"))
        feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((batch_size, *input_size), dtype=np.float32)}
        for _ in range(2 + passes):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])[2:]
    kernels = sorted((e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    return [(run, [k for k in kernels if run["ts"] <= k["ts"] <= run["ts"] + run["dur"]]) for run in runs]


def profile_labelled(model: nn.Module, x: torch.Tensor, labels: dict[str, str], *, passes: int, warmup: int,
                     num_threads: int, forward_label: str):
    """``torch.profiler`` over ``passes`` eval forward passes of ``x`` (after ``warmup`` untimed ones), at
    ``num_threads`` threads, each pass inside a ``forward_label`` range and each submodule named in
    ``labels`` inside a range of its label. Restores the model's mode and the thread count."""
    ranges: dict[str, record_function] = {}

    def enter(name):
        def hook(module, inputs):
            ranges[name] = record_function(labels[name])
            ranges[name].__enter__()
        return hook

    def leave(name):
        return lambda module, inputs, output: ranges.pop(name).__exit__(None, None, None)

    hooks = [h for name, m in model.named_modules() if name in labels
             for h in (m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave(name)))]
    was_training, threads = model.training, torch.get_num_threads()
    try:
        model.eval()
        torch.set_num_threads(num_threads)
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(passes):
                    with record_function(forward_label):
                        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        torch.set_num_threads(threads)
    return prof
