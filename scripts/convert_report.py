"""Print the conversion report of timm or torchvision networks (dsnet.models.convert), no training.

    python scripts/convert_report.py timm:resnet18 timm:convnext_atto timm:efficientnet_b0 --conv dsconv
    python scripts/convert_report.py torchvision:resnet50 --conv group --groups 4 --image-size 160

Each network is built with random weights (nothing is downloaded), converted, and its report printed:
layers per kind, parameters and multiply-adds before and after. A network that cannot be converted
prints its one-line reason and makes the exit status 1; the others are still reported.
"""

from __future__ import annotations

import argparse
import sys

from dsnet.blocks import CONV_TYPES
from dsnet.models import create_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="timm:<name> or torchvision:<name>")
    parser.add_argument("--conv", default="dsconv", choices=CONV_TYPES)
    parser.add_argument("--groups", type=int, help="groups of the k×k step, for --conv group")
    parser.add_argument("--convert-stem", action="store_true", help="convert the first convolution too")
    parser.add_argument("--image-size", type=int, default=224, help="image side (px) the MACs are counted for")
    args = parser.parse_args(argv)
    failed = False
    for source in args.sources:
        try:
            net = create_model(source, conv=args.conv, groups=args.groups, convert_stem=args.convert_stem,
                               image_size=args.image_size)
        except ValueError as err:
            print(f"{source}: refused: {err}", flush=True)
            failed = True
            continue
        print("\n".join(net.report.lines()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
