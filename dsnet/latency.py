"""How fast a network runs: inference latency and throughput, timed like a benchmark.

Warm-up calls are excluded, CUDA is synchronised around each timed block, blocks repeat until a
minimum time and count are reached, and the result carries the median, spread and the
:func:`dsnet.environment.environment` it was measured in. Any runtime of :mod:`dsnet.runtimes`
is timed the same way.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from dsnet.contention import ContentionPolicy, guarded
from dsnet.environment import environment
from dsnet.intervals import p50_interval
from dsnet.models.deploy import deploy_form
from dsnet.runtimes import Runtime, create_runtime
from dsnet.runtimes.base import PRECISIONS

# torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found" on every
# CPU-only machine although nothing is compiled: keep that noise out of every dsnet command.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402


def _check_latency_args(device: str, precision: str, batch_size: int, throughput_batch_size: int,
                        num_threads: int | None, min_run_time: float) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {', '.join(PRECISIONS)}")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}; expected 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available; use device=cpu")
    if precision == "fp16" and device == "cpu":
        raise ValueError("precision='fp16' is only supported on cuda; use fp32 or bf16 on cpu")
    for name, value in (("batch_size", batch_size), ("throughput_batch_size", throughput_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads={num_threads!r} must be a positive integer, or null for all cores")
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)) or not 0 < min_run_time < math.inf:
        raise ValueError(f"min_run_time={min_run_time!r} must be a finite number of seconds > 0")


MIN_BLOCKS = 10  # timed latency blocks at least, so that p50, p90 and IQR describe a spread
MIN_THROUGHPUT_BLOCKS = 3  # throughput reports a median only; its calls are long (a batch of 64 at 224 px)
WARMUP_S = 0.2  # warm-up: at least 3 calls and this long (allocator, oneDNN/cuDNN kernels, compilation)


def _time_forward(call, num_threads, min_run_time, min_blocks) -> benchmark.Measurement:
    """Times ``call()`` in blocks of equal size: at least ``min_blocks`` blocks and ``min_run_time`` s.

    ``Timer.blocked_autorange`` sizes its blocks from a single probe and stops at ``min_run_time``,
    so a slow model (or one disturbed probe) can end with one huge block: a median of one and an IQR
    of 0. Here the block size comes from the warm-up's mean call time, aiming at ``min_blocks``
    blocks within ``min_run_time``; a call longer than that is timed alone, ``min_blocks`` times. If
    the machine slows down mid-way, timing stops at twice the expected time, with fewer blocks.
    """
    # Timer synchronises CUDA around each timed block; on CPU it pins the thread count.
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=num_threads)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < WARMUP_S:
        timer.timeit(1)
        calls += 1
    call_s = (time.perf_counter() - start) / calls
    number = max(1, int(min_run_time / min_blocks / call_s))
    # A cap for when the machine turns slow mid-way (other processes): twice the expected time.
    max_run_time = 2 * max(min_run_time, min_blocks * number * call_s)
    raw_times: list[float] = []  # seconds per block of `number` calls
    while (len(raw_times) < min_blocks or sum(raw_times) < min_run_time) and sum(raw_times) < max_run_time:
        block = timer.timeit(number)
        raw_times += block.raw_times
    return benchmark.Measurement(number_per_run=number, raw_times=raw_times, task_spec=block.task_spec)


def _quantile(values: list[float], q: float) -> float:
    return torch.tensor(values, dtype=torch.float64).quantile(q).item()


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    device: str = "cpu",
    num_threads: int | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
    runtime: str | Runtime = "eager",
    batch_size: int = 1,
    throughput_batch_size: int = 64,
    min_run_time: float = 1.0,
    deploy: bool = True,
) -> dict:
    """Inference latency at ``batch_size`` and throughput at ``throughput_batch_size``.

    Runs in ``eval()`` and ``inference_mode()`` with fixed shapes; warm-up calls are excluded and
    ``torch.utils.benchmark`` synchronises CUDA; timing repeats until ``min_run_time`` seconds are
    spent and at least ``MIN_BLOCKS`` latency blocks (``MIN_THROUGHPUT_BLOCKS`` throughput blocks)
    are timed. Percentiles are over the timed blocks (each the mean of the same number of calls).

    Args:
        runtime: one of :data:`dsnet.runtimes.RUNTIMES`, or a :class:`dsnet.runtimes.Runtime` already
            built around ``model`` (so that repeated calls export or compile once). Its output is
            checked against eager PyTorch on each timing input before that input is timed.
        deploy: time the network's deploy form (:func:`dsnet.models.deploy.deploy_form`: batch norm
            folded, re-parameterised branches fused), as inference would run it; False times the
            training graph. Ignored when ``runtime`` is already built.

    Returns:
        ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_iqr``, ``throughput_img_s``, ``runtime``,
        ``runtime_version`` and the settings and :func:`environment` they were measured in.

    Raises:
        ValueError: a bad setting. RuntimeUnavailableError: the runtime's package is missing or it
            cannot run these settings. RuntimeMismatchError: its output differs from eager.
    """
    _check_latency_args(device, precision, batch_size, throughput_batch_size, num_threads, min_run_time)
    num_threads = num_threads or torch.get_num_threads()
    was_training = model.training
    try:
        if not isinstance(runtime, Runtime):
            runtime = prepare_runtime(runtime, model, device=device, precision=precision,
                                      channels_last=channels_last, num_threads=num_threads, deploy=deploy)
        latency = _time_forward(runtime.forward_for(torch.randn(batch_size, *input_size, device=device)),
                                num_threads, min_run_time, MIN_BLOCKS)
        throughput = _time_forward(runtime.forward_for(torch.randn(throughput_batch_size, *input_size, device=device)),
                                   num_threads, min_run_time, MIN_THROUGHPUT_BLOCKS)
    finally:
        model.train(was_training)
    times_ms = [t * 1e3 for t in latency.times]
    env = environment(device, num_threads)
    return {
        "latency_ms_p50": latency.median * 1e3,
        "latency_ms_p90": _quantile(times_ms, 0.9),
        "latency_ms_iqr": latency.iqr * 1e3,
        "latency_repeats": len(latency.times),
        "throughput_img_s": throughput_batch_size / throughput.median,
        "batch_size": batch_size,
        "throughput_batch_size": throughput_batch_size,
        "input_size": list(input_size),
        "precision": precision,
        "channels_last": channels_last,
        "deploy": runtime.deploy,
        "runtime": runtime.name,
        "runtime_version": runtime.version(),
        **env,
    }


def prepare_runtime(name: str, model: nn.Module, *, device: str = "cpu", precision: str = "fp32",
                    channels_last: bool = False, num_threads: int | None = None, deploy: bool = True) -> Runtime:
    """``model`` on ``device`` in ``eval()`` (channels-last if asked), wrapped in runtime ``name``.

    ``deploy``: wrap a copy in its deploy form instead (:func:`dsnet.models.deploy.deploy_form`), for
    every runtime alike: eager and torch.compile do not fold batch norm, and no runtime fuses
    re-parameterised branches; ONNX Runtime and OpenVINO fold batch norm themselves, so the deploy form
    changes little there.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if deploy:
        model = deploy_form(model, memory_format=memory_format)
    model = model.to(device, memory_format=memory_format).eval()
    runtime = create_runtime(name, model, device=device, precision=precision, channels_last=channels_last,
                             num_threads=num_threads or torch.get_num_threads())
    runtime.deploy = deploy
    return runtime


