"""What the deploy form buys per runtime: the training graph against the deploy form, side by side.

    python scripts/bench_deploy.py                                   # 4 networks x eager, onnxruntime x 1, 2 threads
    python scripts/bench_deploy.py --runtimes eager compile --threads 1 --rounds 9

The deploy form (``dsnet.models.deploy.deploy_form``) folds batch norm into the convolution before it
and fuses re-parameterised branches; ``latency.deploy=true`` times it by default. For each network
(MobileNetV1 standard and dsconv at width 1.0, MobileNetV2, ResNet-18; 224 px, 1000 classes, batch
1), runtime and thread count, both forms are built once (export and compilation kept out of the
timing), then timed in alternation for ``--rounds`` rounds, each round one
``dsnet.latency.measure_latency`` call per form under ``dsnet.contention.guarded``. Printed per cell:
each form's p50 (median over rounds of each round's p50) and the speed-up, the median of the
per-round ratios training / deploy with their range, so that a drift of the machine's speed between
rounds cancels. Needs a quiet machine: rounds flagged as contended are counted in the table.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from dsnet.contention import ContentionPolicy, guarded
from dsnet.environment import environment
from dsnet.latency import measure_latency, prepare_runtime
from dsnet.models import create_model

NETWORKS = {  # name -> create_model arguments, at the papers' ImageNet settings
    "mobilenet_v1 standard": {"arch": "mobilenet_v1", "conv": "standard", "width": 1.0},
    "mobilenet_v1 dsconv": {"arch": "mobilenet_v1", "conv": "dsconv", "width": 1.0},
    "mobilenet_v2": {"arch": "mobilenet_v2", "conv": "dsconv", "width": 1.0},
    "resnet18": {"arch": "resnet18", "conv": "standard", "width": 1.0},
}
INPUT_SIZE = (3, 224, 224)


def bench_cell(args, network: str, runtime: str, threads: int, policy: ContentionPolicy) -> dict:
    net = create_model(num_classes=1000, in_chans=3, small_input=False, **NETWORKS[network]).eval()
    forms = {deploy: prepare_runtime(runtime, net, num_threads=threads, deploy=deploy) for deploy in (False, True)}
    p50s = {False: [], True: []}
    flagged = 0
    for i in range(args.rounds):
        for deploy in ((False, True) if i % 2 == 0 else (True, False)):
            result = guarded(lambda: measure_latency(net, INPUT_SIZE, num_threads=threads, runtime=forms[deploy],
                                                     throughput_batch_size=1, min_run_time=args.min_run_time), policy)
            flagged += result["contention_flagged"]
            p50s[deploy].append(result["latency_ms_p50"])
    ratios = [t / d for t, d in zip(p50s[False], p50s[True])]
    return {"network": network, "runtime": runtime, "threads": threads,
            "training_ms": statistics.median(p50s[False]), "deploy_ms": statistics.median(p50s[True]),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "flagged_rounds": flagged, "rounds": 2 * args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per form (default 5)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timed calls per round")
    parser.add_argument("--retries", type=int, default=2, help="timings after a contended one (0: flag only)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    policy = ContentionPolicy(retries=args.retries)
    print(json.dumps(environment("cpu", max(args.threads)), default=str))
    print(f"{'network':<22} {'runtime':<12} {'thr':>3} {'training ms':>12} {'deploy ms':>10} "
          f"{'speed-up [range]':>22} {'flagged':>8}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for runtime in args.runtimes:
            for network in args.networks:
                row = bench_cell(args, network, runtime, threads, policy)
                rows.append(row)
                print(f"{network:<22} {runtime:<12} {threads:>3} {row['training_ms']:>12.2f} {row['deploy_ms']:>10.2f} "
                      f"{row['speedup']:>8.2f}x [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}] "
                      f"{row['flagged_rounds']:>5}/{row['rounds']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
