"""``python -m dsnet.report [DIR ...] [--out OUT]``: the report's command line.

Without ``DIR``, every study under ``--results`` (default ``results``) is reported into
``--studies-out`` (default ``docs/studies``): ``python -m dsnet.report`` in the repository root
regenerates every published table and figure. With ``DIR`` s (run directories, sweeps, or study
folders holding ``runs.csv``) one report goes to ``--out``.

Bad input (a directory that does not exist or holds no runs, an ``--out`` that is a file, a
missing argument) is one line on stderr, ``python -m dsnet.report: error: ...``, exit status 2,
and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import dsnet.report
from dsnet.report import DEFAULT_LATENCY_TOLERANCE, DEFAULT_TOLERANCE, ReportInputError, build_report
from dsnet.report.discover import show_path
from dsnet.report.studies import report_studies

PROG = "python -m dsnet.report"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the error), not the usage text and the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the report for ``argv`` and prints what it wrote; returns the exit code."""
    parser = _OneLineParser(prog=PROG, description=dsnet.report.__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="directories to search for runs, or study folders (runs.csv); none: every study")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="without DIR: the folder of study folders (default: results)")
    parser.add_argument("--studies-out", type=Path, default=Path("docs/studies"),
                        help="without DIR: where each study's report goes (default: docs/studies)")
    parser.add_argument("--out", type=Path, default=Path("report"),
                        help="directory to write the report (default: report)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative cost difference that still counts as equal cost "
                             f"(default {DEFAULT_TOLERANCE:g}, i.e. {DEFAULT_TOLERANCE * 100:g}%%)")
    parser.add_argument("--latency-tolerance", type=float, default=DEFAULT_LATENCY_TOLERANCE,
                        help="the same for measured latency, which carries measurement noise "
                             f"(default {DEFAULT_LATENCY_TOLERANCE:g})")
    parser.add_argument("--include-contended", action="store_true",
                        help="keep runs timed under CPU contention in the ratio tables")
    parser.add_argument("--latency-match", action="append", default=[], metavar="FILE",
                        help="a latency-match record (python -m dsnet.study match STUDY --cost latency): the equal-cost "
                             "table pairs its two widths at the latencies it measured in one process; repeatable")
    args = parser.parse_args(argv)
    if not args.dirs:
        return _report_studies(args.results, args.studies_out)
    try:
        summary = build_report(args.dirs, args.out, tolerance=args.tolerance,
                               latency_tolerance=args.latency_tolerance,
                               include_contended=args.include_contended,
                               latency_matches=args.latency_match)
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for d, reason in summary.missing:
        print(f"no results: {show_path(d)}: {reason}")
    for line in summary.notes:
        print(line)
    print(f"wrote {len(summary.files)} files to {summary.out_dir}: {summary.n_runs} runs in "
          f"{summary.n_configs} configurations, {len(summary.missing)} runs without results")
    return 0


def _report_studies(results: Path, out: Path) -> int:
    try:
        summaries = report_studies(results, out)
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for summary in summaries:
        print(f"wrote {len(summary.files)} files to {summary.out_dir}: {summary.n_runs} runs in "
              f"{summary.n_configs} configurations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
