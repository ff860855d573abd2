"""Each layer of a network placed on the machine's roofline: work, traffic, intensity, time, share of the roof.

The roofline (Williams, Waterman and Patterson, CACM 2009) bounds a kernel's speed by
``min(peak FLOP/s, bandwidth x intensity)``, where intensity is FLOP per byte moved. The ceilings
come from ``scripts/bench_roofline.py`` (:func:`read_ceilings`); the work and traffic of each layer
from :func:`dsnet.models.cost.layer_costs`, so MACs are counted in one place.

Model of traffic: every convolution and linear layer reads its input activation and its weights
once and writes its output activation once, in fp32 (4 bytes per element), nothing else: no
re-reads from a cache that is too small, no norm or activation passes (a deployed network folds
them in), no im2col buffer. It is the least traffic a layer can have, so the time it implies
(:meth:`Ceilings.time_s`) is a lower bound. For a 3x3 depthwise convolution of C channels on an
H x W map (stride 1): 2 * 9 C H W FLOP over 4 (2 C H W + 9 C) bytes, about 2.25 FLOP per byte; a
pointwise C -> C: about C / 4; a full 3x3 C -> C: about 9 C / 4.

Measured time per layer: eager from ``torch.profiler`` (a ``record_function`` range around every
leaf module; a norm, activation or pooling leaf is charged to the counted layer of its block, so
a layer's time is conv + BN + ReLU as eager runs them, and ``conv_ms`` is the conv alone); ONNX
Runtime from its own profiler (BN and ReLU fused into the conv kernel; kernels matched to layers
in execution order, their kernel sizes checked). Each is the minimum over the profiled passes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dsnet.models.cost import LayerCost, layer_costs, layer_type
from dsnet.profiling import _CONV_TYPE, _ORT_CONV_OPS, onnxruntime_kernel_events, profile_labelled

ROOF_TYPES = ("stem", "depthwise", "pointwise", "full", "grouped", "classifier")
RUNTIMES = ("eager", "onnxruntime")


@dataclass(frozen=True)
class Ceilings:
    """A machine's measured roof: fp32 GEMM peak and memory bandwidth at one thread count."""

    peak_gflops: float
    bandwidth_gbs: float
    level: str = "DRAM"  # the memory level whose bandwidth this is

    @property
    def ridge(self) -> float:
        """FLOP per byte where the memory roof meets the compute roof."""
        return self.peak_gflops / self.bandwidth_gbs

    def bound_gflops(self, intensity: float) -> float:
        """The fastest a kernel of ``intensity`` FLOP/byte can run: ``min(peak, bandwidth x intensity)``."""
        return min(self.peak_gflops, self.bandwidth_gbs * intensity)

    def time_s(self, flops: float, nbytes: float) -> float:
        """The least time ``flops`` and ``nbytes`` of traffic take: the slower of compute and memory."""
        return max(flops / self.peak_gflops, nbytes / self.bandwidth_gbs) / 1e9


def read_ceilings(path: str | Path, threads: int, level: str = "DRAM") -> Ceilings:
    """The ceilings ``scripts/bench_roofline.py`` wrote: best ``gemm_fp32`` and ``triad_<level>`` at ``threads``."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.open(newline="")))
    except OSError as err:
        raise ValueError(f"ceilings file {path}: cannot be read ({err.strerror}); write it with "
                         "python scripts/bench_roofline.py") from None
    try:
        chosen = [r for r in rows if int(r["threads"]) == threads]
        peaks = [float(r["value"]) for r in chosen if r["quantity"] == "gemm_fp32"]
        bandwidths = [float(r["value"]) for r in chosen if r["quantity"] == f"triad_{level}"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"ceilings file {path}: not a bench_roofline CSV (needs numeric threads and value "
                         "columns and a quantity column)") from None
    if not peaks or not bandwidths:
        raise ValueError(f"ceilings file {path}: no gemm_fp32 and triad_{level} rows at threads={threads}; "
                         f"it has threads {sorted({r['threads'] for r in rows})}")
    return Ceilings(max(peaks), max(bandwidths), level)


def theoretical_peak(path: str | Path, threads: int) -> float | None:
    """The ``peak_theoretical (measured clock)`` row of a ceilings file at ``threads``, None without one."""
    with Path(path).open(newline="") as f:
        return next((float(r["value"]) for r in csv.DictReader(f) if r.get("quantity") == "peak_theoretical "
                     "(measured clock)" and int(r["threads"]) == threads), None)


@dataclass
class LayerPoint:
    """One counted layer: its work and traffic (:class:`LayerCost`) and its measured times."""

    cost: LayerCost
    kind: str  # one of ROOF_TYPES
    times_ms: dict[str, float] = field(default_factory=dict)  # runtime -> ms per pass (layer incl. BN/act)
    conv_ms: float | None = None  # eager: the counted layer's own op, without its BN and activation

    @property
    def flops(self) -> int:
        return 2 * self.cost.macs

    @property
    def intensity(self) -> float:
        """FLOP per byte of :mod:`dsnet.roofline`'s traffic model."""
        return intensity(self.cost.macs, self.cost.memory_bytes)


