"""CPU latency of several MobileNetV1 variants, measured in alternation, for a loaded shared machine.

    python scripts/latency_interleaved.py standard:0.25 dsconv:0.25 --threads 1 --rounds 15
    python scripts/latency_interleaved.py dsconv:1.0 dsconv:0.75 dsconv:0.5 dsconv:0.25 --size 28

eval.py times one network per process, so on a machine that other people's jobs load unevenly two
networks timed minutes apart see different loads, and their ratio is mostly noise. Here every
round times each network once (one ``dsnet.latency.measure_latency`` call each: warm-up excluded,
median of ``torch.utils.benchmark`` blocks), in a fresh order per round, so a burst of foreign load
hits all of them alike. Reported per network: the median and the minimum over rounds of the
per-round p50 at batch size 1, and the same for throughput at ``--batch-size``. The minimum is the
estimate least inflated by foreign load; the median is what a typical moment gives. Networks have
random weights: latency does not depend on their values. The input is Fashion-MNIST-shaped
(``--in-chans 1 --num-classes 10``) through the small-input stem unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from dsnet.environment import environment
from dsnet.latency import measure_latency
from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model


def parse_variant(text: str) -> tuple[str, float]:
    """``"dsconv:0.5"`` -> ``("dsconv", 0.5)``."""
    conv, sep, width = text.partition(":")
    try:
        return conv, float(width) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CONV:WIDTH like dsconv:0.5, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="CONV:WIDTH")
    parser.add_argument("--size", type=int, default=28, help="input side in pixels")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--imagenet-stem", action="store_true", help="the stride-2 stem instead of the small-input one")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; each times every network once")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the throughput run")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed measurement")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()

    input_size = (args.in_chans, args.size, args.size)
    nets = {f"{conv} w{width:g}": create_model("mobilenet_v1", conv=conv, width=width, num_classes=args.num_classes,
                                                in_chans=args.in_chans, small_input=not args.imagenet_stem)
            for conv, width in args.variants}
    rounds: dict[str, list[dict]] = {name: [] for name in nets}
    order = random.Random(0)
    for i in range(args.rounds):
        names = list(nets)
        order.shuffle(names)  # no network always runs first (cold) or right after a heavy one
        for name in names:
            rounds[name].append(measure_latency(nets[name], input_size, num_threads=args.threads, batch_size=1,
                                                throughput_batch_size=args.batch_size,
                                                min_run_time=args.min_run_time))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(
            f"{n} {rounds[n][-1]['latency_ms_p50']:.2f} ms" for n in nets), flush=True)

    rows = {}
    for name, net in nets.items():
        p50 = [r["latency_ms_p50"] for r in rounds[name]]
        tput = [r["throughput_img_s"] for r in rounds[name]]
        rows[name] = dict(params=count_params(net), macs=count_macs(net, input_size),
                          latency_ms_p50_median=statistics.median(p50), latency_ms_p50_min=min(p50),
                          throughput_img_s_median=statistics.median(tput), throughput_img_s_max=max(tput))
    print(f"\n{args.rounds} rounds, input {input_size}, {args.threads} thread(s), "
          f"throughput at batch {args.batch_size}")
    print("| network | params (M) | MACs (M) | latency p50 median / min (ms) | throughput median / max (img/s) |")
    print("|:---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.2f} | {r['latency_ms_p50_median']:.2f} / "
              f"{r['latency_ms_p50_min']:.2f} | {r['throughput_img_s_median']:.0f} / {r['throughput_img_s_max']:.0f} |")
    env = environment("cpu", args.threads)
    print("environment:", json.dumps(env))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args) | {"variants": [list(v) for v in args.variants]}, "rows": rows,
                       "rounds": rounds, "environment": env}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
