"""Turns run directories into tables and plots: accuracy against parameters, MACs and latency.

Usage::

    python -m dsnet.report outputs/train/multiruns/<time> outputs/eval --out report/
    python -m dsnet.report results/fashion_mnist --out report/   # a study's tidy tables
    python -m dsnet.report                                      # every study: results/ -> docs/studies/

The report reads result files and never measures. A study folder's ``runs.csv`` and ``curves.csv``
(:mod:`~dsnet.report.tidy`) read back into the same runs as the run directories they were collected
from; :mod:`~dsnet.report.studies` reports every study. :mod:`~dsnet.report.discover` finds train runs
(``metrics.json``) and eval runs (``results.json``) and joins them; :mod:`~dsnet.report.tables`
aggregates seeds into one row per configuration and measurement environment;
:mod:`~dsnet.report.stats` gives intervals, :mod:`~dsnet.report.compare` the paired,
convergence and equal-cost comparisons, :mod:`~dsnet.report.coverage` the columns no run fills;
:mod:`~dsnet.report.markdown`, :mod:`~dsnet.report.compare_md`, :mod:`~dsnet.report.plots` and
:mod:`~dsnet.report.curves` and :mod:`~dsnet.report.sensitivity` write them out, and :mod:`~dsnet.report.predictors` ranks
which counted cost predicts latency. Accuracy in files is a fraction; tables in Markdown
show percent. Outputs go to a temporary directory first and are moved into ``--out`` only when
everything was written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dsnet.report.compare import (
    COMPARISON_COLUMNS,
    COMPARISON_SEED_COLUMNS,
    CONVERGENCE_COLUMNS,
    CONVERGENCE_SEED_COLUMNS,
    DEFAULT_LATENCY_TOLERANCE,
    DEFAULT_TOLERANCE,
    EQUAL_COST_COLUMNS,
    comparisons,
    comparisons_by_seed,
    convergence,
    convergence_by_seed,
    equal_cost,
    latency_match_pairs,
)
from dsnet.report.compare_md import (
    comparisons_section,
    convergence_section,
    equal_cost_section,
    hparams_section,
)
from dsnet.report.coverage import missing_columns
from dsnet.report.curves import plot_learning_curves
from dsnet.report.discover import (
    ReportInputError,
    Run,
    collect_runs,
    find_run_dirs,
    read_latency_match,
    read_train_accuracy,
    show_path,
)
from dsnet.report.markdown import markdown_table, shares_section, theory_section, write_markdown
from dsnet.report.plots import COST_AXES, pareto_front, plot_tradeoffs
from dsnet.report.predictors import PREDICTOR_COLUMNS, plot_predictors, predictor_rows, predictors_section
from dsnet.report.sensitivity import plot_lr_sensitivity
from dsnet.report.tables import (
    CONFIG_KEYS,
    CONTENTION_LIMIT,
    LAYER_TYPES,
    PAIR_KEYS,
    RUN_COLUMNS,
    SHARE_ID_KEYS,
    SUMMARY_COLUMNS,
    THEORY_COLUMNS,
    conv_label,
    hparam_columns,
    is_contended,
    layer_shares,
    one_per_config,
    summarise,
    summary_columns,
    theory_vs_measurement,
    write_csv,
    write_csvs,
)
from dsnet.report.tidy import read_study

__all__ = [
    "CONFIG_KEYS", "COST_AXES", "DEFAULT_LATENCY_TOLERANCE", "DEFAULT_TOLERANCE", "LAYER_TYPES", "PAIR_KEYS",
    "RUN_COLUMNS", "SHARE_ID_KEYS", "SUMMARY_COLUMNS", "THEORY_COLUMNS", "ReportInputError", "ReportSummary", "Run",
    "build_report", "collect_runs", "comparisons", "comparisons_by_seed", "conv_label", "convergence", "equal_cost",
    "find_run_dirs", "latency_match_pairs", "layer_shares", "markdown_table", "missing_columns", "pareto_front",
    "plot_tradeoffs", "read_runs", "read_study", "read_train_accuracy", "summarise", "theory_vs_measurement",
    "write_csv",
]


def read_runs(dirs: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The runs of ``dirs``: a study folder (one holding ``runs.csv``) through its tidy tables, any
    other directory through the run directories below it; and the run directories without results."""
    studies = [d for d in dirs if (Path(d) / "runs.csv").is_file()]
    others = [d for d in dirs if d not in studies]
    runs, missing = collect_runs(others) if others else ([], [])
    for d in studies:
        runs += read_study(d)
    return runs, missing