def intensity(macs: int, nbytes: int) -> float:
    """Arithmetic intensity in FLOP per byte: 2 FLOP per multiply-add."""
    return 2 * macs / nbytes


def roof_kind(name: str, module: nn.Module) -> str:
    """The :data:`ROOF_TYPES` entry of a counted layer: its part (stem, head) first, then its conv type."""
    part = name.split(".", 1)[0]
    if part == "stem":
        return "stem"
    if part == "head" or isinstance(module, nn.Linear):
        return "classifier"
    return _CONV_TYPE[layer_type(module)]


def layer_points(model: nn.Module, input_size: tuple[int, int, int]) -> list[LayerPoint]:
    """The counted layers of ``model`` in execution order, with their kind and cost; no times yet."""
    return [LayerPoint(cost, roof_kind(cost.name, model.get_submodule(cost.name)))
            for cost in layer_costs(model, input_size)]


def _owners(model: nn.Module, counted: list[str]) -> dict[str, str]:
    """Each leaf module -> the counted layer its time is charged to: the last counted layer of its
    block seen so far, else the block's first one (pooling before the classifier), else the last one."""
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    block = lambda n: n.rsplit(".", 1)[0] if "." in n else n  # noqa: E731
    first_in_block = {}
    for name in counted:
        first_in_block.setdefault(block(name), name)
    owners, last = {}, counted[0]
    for name in leaves:
        if name in counted:
            last = name
        owners[name] = last if block(last) == block(name) else first_in_block.get(block(name), last)
    return owners


def profile_eager(model: nn.Module, points: list[LayerPoint], input_size: tuple[int, int, int], *,
                  passes: int = 10, num_threads: int = 1) -> float:
    """Fills ``times_ms["eager"]`` and ``conv_ms`` of ``points``; returns the forward pass's ms.

    Every time is the minimum over the ``passes`` profiled passes (per layer, and for the whole pass):
    other processes and the VM's neighbours only ever add time, so the fastest pass is the least
    disturbed one; a layer's minimum may come from another pass than the forward's.
    """
    owners = _owners(model, [p.cost.name for p in points])
    labels = {name: f"dsnet-op/{name}" if owner == name else f"dsnet-rest/{owner}" for name, owner in owners.items()}
    prof = profile_labelled(model, torch.randn(1, *input_size), labels, passes=passes, warmup=3,
                            num_threads=num_threads, forward_label="dsnet-forward")
    forwards = sorted((e for e in prof.events() if e.name == "dsnet-forward"), key=lambda e: e.time_range.start)
    per_pass = [dict.fromkeys(["forward"], f.time_range.elapsed_us()) for f in forwards]
    for event in prof.events():
        if event.name.startswith(("dsnet-op/", "dsnet-rest/")):
            i = next(i for i, f in enumerate(forwards) if f.time_range.start <= event.time_range.start <= f.time_range.end)
            per_pass[i][event.name] = per_pass[i].get(event.name, 0.0) + event.time_range.elapsed_us()
    for point in points:
        name = point.cost.name
        conv = [t.get(f"dsnet-op/{name}", 0.0) for t in per_pass]
        layer = [c + t.get(f"dsnet-rest/{name}", 0.0) for c, t in zip(conv, per_pass)]
        point.conv_ms, point.times_ms["eager"] = min(conv) / 1e3, min(layer) / 1e3
    return min(t["forward"] for t in per_pass) / 1e3


