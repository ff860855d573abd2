"""Turns run directories into tables and plots: accuracy against parameters, MACs and latency.

Usage::

    python -m dsnet.report outputs/ multirun/ --out report/

The report reads result files and never measures. :mod:`~dsnet.report.discover` finds eval runs
(``results.json``) and train runs (``metrics.json``) and joins them; :mod:`~dsnet.report.tables`
aggregates seeds into one row per configuration and compares standard with dsconv;
:mod:`~dsnet.report.markdown` and :mod:`~dsnet.report.plots` write them out. Accuracy in files is
a fraction; tables in Markdown show percent. Outputs go to a temporary directory first and are
moved into ``--out`` only when everything was written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dsnet.report.coverage import missing_columns
from dsnet.report.discover import (
    ReportInputError,
    Run,
    collect_runs,
    find_run_dirs,
    read_train_accuracy,
)
from dsnet.report.markdown import markdown_table, shares_section, theory_section, write_markdown
from dsnet.report.plots import COST_AXES, pareto_front, plot_tradeoffs
from dsnet.report.tables import (
    CONFIG_KEYS,
    LAYER_TYPES,
    PAIR_KEYS,
    RUN_COLUMNS,
    SHARE_ID_KEYS,
    SUMMARY_COLUMNS,
    THEORY_COLUMNS,
    conv_label,
    hparam_columns,
    layer_shares,
    summarise,
    theory_vs_measurement,
    write_csv,
    write_csvs,
)

__all__ = [
    "CONFIG_KEYS", "COST_AXES", "LAYER_TYPES", "PAIR_KEYS", "RUN_COLUMNS", "SHARE_ID_KEYS",
    "SUMMARY_COLUMNS", "THEORY_COLUMNS", "ReportInputError", "ReportSummary", "Run",
    "build_report", "collect_runs", "conv_label", "find_run_dirs", "layer_shares",
    "markdown_table", "missing_columns", "pareto_front", "plot_tradeoffs", "read_train_accuracy",
    "summarise", "theory_vs_measurement", "write_csv",
]


@dataclasses.dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report` wrote, and the lines the command line prints about it."""

    out_dir: Path
    files: list[str]
    n_runs: int
    n_configs: int
    missing: list[tuple[Path, str]]
    notes: list[str]  # missing columns and how to fill them, runs left out of tables


def build_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> ReportSummary:
    """Reads every run under ``dirs`` and writes tables and plots into ``out``.

    Everything is written to a temporary directory beside ``out`` first and moved into place
    file by file only once all of it was written, so a failure leaves ``out`` untouched.

    Raises:
        ReportInputError: a directory does not exist, ``out`` is a file, or no run under ``dirs``
            has results.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"--out exists and is not a directory: {out}")
    runs, missing = collect_runs(dirs)
    if not runs:
        d, reason = missing[0]
        raise ReportInputError(f"none of the {len(missing)} run directories has results "
                               f"(e.g. {d}: {reason})")
    rows = summarise(runs)
    notes = missing_columns(runs)
    theory, shares = theory_vs_measurement(rows), layer_shares(rows)
    sections = {"theory_vs_measurement.md": theory_section(theory),
                "layer_shares.md": shares_section(shares)}
    share_columns = list(dict.fromkeys(k for s in shares for k in s)) or list(SHARE_ID_KEYS)
    tables = {"results.csv": (rows, [*SUMMARY_COLUMNS, *hparam_columns(rows)]),
              "theory_vs_measurement.csv": (theory, THEORY_COLUMNS),
              "layer_shares.csv": (shares, share_columns)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp."))
    try:
        plots = plot_tradeoffs(rows, tmp)
        files = [*write_markdown(tmp, runs, rows, sections, missing, plots, notes),
                 *write_csvs(tmp, runs, tables), *plots]
        out.mkdir(exist_ok=True)
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportSummary(out, files, len(runs), len(rows), missing, notes)
