"""Theory against measurement, per runtime: standard vs depthwise-separable MobileNetV1 in each one.

    python scripts/bench_runtimes.py                                  # all runtimes, widths 0.25/0.5/1.0, 224 and 28 px
    python scripts/bench_runtimes.py --runtimes eager onnxruntime --widths 0.5 --sizes 28 --rounds 3
    python scripts/bench_runtimes.py --device cuda --precision bf16 --runtimes eager compile --batch-size 256

For every runtime (``dsnet.runtimes``: eager, compile, onnxruntime, openvino), width and input
size, the two networks (``conv=standard`` and ``conv=dsconv``) are built once per runtime (export,
compilation and the check against eager kept out of the timing), then timed in alternation for
``--rounds`` rounds, each round one ``dsnet.latency.measure_latency`` call per network under
``dsnet.contention.guarded`` (a busy machine is waited for, then flagged). Reported per cell:
latency p50 (median over rounds of each round's p50, batch 1), throughput (``--batch-size``), the
latency and throughput ratios standard/dsconv (medians of per-round ratios), the MAC ratio, and
the share of the MAC saving delivered as time saved: (1 - t_ds/t_std) / (1 - MACs_ds/MACs_std).
224 px: 3 channels, 1000 classes (ImageNet); 28 px: 1 channel, 10 classes and the small-input
stem (Fashion-MNIST), as eval.py builds them. Rounds flagged as contended are counted in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from dsnet import allocator
from dsnet.contention import ContentionPolicy, guarded
from dsnet.environment import environment
from dsnet.latency import measure_latency, prepare_runtime
from dsnet.models.cost import count_macs
from dsnet.models import create_model
from dsnet.runtimes import RUNTIMES, runtime_devices, runtime_version


def build(conv: str, width: float, size: int):
    small = size <= 64
    return create_model("mobilenet_v1", conv=conv, width=width, num_classes=10 if small else 1000,
                        in_chans=1 if small else 3, small_input=small), (1 if small else 3, size, size)


def bench_cell(args, name: str, width: float, size: int, policy: ContentionPolicy) -> dict:
    nets, runtimes, macs = {}, {}, {}
    for conv in ("standard", "dsconv"):
        nets[conv], input_size = build(conv, width, size)
        macs[conv] = count_macs(nets[conv], input_size)
        runtimes[conv] = prepare_runtime(name, nets[conv], device=args.device, precision=args.precision,
                                         num_threads=args.threads)
    rounds = {"standard": [], "dsconv": []}
    flagged = 0
    for i in range(args.rounds):
        for conv in (("standard", "dsconv") if i % 2 == 0 else ("dsconv", "standard")):
            result = guarded(lambda: measure_latency(nets[conv], input_size, device=args.device,
                                                     precision=args.precision, num_threads=args.threads,
                                                     runtime=runtimes[conv], throughput_batch_size=args.batch_size,
                                                     min_run_time=args.min_run_time), policy)
            flagged += result["contention_flagged"]
            rounds[conv].append(result)
    p50 = {c: [r["latency_ms_p50"] for r in v] for c, v in rounds.items()}
    thr = {c: [r["throughput_img_s"] for r in v] for c, v in rounds.items()}
    latency_ratio = statistics.median(s / d for s, d in zip(p50["standard"], p50["dsconv"]))
    throughput_ratio = statistics.median(d / s for s, d in zip(thr["standard"], thr["dsconv"]))
    mac_ratio = macs["standard"] / macs["dsconv"]
    return {
        "runtime": name, "runtime_version": runtime_version(name), "device": args.device,
        "precision": args.precision, "width": width, "image_size": size,
        "latency_ms_p50": {c: statistics.median(v) for c, v in p50.items()},
        "throughput_img_s": {c: statistics.median(v) for c, v in thr.items()},
        "latency_ratio": latency_ratio, "throughput_ratio": throughput_ratio, "mac_ratio": mac_ratio, "macs": macs,
        "saving_delivered": (1 - 1 / latency_ratio) / (1 - 1 / mac_ratio),
        "flagged_rounds": flagged, "rounds": args.rounds, "raw_p50_ms": p50, "raw_img_s": thr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", nargs="+", choices=list(RUNTIMES),
                        help="default: every runtime that runs on --device")
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 28])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (runtimes that run there only)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast around the forward (fp16: cuda only)")
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds per cell")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the throughput run")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed measurement")
    parser.add_argument("--allocator", default="keep_freed", choices=["keep_freed", "system"])
    parser.add_argument("--contention-threshold", type=float, default=0.10)
    parser.add_argument("--contention-retries", type=int, default=2)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    device = args.device.split(":")[0]
    if device not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: expected cpu, cuda or cuda:N")
    runs_there = [name for name in RUNTIMES if device in runtime_devices(name)]
    args.runtimes = args.runtimes or runs_there
    unable = [name for name in args.runtimes if name not in runs_there]
    if unable:
        asked = [name for name in args.runtimes if name in runs_there]
        parser.error(f"--device {args.device}: runtime {', '.join(unable)} does not run there; "
                     f"choose from {', '.join(asked or runs_there)}")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    allocator.configure(args.allocator)
    policy = ContentionPolicy(threshold=args.contention_threshold, retries=args.contention_retries)
    torch.manual_seed(0)
    print(f"# bench_runtimes  MobileNetV1 standard vs dsconv on {args.device}, {args.precision}, "
          f"{args.threads} CPU thread(s), {args.rounds} rounds, "
          f"throughput batch {args.batch_size}, allocator {args.allocator}, load {os.getloadavg()[0]:.1f} at start")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment(args.device, args.threads).items()))
    print("| runtime | width | px | std p50 ms | ds p50 ms | std img/s | ds img/s | latency ratio | throughput ratio "
          "| MAC ratio | saving delivered | flagged rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cells = []
    for name in args.runtimes:
        for size in args.sizes:
            for width in args.widths:
                c = bench_cell(args, name, width, size, policy)
                cells.append(c)
                print(f"| {name} {c['runtime_version'].split('-')[0]} | {width:g} | {size} "
                      f"| {c['latency_ms_p50']['standard']:.2f} | {c['latency_ms_p50']['dsconv']:.2f} "
                      f"| {c['throughput_img_s']['standard']:.0f} | {c['throughput_img_s']['dsconv']:.0f} "
                      f"| {c['latency_ratio']:.2f} | {c['throughput_ratio']:.2f} | {c['mac_ratio']:.2f} "
                      f"| {100 * c['saving_delivered']:.0f} % | {c['flagged_rounds']}/{2 * args.rounds} |", flush=True)
    print(f"# load {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "environment": environment(), "cells": cells},
                                              indent=2))


if __name__ == "__main__":
    main()