def profile_onnxruntime(model: nn.Module, points: list[LayerPoint], input_size: tuple[int, int, int], *,
                        passes: int = 10, num_threads: int = 1) -> float:
    """Fills ``times_ms["onnxruntime"]`` of ``points``; returns the fastest ``model_run``'s ms.

    Conv kernels (BN and ReLU fused) match the network's convolutions in order and ``Gemm``/``MatMul``
    its linear layers; the global pooling and reshape before the classifier are charged to it;
    ORT's layout conversions to no layer. Minima over passes, as in :func:`profile_eager`.
    """
    runs = onnxruntime_kernel_events(model, input_size, passes=passes, num_threads=num_threads)
    convs = [p for p in points if isinstance(model.get_submodule(p.cost.name), nn.Conv2d)]
    linears = [p for p in points if p not in convs]
    totals = {p.cost.name: [] for p in points}  # µs per pass
    for _, kernels in runs:
        for times in totals.values():
            times.append(0.0)
        conv_kernels = [k for k in kernels if k["args"].get("op_name") in _ORT_CONV_OPS]
        gemms = [k for k in kernels if k["args"].get("op_name") in ("Gemm", "MatMul")]
        if len(conv_kernels) != len(convs) or len(gemms) != len(linears):
            raise RuntimeError(f"onnxruntime ran {len(conv_kernels)} conv and {len(gemms)} gemm kernels for "
                               f"{len(convs)} convolutions and {len(linears)} linear layers: cannot match them")
        for point, kernel in zip(convs, conv_kernels):
            weight = next(iter(kernel["args"]["input_type_shape"][1].values()))
            kernel_size = tuple(model.get_submodule(point.cost.name).kernel_size)
            if tuple(weight[2:]) != kernel_size:
                raise RuntimeError(f"onnxruntime kernel {kernel['name']} has a {weight[2:]} weight, "
                                   f"{point.cost.name} a {kernel_size} kernel: execution order differs")
            totals[point.cost.name][-1] += kernel["dur"]
        for point, kernel in zip(linears, gemms):
            totals[point.cost.name][-1] += kernel["dur"]
        if linears:  # the pooling and reshape feeding the classifier
            totals[linears[0].cost.name][-1] += sum(k["dur"] for k in kernels if k["args"].get("op_name") in
                                                ("ReduceMean", "GlobalAveragePool", "Flatten", "Reshape"))
    for point in points:
        point.times_ms["onnxruntime"] = min(totals[point.cost.name]) / 1e3
    return min(run["dur"] for run, _ in runs) / 1e3


def by_kind(points: list[LayerPoint], ceilings: Ceilings, runtime: str) -> dict[str, dict[str, float]]:
    """Per :data:`ROOF_TYPES` entry present: share of MACs and of the layers' time, achieved GFLOP/s,
    intensity, the roof's bound there and the share of it reached, and the time the roof allows."""
    total_macs = sum(p.cost.macs for p in points)
    total_ms = sum(p.times_ms[runtime] for p in points)
    rows = {}
    for kind in ROOF_TYPES:
        group = [p for p in points if p.kind == kind]
        if not group:
            continue
        macs, nbytes = sum(p.cost.macs for p in group), sum(p.cost.memory_bytes for p in group)
        ms = sum(p.times_ms[runtime] for p in group)
        ai = intensity(macs, nbytes)
        achieved = 2 * macs / (ms / 1e3) / 1e9
        rows[kind] = dict(layers=len(group), macs=macs, bytes=nbytes, macs_share=macs / total_macs,
                          time_ms=ms, time_share=ms / total_ms, intensity=ai, gflops=achieved,
                          bound_gflops=ceilings.bound_gflops(ai), roof_share=achieved / ceilings.bound_gflops(ai),
                          roof_ms=1e3 * sum(ceilings.time_s(p.flops, p.cost.memory_bytes) for p in group))
    return rows


def roof_time_ms(points: list[LayerPoint], ceilings: Ceilings) -> float:
    """The least time the roof allows the whole network: each layer at its bound, one after another."""
    return 1e3 * sum(ceilings.time_s(p.flops, p.cost.memory_bytes) for p in points)
