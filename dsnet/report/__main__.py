"""``python -m dsnet.report DIR [DIR ...] --out OUT``: the report's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import dsnet.report
from dsnet.report import ReportInputError, build_report
from dsnet.report.discover import show_path


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the report for ``argv`` and prints what it wrote; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m dsnet.report",
                                     description=dsnet.report.__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="directories to search for runs")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the report")
    args = parser.parse_args(argv)
    try:
        summary = build_report(args.dirs, args.out)
    except ReportInputError as err:
        print(f"dsnet.report: error: {err}", file=sys.stderr)
        return 2
    for d, reason in summary.missing:
        print(f"no results: {show_path(d)}: {reason}")
    print(f"wrote {len(summary.files)} files to {summary.out_dir}: {summary.n_runs} runs in "
          f"{summary.n_configs} configurations, {len(summary.missing)} runs without results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
