"""Are dsnet's blocks as fast as the reference implementations of the same networks?

    python scripts/bench_models.py                       # CPU, fp32, 1 and 2 threads, 11 rounds
    python scripts/bench_models.py --allocator system    # glibc's defaults (a page fault per activation page: dsnet/allocator.py)
    python scripts/bench_models.py --channels-last --precision bf16 --device cuda --runtime compile

Compares, at 224 px and 1000 classes, dsnet's MobileNetV1 (dsconv, width 1.0, ``act=relu6`` like
timm's) with timm's ``mobilenetv1_100`` and dsnet's MobileNetV2 with torchvision's ``mobilenet_v2``.
Each pair has the same parameters and multiply-adds (checked below), so a time difference is
implementation. The process's allocator is set first (``--allocator``, default keep_freed as in
eval.py): with glibc's defaults the two networks' identical op sequences page-fault differently
(see docs/speed.md, "Parity").
Models are measured alternately (ours, theirs, ours, ...) for ``--repeats`` rounds so that drift in
machine load hits both; each round is one ``dsnet.latency.measure_latency`` call (warm-up excluded,
median of ``torch.utils.benchmark`` blocks). The ratios are medians over rounds: ours / theirs for
latency, theirs / ours for throughput, so a ratio ≤ 1 means ours is no slower.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics

import timm
import torch
import torchvision

from dsnet import allocator
from dsnet.environment import environment
from dsnet.latency import measure_latency, prepare_runtime
from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model

INPUT = (3, 224, 224)
PAIRS = {
    "mobilenet_v1 vs timm mobilenetv1_100": (
        lambda: create_model("mobilenet_v1", conv="dsconv", width=1.0, act="relu6"),
        lambda: timm.create_model("mobilenetv1_100"),
    ),
    "mobilenet_v2 vs torchvision mobilenet_v2": (
        lambda: create_model("mobilenet_v2", conv="dsconv", width=1.0),
        lambda: torchvision.models.mobilenet_v2(),
    ),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--runtime", default="eager", help="eager | compile | onnxruntime | openvino")
    parser.add_argument("--allocator", default="keep_freed", choices=["keep_freed", "system"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts, each its own table row")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the throughput run")
    parser.add_argument("--repeats", type=int, default=11, help="alternating rounds per pair (>= 11 to resolve a few percent on a noisy VM)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timed measurement")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    return parser.parse_args()


def bench_pair(ours: torch.nn.Module, theirs: torch.nn.Module, args, threads: int) -> dict:
    """Alternate ours/theirs for ``args.repeats`` rounds; return per-model lists of p50 and throughput."""
    runs = {"ours": [], "theirs": []}
    built = {name: prepare_runtime(args.runtime, model, device=args.device, precision=args.precision,
                                   channels_last=args.channels_last, num_threads=threads)
             for name, model in (("ours", ours), ("theirs", theirs))}
    for round_idx in range(args.repeats):
        # alternate who goes first, so neither always measures on a machine the other just warmed
        order = [("ours", ours), ("theirs", theirs)][:: 1 if round_idx % 2 == 0 else -1]
        for name, model in order:
            runs[name].append(measure_latency(
                model, INPUT, device=args.device, num_threads=threads, channels_last=args.channels_last,
                precision=args.precision, runtime=built[name], throughput_batch_size=args.batch_size,
                min_run_time=args.min_run_time,
            ))
    return runs


def main() -> None:
    args = parse_args()
    allocator.configure(args.allocator)
    torch.manual_seed(0)
    env = environment(args.device)
    settings = f"device={args.device} precision={args.precision} channels_last={args.channels_last} " \
               f"runtime={args.runtime} allocator={args.allocator} threads={args.threads} " \
               f"throughput batch={args.batch_size} repeats={args.repeats} load={os.getloadavg()[0]:.1f}"
    print(f"# bench_models  {settings}")
    print("# " + "  ".join(f"{k}={v}" for k, v in env.items()))
    print("| pair | threads | params | MACs | ours p50 ms | theirs p50 ms | latency ratio | ours img/s | theirs img/s "
          "| throughput ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    raw = {"environment": env, "settings": vars(args), "pairs": {}}
    for (label, (make_ours, make_theirs)), threads in itertools.product(PAIRS.items(), args.threads):
        ours, theirs = make_ours(), make_theirs()
        params, macs = count_params(ours), count_macs(ours, INPUT)
        if (params, macs) != (count_params(theirs), count_macs(theirs, INPUT)):
            raise SystemExit(f"bench_models: {label} differ in parameters or MACs; the comparison would be unfair")
        runs = bench_pair(ours, theirs, args, threads)
        p50 = {k: [r["latency_ms_p50"] for r in v] for k, v in runs.items()}
        thr = {k: [r["throughput_img_s"] for r in v] for k, v in runs.items()}
        latency_ratio = statistics.median(o / t for o, t in zip(p50["ours"], p50["theirs"]))
        throughput_ratio = statistics.median(t / o for o, t in zip(thr["ours"], thr["theirs"]))
        print(f"| {label} | {threads} | {params / 1e6:.2f}M | {macs / 1e6:.0f}M "
              f"| {statistics.median(p50['ours']):.2f} | {statistics.median(p50['theirs']):.2f} | {latency_ratio:.3f} "
              f"| {statistics.median(thr['ours']):.1f} | {statistics.median(thr['theirs']):.1f} | {throughput_ratio:.3f} |",
              flush=True)
        raw["pairs"][f"{label}, {threads} thread(s)"] = {"latency_ms_p50": p50, "throughput_img_s": thr,
                               "latency_ratio": latency_ratio, "throughput_ratio": throughput_ratio}
    print(f"# load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