ROUND_KEYS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_iqr")  # taken from the best round


def time_network(net: nn.Module, input_size: tuple[int, int, int], *, rounds: int = 5, round_gap_s: float = 0.0,
                 contention: ContentionPolicy | dict | None = None, **settings) -> dict:
    """Latency: the best of ``rounds`` :func:`measure_latency` rounds; throughput: the last.

    Timing noise on a CPU is one-sided: other processes, a cold first round (caches, allocator,
    clocks) and the VM's neighbours only ever slow a round down. On the team's 2-core VM, with no
    other process running, a forward pass alternates between a fast and a ~35 % slower state every
    0.5-2 s (host-level contention, invisible from inside the VM). The round with the lowest median
    is the one least disturbed, and it is what a rerun reproduces if one round in the run caught a
    fast phase: two back-to-back runs' best of five rounds agreed to 2 %; with three rounds, their
    medians differed by 10 %, and their best rounds by 31 % once every round of one run fell in slow
    phases. Its p50, p90 and IQR are reported together, so they describe one set of timed blocks.
    Throughput is timed once, in the last (warmest) round: at 224 px a batch of 64 takes about a
    second per call on one core, and each measurement needs five or more calls. The runtime is built
    (exported, compiled) once, outside the timing; the rounds run under :func:`dsnet.contention.guarded`.

    Args:
        rounds: number of latency measurements, >= 1.
        round_gap_s: seconds of sleep between rounds, >= 0: spreads the rounds over the time scale of
            the machine's slow changes (load, clock), so their interval covers what a rerun sees.
        contention: a :class:`~dsnet.contention.ContentionPolicy` or its fields as a dict
            (default: the policy's defaults).
        **settings: measure_latency's keyword arguments (device, precision, runtime, min_run_time, ...).

    Returns:
        The last round's dict (settings, environment, throughput) with :data:`ROUND_KEYS` from the
        best round, ``latency_repeats`` summed over rounds, ``round_p50s_ms`` (each round's p50),
        :func:`dsnet.intervals.p50_interval`'s keys (their median and its interval) and
        :func:`dsnet.contention.guarded`'s keys (``cpu_busy_other``, ``contention_flagged``, ...).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be a positive integer")
    if isinstance(round_gap_s, bool) or not isinstance(round_gap_s, (int, float)) or not 0 <= round_gap_s < math.inf:
        raise ValueError(f"round_gap_s={round_gap_s!r} must be a finite number of seconds >= 0")
    policy = contention if isinstance(contention, ContentionPolicy) else ContentionPolicy(**(contention or {}))
    _check_latency_args(settings.get("device", "cpu"), settings.get("precision", "fp32"),
                        settings.get("batch_size", 1), settings.get("throughput_batch_size", 64),
                        settings.get("num_threads"), settings.get("min_run_time", 1.0))
    build = {k: settings[k] for k in ("device", "precision", "channels_last", "num_threads", "deploy") if k in settings}
    was_training = net.training
    settings["runtime"] = prepare_runtime(settings.get("runtime", "eager"), net, **build)
    # measure_latency always times two batch sizes: giving it the latency batch size (default 1)
    # twice keeps the earlier rounds cheap; their second, throughput, number is not used.
    latency_only = {**settings, "throughput_batch_size": settings.get("batch_size", 1)}

    def all_rounds() -> dict:
        results = []
        for _ in range(rounds - 1):
            results.append(measure_latency(net, input_size, **latency_only))
            time.sleep(round_gap_s)
        results.append(measure_latency(net, input_size, **settings))
        best = min(results, key=lambda r: r["latency_ms_p50"])
        merged = {**results[-1], **{key: best[key] for key in ROUND_KEYS}}
        merged["latency_repeats"] = sum(r["latency_repeats"] for r in results)
        merged["round_p50s_ms"] = [r["latency_ms_p50"] for r in results]
        merged.update(p50_interval(merged["round_p50s_ms"]))  # the median of rounds, and how well it is known
        return merged

    try:
        return guarded(all_rounds, policy)
    finally:
        net.train(was_training)
