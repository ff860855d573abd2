"""A study's tidy tables: ``runs.csv`` (one row per run) and ``curves.csv`` (one row per run and epoch).

These two files are a study's results; the report reads them back into :class:`~dsnet.report.discover.Run` s
and computes every table and figure from them, exactly as from the run directories they were
collected from (``dsnet.study.collect`` writes them).

``runs.csv`` has one column per :class:`Run` value (the results keys of :mod:`dsnet.results`, the
train run's ``epochs``, ``lr``, ``val_acc_best``, ``hparams/*``, ...), plus:

* ``run``: the run's key, its train run's directory relative to the collected root (the eval's when
  it was never trained); ``eval``: the eval run's directory relative to the same root, empty
  without an eval (then the row has no timing);
* ``top1_source``: ``results.json`` or ``metrics.json``, where top-1 came from;
* ``macs_breakdown.<layer type>.<params|macs>``: the eval's counted cost per layer type;
* ``train_device``, ``train_precision``, ``train_channels_last``: how the network was trained;
* ``mix``: the conv mix (``conv_mix.mix``) of a network with one conv type per stage, where it has one;
* ``wall_s`` and ``cpu_s``: wall and CPU seconds of the training processes, where a study recorded
  them (``time_per_epoch_s`` is Lightning's own, for every run).

An empty cell is unknown (None). Floats are written with Python's ``repr``, so they read back
bit for bit. ``curves.csv`` has ``run``, ``epoch`` (epochs completed, from 1) and one column per
metric Lightning logged (``train/loss_epoch``, ``val/acc``, ...), the last value logged in that epoch.
"""

from __future__ import annotations

import csv
import io
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsnet.report.discover import CURVE_METRICS, ReportInputError, Run
from dsnet.results import RESULT_KEYS, ResultsRecord, write_text_atomic

ID_COLUMNS = ("run", "eval", "top1_source")
BREAKDOWN = "macs_breakdown"
# Columns read as text or booleans (the rest are numbers: a cell reads as an int when it can, else
# a float, so 0 and 0.0 come back as written), and the booleans of ResultsRecord.
_TYPES: dict[str, type] = {
    "run": str, "eval": str, "top1_source": str, "train_device": str, "train_precision": str,
    "train_channels_last": bool, "stage": str, "mix": str,
}
for _name, _hint in typing.get_type_hints(ResultsRecord).items():
    _kinds = [t for t in (bool, str) if t in (typing.get_args(_hint) or (_hint,))]
    if _kinds:
        _TYPES.setdefault(_name, _kinds[0])


def _cell(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _parse(column: str, text: str) -> Any:
    """A cell back to its value: text or a boolean where the column says so, else a number (an
    int when it reads as one), else text."""
    kind = _TYPES.get(column)
    if text == "" or kind is str:
        return text or None
    if kind is bool or text in ("True", "False"):
        if text not in ("True", "False"):
            raise ReportInputError(f"column {column!r}: {text!r} is not True or False")
        return text == "True"
    for guess in (int, float):
        try:
            return guess(text)
        except ValueError:
            pass
    return text


def write_table(path: str | os.PathLike, rows: Sequence[dict[str, Any]], first: Sequence[str] = ()) -> None:
    """Writes ``rows`` as CSV atomically: the ``first`` columns, then every other key in order of appearance."""
    columns = list(dict.fromkeys([*first, *(k for r in rows for k in r)]))
    lines = [columns, *([_cell(r.get(k)) for k in columns] for r in rows)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    write_text_atomic(path, out.getvalue())


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A tidy CSV back as rows of typed values (never code: cells are only parsed as numbers,
    booleans and text).

    Raises:
        ReportInputError: the file is missing, empty or has a cell of the wrong type.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as err:
        raise ReportInputError(f"cannot read {path}: {err.strerror}") from None
    if not columns:
        raise ReportInputError(f"{path}: empty file, expected a header row")
    try:
        return [{k: _parse(k, v or "") for k, v in row.items() if k is not None} for row in rows]
    except ReportInputError as err:
        raise ReportInputError(f"{path}: {err}") from None


def run_row(run: Run, key: str, eval_key: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``runs.csv`` row of ``run``: its key, its values, its eval's breakdown per layer type."""
    row = {"run": key, "eval": eval_key, "top1_source": run.top1_source or None, **run.values, **(extra or {})}
    if run.record is not None:
        for layer, counts in run.record.macs_breakdown.items():
            for total in ("params", "macs"):
                row[f"{BREAKDOWN}.{layer}.{total}"] = counts[total]
    return row


def row_run(row: dict[str, Any], root: Path, curves: dict[str, dict[int, float]] | None = None) -> Run:
    """The :class:`Run` a ``runs.csv`` row stands for; ``root`` makes its keys paths (for labels only)."""
    values = {k: v for k, v in row.items()
              if k not in ID_COLUMNS and not k.startswith(f"{BREAKDOWN}.")}
    record = None
    if row.get("eval") is not None:
        breakdown: dict[str, dict[str, int]] = {}
        for k, v in row.items():
            if k.startswith(f"{BREAKDOWN}.") and v is not None:
                _, layer, total = k.split(".")
                breakdown.setdefault(layer, {})[total] = v
        hparams = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("hparams/")}
        data = {k: row.get(k) for k in RESULT_KEYS if k in row} | {BREAKDOWN: breakdown,
                                                                    "hparams": hparams or None}
        record = ResultsRecord.from_dict(data, source=f"{root / 'runs.csv'}: run {row['run']}")
    train_dir = root / row["run"] if row.get("eval") != row["run"] else None
    run_dir = root / row["eval"] if row.get("eval") is not None else root / row["run"]
    return Run(run_dir, values, record, train_dir, row.get("top1_source") or "", curves or {})


def read_study(study_dir: str | os.PathLike) -> list[Run]:
    """The runs of a study folder (``runs.csv``, and ``curves.csv`` where present).

    Raises:
        ReportInputError: ``runs.csv`` is missing or unreadable, or a row is not a valid run.
    """
    study_dir = Path(study_dir)
    rows = read_table(study_dir / "runs.csv")
    curves: dict[str, dict[str, dict[int, float]]] = {}
    if (study_dir / "curves.csv").is_file():
        for c in read_table(study_dir / "curves.csv"):
            for metric in CURVE_METRICS:
                if c.get(metric) is not None:
                    curves.setdefault(c["run"], {}).setdefault(metric, {})[c["epoch"]] = c[metric]
    try:
        return [row_run(r, study_dir, curves.get(r["run"])) for r in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise ReportInputError(f"{study_dir / 'runs.csv'}: {err}") from None
