"""What the allocator policy is worth: images/s with freed memory kept against glibc's defaults.

    python scripts/bench_allocator.py                       # eval and training, 28 and 224 px, batch 1 and 64
    python scripts/bench_allocator.py --sizes 28 --batches 64 --rounds 5 --threads 2

``dsnet.allocator.configure`` acts on the whole process and cannot be undone, so every measurement
runs in a fresh child process (this script with ``--child``), alternating ``keep_freed`` and
``system`` round by round so that drift in machine load hits both. A child builds MobileNetV1
(``--conv``, ``--width``; the small-input stem at 28 px, as train.py and eval.py choose it), runs
``--warmup`` untimed steps, then times ``--steps`` steps: a forward pass in ``inference_mode``
(eval) or forward + backward + SGD step (train). It reports images/s and the page faults of the
timed steps (``getrusage``'s minor faults). The printed ratio is the median over rounds of
keep_freed / system.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(args) -> None:
    import torch

    from dsnet import allocator
    from dsnet.models import create_model

    mode = allocator.configure(args.allocator)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = create_model("mobilenet_v1", conv=args.conv, width=args.width, num_classes=1000 if args.size > 64 else 10,
                       small_input=args.size <= 64)
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.task == "train":
        y = torch.randint(0, net.num_classes, (args.batch,))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.inference_mode():
                net(x)
    for _ in range(args.warmup):
        step()
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"allocator": mode, "img_s": args.steps * args.batch / seconds,
                      "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps}))


def run_child(args, task: str, size: int, batch: int, mode: str) -> dict:
    steps = args.steps or max(3, min(50, int(2000 / batch / (1 if size <= 64 else 16))))
    cmd = [sys.executable, __file__, "--child", "--task", task, "--size", str(size), "--batch", str(batch),
           "--allocator", mode, "--threads", str(args.threads), "--steps", str(steps), "--warmup", str(args.warmup),
           "--conv", args.conv, "--width", str(args.width)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"bench_allocator: child failed ({' '.join(cmd[2:])}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 224], help="input sides in px")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="alternating keep_freed/system rounds per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--conv", default="dsconv")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per child (0: sized by batch and input)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the raw numbers to this file")
    # a child process: one measurement
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--allocator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from dsnet.environment import environment

    print(f"# bench_allocator  MobileNetV1 {args.conv} width {args.width}, {args.threads} thread(s), "
          f"{args.rounds} alternating rounds, load average {os.getloadavg()[0]:.1f} at start")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment().items() if k != "allocator"))
    print("| task | px | batch | system img/s | keep_freed img/s | ratio (median) | faults/step system | keep_freed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    raw = []
    for task in args.tasks:
        for size in args.sizes:
            for batch in args.batches:
                runs = {"system": [], "keep_freed": []}
                for i in range(args.rounds):
                    for mode in (("keep_freed", "system") if i % 2 == 0 else ("system", "keep_freed")):
                        runs[mode].append(run_child(args, task, size, batch, mode))
                med = {m: statistics.median(r["img_s"] for r in v) for m, v in runs.items()}
                faults = {m: statistics.median(r["faults_per_step"] for r in v) for m, v in runs.items()}
                ratio = statistics.median(k["img_s"] / s["img_s"] for k, s in zip(runs["keep_freed"], runs["system"]))
                print(f"| {task} | {size} | {batch} | {med['system']:.1f} | {med['keep_freed']:.1f} | {ratio:.2f} "
                      f"| {faults['system']:.0f} | {faults['keep_freed']:.0f} |", flush=True)
                raw.append({"task": task, "size": size, "batch": batch, "runs": runs, "ratio": ratio})
    print(f"# load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cells": raw}, indent=2))


if __name__ == "__main__":
    main()
