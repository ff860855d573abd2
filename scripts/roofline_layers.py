"""MobileNetV1 standard and dsconv placed on this machine's measured roofline, per layer type.

    python scripts/bench_roofline.py                          # first: the ceilings, results/roofline/<tag>.csv
    python scripts/roofline_layers.py --ceilings results/roofline/intel-xeon-2c.csv
    python scripts/roofline_layers.py --ceilings /tmp/r.csv --width 0.25 --size 64 --passes 2 --out /tmp/rl

For each network (width ``--width``, ``--size`` px, 3 channels, 1000 classes, batch 1, ``--threads``
threads) and each runtime (eager, from ``torch.profiler``; onnxruntime, from its own profiler),
``dsnet.roofline`` gives per layer type (stem, depthwise, pointwise, full 3x3, classifier) its
share of MACs and of time, its intensity under the traffic model (each layer's fp32 input, weights
and output moved once), its achieved GFLOP/s and the share of the roof's bound there; and per
network the time the roof allows (every layer at its bound) against the time measured (the
profiled forward pass, and the sum of its layers). The share of the roof is against the DRAM
ceiling (``--level``); the figure also draws the other measured bandwidths.

Writes ``<out>.csv`` (the per-type table), ``<out>.json`` (everything, with the environment) and
``<out>.png`` (the log-log roofline: one point per layer type, network and runtime).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from dsnet import allocator
from dsnet.environment import environment
from dsnet.models import create_model
from dsnet.roofline import (RUNTIMES, by_kind, layer_points, profile_eager, profile_onnxruntime, read_ceilings,
                            roof_time_ms, theoretical_peak)

KIND_LABEL = {"stem": "stem", "depthwise": "depthwise 3x3", "pointwise": "pointwise 1x1", "full": "full 3x3",
              "grouped": "grouped", "classifier": "classifier"}
FIELDS = ("network", "runtime", "kind", "layers", "macs", "bytes", "macs_share", "time_ms", "time_share",
          "intensity", "gflops", "bound_gflops", "roof_share", "roof_ms")


def measure(conv: str, args) -> dict:
    net = create_model("mobilenet_v1", conv=conv, width=args.width, num_classes=1000, in_chans=3, small_input=False)
    input_size = (3, args.size, args.size)
    points = layer_points(net, input_size)
    forward = {"eager": profile_eager(net, points, input_size, passes=args.passes, num_threads=args.threads),
               "onnxruntime": profile_onnxruntime(net, points, input_size, passes=args.passes,
                                                  num_threads=args.threads)}
    return dict(points=points, forward_ms=forward)


def plot(path: Path, tables: dict, ceilings, others, peak_theory: float | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [0.1, 1000.0]
    for roof, style in zip([ceilings, *others], ["-", "--", ":"]):
        ridge = roof.ridge
        ax.plot([xs[0], ridge, xs[1]], [roof.bandwidth_gbs * xs[0], roof.peak_gflops, roof.peak_gflops], "k" + style,
                lw=1.2, label=f"{roof.level}: {roof.bandwidth_gbs:.0f} GB/s, ridge {ridge:.1f} FLOP/B")
    if peak_theory:
        ax.axhline(peak_theory, color="tab:gray", lw=1, ls="-.", label=f"theoretical fp32 peak {peak_theory:.0f} GFLOP/s")
    ax.text(xs[1], ceilings.peak_gflops * 1.08, f"fp32 GEMM {ceilings.peak_gflops:.0f} GFLOP/s", ha="right", fontsize=8)
    colours = {"stem": "tab:gray", "depthwise": "tab:red", "pointwise": "tab:blue", "full": "tab:green",
               "grouped": "tab:purple", "classifier": "tab:orange"}
    marks = {"standard": "s", "dsconv": "o"}
    for (network, runtime), rows in tables.items():
        for kind, row in rows.items():
            ax.scatter(row["intensity"], row["gflops"], marker=marks[network], s=55, color=colours[kind],
                       facecolors=colours[kind] if runtime == "eager" else "none", linewidths=1.5, zorder=3)
    for kind, colour in colours.items():
        if any(kind in rows for rows in tables.values()):
            ax.scatter([], [], color=colour, marker="o", label=KIND_LABEL[kind])
    ax.scatter([], [], marker="s", color="k", label="standard (square)")
    ax.scatter([], [], marker="o", color="k", facecolors="none", label="dsconv (circle); hollow: onnxruntime")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte, fp32 traffic model)",
           ylabel="achieved GFLOP/s", xlim=xs, ylim=(0.5, max(peak_theory or 0, ceilings.peak_gflops) * 2))
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ceilings", required=True, help="bench_roofline.py's CSV")
    parser.add_argument("--level", default="DRAM", help="the bandwidth the roof's share is taken against")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passes", type=int, default=20, help="profiled forward passes per runtime")
    parser.add_argument("--out", default=None, help="path stem (default: results/roofline/mobilenet_v1-w<width>-<size>px-<threads>t)")
    args = parser.parse_args(argv)
    try:
        ceilings = read_ceilings(args.ceilings, args.threads, args.level)
    except ValueError as err:
        parser.error(str(err))
    others = []
    for level in ("L2", "L3", "DRAM"):
        if level != args.level:
            try:
                others.append(read_ceilings(args.ceilings, args.threads, level))
            except ValueError:
                pass  # a CSV without that level: draw what there is
    allocator.configure("keep_freed")
    load_start = os.getloadavg()[0]
    print(f"# roofline_layers  MobileNetV1 width {args.width:g}, {args.size} px, batch 1, {args.threads} thread(s), "
          f"{args.passes} passes, load {load_start:.2f}")
    print(f"# roof: {ceilings.peak_gflops:.1f} GFLOP/s, {args.level} {ceilings.bandwidth_gbs:.1f} GB/s, "
          f"ridge {ceilings.ridge:.2f} FLOP/byte ({args.ceilings})")
    env = environment("cpu", args.threads)
    print("# " + "  ".join(f"{k}={v}" for k, v in env.items()))

    tables, totals = {}, {}
    for conv in ("standard", "dsconv"):
        measured = measure(conv, args)
        for runtime in RUNTIMES:
            tables[conv, runtime] = by_kind(measured["points"], ceilings, runtime)
            for roof in others:  # the share of each other measured roof: where the data may have come from
                for kind, row in by_kind(measured["points"], roof, runtime).items():
                    tables[conv, runtime][kind][f"roof_share_{roof.level}"] = row["roof_share"]
            totals[conv, runtime] = dict(roof_ms=roof_time_ms(measured["points"], ceilings),
                                         forward_ms=measured["forward_ms"][runtime],
                                         layers_ms=sum(p.times_ms[runtime] for p in measured["points"]))
    extra = [f"roof_share_{roof.level}" for roof in others]
    print(f"\n| network | runtime | layer type | MACs | time | GFLOP/s | FLOP/byte | roof bound GFLOP/s | share of {args.level} roof | "
          + " | ".join(f"share of {roof.level} roof" for roof in others) + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(others))
    for (network, runtime), rows in tables.items():
        for kind, r in rows.items():
            print(f"| {network} | {runtime} | {KIND_LABEL[kind]} | {100 * r['macs_share']:.1f} % | "
                  f"{100 * r['time_share']:.1f} % | {r['gflops']:.1f} | {r['intensity']:.2f} | "
                  f"{r['bound_gflops']:.1f} | {100 * r['roof_share']:.1f} % | "
                  + " | ".join(f"{100 * r[key]:.1f} %" for key in extra) + " |")
    print("\n| network | runtime | roof allows (ms) | layers measured (ms) | forward measured (ms) | measured / roof |")
    print("|---|---|---:|---:|---:|---:|")
    for (network, runtime), t in totals.items():
        print(f"| {network} | {runtime} | {t['roof_ms']:.3f} | {t['layers_ms']:.3f} | {t['forward_ms']:.3f} | "
              f"{t['forward_ms'] / t['roof_ms']:.1f}x |")
    load_end = os.getloadavg()[0]
    print(f"\n# load {load_end:.2f} at end")

    out = Path(args.out or f"results/roofline/mobilenet_v1-w{args.width:g}-{args.size}px-{args.threads}t")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS + tuple(extra))
        writer.writeheader()
        for (network, runtime), rows in tables.items():
            for kind, r in rows.items():
                writer.writerow({"network": network, "runtime": runtime, "kind": kind,
                                 **{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}})
    record = dict(args=vars(args), environment=env, load=[load_start, load_end],
                  ceilings=dict(peak_gflops=ceilings.peak_gflops, bandwidth_gbs=ceilings.bandwidth_gbs,
                                level=ceilings.level, ridge=ceilings.ridge),
                  tables={f"{n}/{r}": rows for (n, r), rows in tables.items()},
                  totals={f"{n}/{r}": t for (n, r), t in totals.items()})
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    plot(out.with_suffix(".png"), tables, ceilings, others, theoretical_peak(args.ceilings, args.threads))
    print(f"# wrote {out}.csv, .json, .png")
    return record


if __name__ == "__main__":
    main()
