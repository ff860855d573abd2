"""Time per layer type beside the paper's Table 2 (share of parameters and multiply-adds).

    python scripts/layer_time.py                              # MobileNetV1 dsconv and standard, width 1.0, 224 px
    python scripts/layer_time.py --width 0.5 --size 28 --in-chans 1 --num-classes 10 --passes 20

``dsnet.profiling.layer_type_shares`` profiles eager forward passes (batch ``--batch-size``, one
thread by default) with ``torch.profiler`` and charges each leaf module's time to a layer type:
stem, depthwise, pointwise, full k×k, grouped, head; norms and activations to the convolution they
follow; the rest (Python between modules) is "other". ``dsnet.profiling.onnxruntime_layer_type_times``
does the same with ONNX Runtime's own profiler on the exported network (BN and ReLU fused into the
convs; its layout conversions are "other"). The machine's load is printed beside it: a
profile taken under foreign load is inflated unevenly, so take it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dsnet import allocator
from dsnet.environment import environment
from dsnet.models import create_model
from dsnet.profiling import TIME_TYPES, layer_type_shares, onnxruntime_layer_type_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--convs", nargs="+", default=["dsconv", "standard"])
    parser.add_argument("--arch", default="mobilenet_v1")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allocator", default="keep_freed", choices=["keep_freed", "system"])
    parser.add_argument("--json", help="also write the shares to this file")
    args = parser.parse_args()
    allocator.configure(args.allocator)
    print(f"# layer_time  {args.arch} width {args.width:g}, {args.size} px, batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.passes} passes, eager, load {os.getloadavg()[0]:.1f}")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment().items()))
    out = {}
    for conv in args.convs:
        net = create_model(args.arch, conv=conv, width=args.width, num_classes=args.num_classes,
                           in_chans=args.in_chans, small_input=args.size <= 64)
        shares = out[conv] = layer_type_shares(net, (args.in_chans, args.size, args.size), batch_size=args.batch_size,
                                               passes=args.passes, num_threads=args.threads)
        ort_ms = onnxruntime_layer_type_times(net, (args.in_chans, args.size, args.size), batch_size=args.batch_size,
                                              passes=args.passes, num_threads=args.threads)
        for kind in TIME_TYPES:
            shares[kind]["onnxruntime_ms"] = ort_ms[kind]
        total_ms, ort_total = sum(s["time_ms"] for s in shares.values()), sum(ort_ms.values())
        print(f"\n{conv}: {total_ms:.2f} ms per forward pass in eager (torch.profiler), "
              f"{ort_total:.2f} ms in onnxruntime (its profiler)")
        print("| layer type | params | MACs | time, eager | ms per pass, eager | time, onnxruntime | ms, onnxruntime |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind in TIME_TYPES:
            s = shares[kind]
            print(f"| {kind} | {100 * s['params']:.2f} % | {100 * s['macs']:.2f} % | {100 * s['time']:.1f} % "
                  f"| {s['time_ms']:.3f} | {100 * ort_ms[kind] / ort_total:.1f} % | {ort_ms[kind]:.3f} |")
    print(f"\n# load {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "environment": environment(), "shares": out}, indent=2))


if __name__ == "__main__":
    main()
