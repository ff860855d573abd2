"""CPU latency of each conv mix of experiment=conv_mix, per runtime and input size, timed in alternation.

    python scripts/latency_conv_mix.py --out results/conv_mix/latency.csv
    python scripts/latency_conv_mix.py --mixes dsconv full2 standard --runtimes eager --rounds 3

Each mix of ``configs/experiment/conv_mix.yaml`` is MobileNetV1 at the recipe's width with that
mix as ``stage_conv``, in its deploy form (batch norm folded, as ``latency.deploy=true`` times it),
one thread, batch 1, fp32. Two inputs: 28 px through the small-input stem, 1 channel, 10 classes
(the network as trained on Fashion-MNIST), and 224 px through the ImageNet stem, 3 channels, 1000
classes (the papers' setting: feature maps 112..7 px). Every runtime's network is built and exported
once, then every round times each (mix, runtime, size) cell once (one ``dsnet.latency.measure_latency``
call under ``dsnet.contention.guarded``) in a fresh order, so a drift of the machine's speed or load
hits all cells alike. Per cell: the median over rounds of each round's p50, its minimum and maximum,
the rounds flagged as contended, and the 1-minute load average (``os.getloadavg``) before the first
and after the last round. Weights are random: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
from pathlib import Path

import torch
import yaml

from dsnet.contention import ContentionPolicy, guarded
from dsnet.environment import environment
from dsnet.latency import measure_latency, prepare_runtime
from dsnet.models import create_model
from dsnet.models.cost import count_macs, count_params

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "conv_mix.yaml"
INPUTS = {  # image size -> create_model's input arguments
    28: {"in_chans": 1, "num_classes": 10, "small_input": True},
    224: {"in_chans": 3, "num_classes": 1000, "small_input": False},
}
COLUMNS = ("mix", "runtime", "image_size", "in_chans", "num_classes", "params", "macs", "latency_ms_p50",
           "latency_ms_p50_min", "latency_ms_p50_max", "rounds", "flagged_rounds", "load1_before", "load1_after",
           "num_threads", "batch_size", "deploy", "device_name", "torch_version")


def main() -> None:
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    mixes, width = recipe["conv_mix"]["mixes"], recipe["model"]["width"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixes", nargs="+", choices=list(mixes),
                        default=recipe["hydra"]["sweeper"]["params"]["conv_mix.mix"].split(","))
    parser.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"])
    parser.add_argument("--sizes", nargs="+", type=int, choices=list(INPUTS), default=list(INPUTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timed calls per cell and round")
    parser.add_argument("--retries", type=int, default=1, help="timings after a contended one (0: flag only)")
    parser.add_argument("--out", type=Path, help="write the rows to this CSV")
    args = parser.parse_args()

    torch.set_num_threads(1)
    policy = ContentionPolicy(retries=args.retries)
    env = environment("cpu", 1)
    cells = {}
    for size in args.sizes:
        for mix in args.mixes:
            net = create_model("mobilenet_v1", conv="dsconv", width=width, stage_conv=mixes[mix], **INPUTS[size]).eval()
            shape = (INPUTS[size]["in_chans"], size, size)
            for runtime in args.runtimes:
                cells[(mix, runtime, size)] = {
                    "net": net, "shape": shape, "prepared": prepare_runtime(runtime, net, num_threads=1, deploy=True),
                    "params": count_params(net), "macs": count_macs(net, shape), "p50s": [], "flagged": 0}
    load_before = os.getloadavg()[0]
    order = random.Random(0)
    for i in range(args.rounds):
        keys = list(cells)
        order.shuffle(keys)
        for key in keys:
            c = cells[key]
            result = guarded(lambda: measure_latency(c["net"], c["shape"], num_threads=1, runtime=c["prepared"],
                                                     throughput_batch_size=1, min_run_time=args.min_run_time), policy)
            c["p50s"].append(result["latency_ms_p50"])
            c["flagged"] += bool(result["contention_flagged"])
        print(f"round {i + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    load_after = os.getloadavg()[0]
    rows = [{"mix": mix, "runtime": runtime, "image_size": size, "in_chans": INPUTS[size]["in_chans"],
             "num_classes": INPUTS[size]["num_classes"], "params": c["params"], "macs": c["macs"],
             "latency_ms_p50": statistics.median(c["p50s"]), "latency_ms_p50_min": min(c["p50s"]),
             "latency_ms_p50_max": max(c["p50s"]), "rounds": len(c["p50s"]), "flagged_rounds": c["flagged"],
             "load1_before": load_before, "load1_after": load_after, "num_threads": 1, "batch_size": 1,
             "deploy": True, "device_name": env.get("cpu_model") or env.get("device_name"),
             "torch_version": torch.__version__}
            for (mix, runtime, size), c in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][1], args.mixes.index(kv[0][0])))]
    print(f"{'mix':<9} {'runtime':<12} {'px':>4} {'params':>9} {'MACs':>12} {'p50 ms':>9} {'[min, max]':>18} {'flagged':>8}")
    for r in rows:
        print(f"{r['mix']:<9} {r['runtime']:<12} {r['image_size']:>4} {r['params']:>9} {r['macs']:>12} "
              f"{r['latency_ms_p50']:>9.3f} [{r['latency_ms_p50_min']:.3f}, {r['latency_ms_p50_max']:.3f}] "
              f"{r['flagged_rounds']:>5}/{r['rounds']}")
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
