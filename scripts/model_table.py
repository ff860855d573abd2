"""Parameters and multiply-adds of MobileNetV1, standard vs depthwise-separable, across widths.

    python scripts/model_table.py                 # 224 px, 1000 classes: the paper's setting
    python scripts/model_table.py --size 28 --in-chans 1 --num-classes 10 --small-input   # Fashion-MNIST

Prints a Markdown table next to the paper's figures (Howard et al. 2017, Tables 4 and 6), which
are printed only for the paper's setting.
"""

from __future__ import annotations

import argparse

from dsnet.models.cost import count_macs, count_params
from dsnet.models import create_model

# Howard et al. 2017: (width, conv) -> (million parameters, million multiply-adds), Tables 4 and 6.
PAPER = {
    (1.0, "dsconv"): (4.2, 569), (1.0, "standard"): (29.3, 4866),
    (0.75, "dsconv"): (2.6, 325), (0.5, "dsconv"): (1.3, 149), (0.25, "dsconv"): (0.5, 41),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="mobilenet_v1")
    parser.add_argument("--size", type=int, default=224, help="input resolution in pixels")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--small-input", action="store_true", help="the small-image stem (stride 1)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    args = parser.parse_args()
    paper_setting = (args.arch, args.size, args.in_chans, args.num_classes, args.small_input) == (
        "mobilenet_v1", 224, 3, 1000, False)

    print(f"{args.arch}, {args.size}×{args.size}×{args.in_chans} input, {args.num_classes} classes"
          f"{', small-input stem' if args.small_input else ''}\n")
    print("| width | conv | params | MACs | params ratio | MACs ratio | paper params | paper MACs |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        counts = {}
        for conv in ("standard", "dsconv"):
            model = create_model(args.arch, conv=conv, width=width, num_classes=args.num_classes,
                                 in_chans=args.in_chans, small_input=args.small_input)
            counts[conv] = (count_params(model), count_macs(model, (args.in_chans, args.size, args.size)))
        for conv, (params, macs) in counts.items():
            ratio_p = counts["standard"][0] / params
            ratio_m = counts["standard"][1] / macs
            paper = PAPER.get((width, conv)) if paper_setting else None
            paper_cols = f"{paper[0]}M | {paper[1]}M" if paper else "– | –"
            print(f"| {width} | {conv} | {params / 1e6:.3f}M | {macs / 1e6:.1f}M | {ratio_p:.2f}× | {ratio_m:.2f}× | {paper_cols} |")


if __name__ == "__main__":
    main()