@dataclasses.dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report` wrote, and the lines the command line prints about it."""

    out_dir: Path
    files: list[str]
    n_runs: int
    n_configs: int  # configurations; a table row is one in one measurement environment
    missing: list[tuple[Path, str]]
    notes: list[str]  # "missing: ..." columns and how to fill them, "left out: ..." runs


def build_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 tolerance: float = DEFAULT_TOLERANCE, latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
                 include_contended: bool = False,
                 latency_matches: Sequence[str | os.PathLike] = ()) -> ReportSummary:
    """Reads every run under ``dirs`` and writes tables and plots into ``out``.

    Args:
        tolerance: relative cost difference up to which two configurations count as equal cost.
        latency_tolerance: the same for measured latency (wider: it carries measurement noise).
        include_contended: keep runs timed under CPU contention in the ratio tables (theory vs
            measurement, equal latency); by default only the results table shows their timings.
        latency_matches: latency-match records (``python -m dsnet.study match STUDY --cost latency``) whose two
            widths the equal-cost table pairs at the latencies the record measured in one process.

    Everything is written to a temporary directory beside ``out`` first and moved into place
    file by file only once all of it was written, so a failure leaves ``out`` untouched.

    Raises:
        ReportInputError: a directory does not exist, ``out`` is a file, ``tolerance`` is
            negative, a latency-match record cannot be read, or no run under ``dirs`` has results.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"--out exists and is not a directory: {out}")
    for flag, value in (("--tolerance", tolerance), ("--latency-tolerance", latency_tolerance)):
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ReportInputError(f"{flag} must be a fraction in [0, 1) (0.05 = 5%), got {value!r}")
    runs, missing = read_runs(dirs)
    if not runs:
        d, reason = missing[0]
        raise ReportInputError(f"none of the {len(missing)} run directories has results "
                               f"(e.g. {d}: {reason})")
    return write_report(runs, missing, out, tolerance=tolerance, latency_tolerance=latency_tolerance,
                        include_contended=include_contended, latency_matches=latency_matches)


def write_report(runs: Sequence[Run], missing: Sequence[tuple[Path, str]], out: str | os.PathLike, *,
                 tolerance: float = DEFAULT_TOLERANCE, latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
                 include_contended: bool = False, latency_matches: Sequence[str | os.PathLike] = (),
                 index: str = "results.md") -> ReportSummary:
    """Writes the tables and plots of ``runs`` into ``out`` (see :func:`build_report`); ``index``
    names the Markdown file that holds every table."""
    out = Path(out)
    records = [(show_path(Path(p).resolve()), read_latency_match(p)) for p in latency_matches]
    rows = summarise(runs)
    contended = [r for r in runs if r.record is not None and is_contended(r)]
    quiet_rows = summarise(runs, [r for r in runs if include_contended or r not in contended])
    notes = [f"missing: {line}" for line in missing_columns(runs)]
    if contended and not include_contended:
        notes.append(f"left out: {len(contended)} of {sum(r.record is not None for r in runs)} "
                     "eval runs were timed under CPU contention (cpu_contention > "
                     f"{CONTENTION_LIMIT:.0%} or contention_flagged); the ratio tables leave their "
                     "timings out; --include-contended keeps them")
    theory, shares = theory_vs_measurement(quiet_rows), layer_shares(rows)
    compared, matched, converged = comparisons(rows), equal_cost(quiet_rows, tolerance, latency_tolerance), convergence(rows)
    by_seed, compared_by_seed = convergence_by_seed(rows), comparisons_by_seed(rows)
    for source, record in records:
        pairs = latency_match_pairs(rows, record, source)
        matched += pairs
        if not pairs:
            notes.append(f"unpaired: --latency-match {source}: no two configurations with top-1 of "
                         f"{record['target_conv']} w{record['target_width']:g} and {record['conv']} "
                         f"w{record['width']:g} alike in everything else")
    hparams = hparam_columns(rows)
    predictors = predictor_rows(quiet_rows)
    sections = {"theory_vs_measurement.md": theory_section(theory),
                "comparisons.md": comparisons_section(compared, compared_by_seed),
                "convergence.md": convergence_section(converged, by_seed),
                "equal_cost.md": equal_cost_section(matched, tolerance, latency_tolerance, records),
                "hyperparameters.md": hparams_section(rows, hparams),
                "layer_shares.md": shares_section(shares),
                "cost_predictors.md": predictors_section(predictors)}
    share_columns = list(dict.fromkeys(k for s in shares for k in s)) or list(SHARE_ID_KEYS)
    tables = {"results.csv": (rows, [*summary_columns(rows), *hparams]),
              "theory_vs_measurement.csv": (theory, THEORY_COLUMNS),
              "comparisons.csv": (compared, COMPARISON_COLUMNS),
              "comparisons_by_seed.csv": (compared_by_seed, COMPARISON_SEED_COLUMNS),
              "convergence.csv": (converged, CONVERGENCE_COLUMNS),
              "convergence_by_seed.csv": (by_seed, CONVERGENCE_SEED_COLUMNS),
              "equal_cost.csv": (matched, EQUAL_COST_COLUMNS),
              "layer_shares.csv": (shares, share_columns),
              "cost_predictors.csv": (predictors, PREDICTOR_COLUMNS)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp."))
    try:
        plots = [*plot_tradeoffs(rows, tmp), *plot_learning_curves(runs, tmp), *plot_lr_sensitivity(rows, tmp),
                 *plot_predictors(quiet_rows, tmp)]
        files = [*write_markdown(tmp, runs, rows, sections, missing, plots, notes, index),
                 *write_csvs(tmp, runs, tables), *plots]
        out.mkdir(exist_ok=True)
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportSummary(out, files, len(runs), len(one_per_config(rows)), list(missing), notes)
