"""Run directories to a study's tidy tables: ``runs.csv`` and ``curves.csv`` (:mod:`dsnet.report.tidy`).

A run directory is what ``train.py`` leaves (``metrics.json``, the resolved ``config.yaml``,
Lightning's ``csv/version_N/metrics.csv``) and what ``eval.py`` leaves beside it or inside it
(``eval/results.json``); :func:`dsnet.report.discover.collect_runs` finds and joins them. Each run
becomes one row keyed by its directory relative to the root collected (``<stage>/<job>`` for a
study's runs dir), and one row per epoch of its CSV logs. Checkpoints and logs stay where they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dsnet.report.discover import ReportInputError, Run, collect_runs, read_curves
from dsnet.report.tidy import read_table, run_row, write_table

# Paths an eval records (results.json): kept relative to the root collected, as the run keys are,
# so that a study's tables say where a file lies among its runs, not on the machine that ran them.
PATH_COLUMNS = ("ckpt_path", "run_dir")


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _train_extra(train_dir: Path | None) -> dict[str, Any]:
    """How a run trained (device, precision, memory layout), from its resolved config; and its conv
    mix (``mix``: ``conv_mix.mix`` of experiment=conv_mix) where it has one, as a network with
    ``model.stage_conv`` set does not use its ``model.conv``."""
    config_path = train_dir / "config.yaml" if train_dir is not None else None
    if config_path is None or not config_path.is_file():
        return {}
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    trainer, module = config.get("trainer") or {}, config.get("module") or {}
    precision = trainer.get("precision")
    mix = (config.get("conv_mix") or {}).get("mix")
    return {"train_device": trainer.get("accelerator"), "train_precision": None if precision is None else str(precision),
            "train_channels_last": module.get("channels_last"), **({"mix": str(mix)} if mix is not None else {})}


def collect(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[Path, str]]]:
    """The rows of ``runs.csv`` and ``curves.csv`` for every run under ``root``.

    Returns:
        ``(runs, curves, missing)``: ``missing`` lists the run directories that gave no run
        (unfinished, failed, unreadable) with the reason.

    Raises:
        ReportInputError: ``root`` is not a directory or holds no run directory.
    """
    root = Path(root).resolve()
    runs, missing = collect_runs([root])
    rows, curves = [], []
    for run in sorted(runs, key=lambda r: _key(r.identity, root)):
        key = _key(run.identity, root)
        stage = {"stage": key.split("/")[0]} if "/" in key else {}
        row = run_row(run, key, _key(run.run_dir, root) if run.record is not None else None,
                      {**stage, **_train_extra(run.train_dir)})
        rows.append(row | {k: _key(Path(row[k]).resolve(), root) for k in PATH_COLUMNS if row.get(k)})
        if run.train_dir is not None:
            curves += [{"run": key, "epoch": e, **m} for e, m in sorted(read_curves(run.train_dir).items())]
    return rows, curves, missing


@dataclass(frozen=True)
class Collected:
    """What :func:`write_study` wrote: the runs collected, the epochs in ``curves.csv``, the rows
    kept from the table before (runs not under the root), and the run directories that gave no run."""

    runs: int
    epochs: int
    kept: list[dict[str, Any]]
    missing: list[tuple[Path, str]]


def write_study(root: str | os.PathLike, out: str | os.PathLike, *, replace: bool = False) -> Collected:
    """Collects ``root`` into ``out/runs.csv`` and ``out/curves.csv``. A run collected replaces its
    row and its epochs; the rows already there of runs not under ``root`` stay (a study collected
    from several machines, or after a finished stage's folders were cleared), unless ``replace``.
    Nothing is written when no run under ``root`` has results.

    Raises:
        ReportInputError: ``root`` holds no run with results, or a table in ``out`` is unreadable.
    """
    rows, curves, missing = collect(root)
    if not rows:
        d, reason = missing[0]
        raise ReportInputError(f"none of the {len(missing)} run directories under {root} has results (e.g. {d}: {reason})")
    out = Path(out)
    kept: list[dict[str, Any]] = []
    if not replace and (out / "runs.csv").is_file():
        collected = {row["run"] for row in rows}
        kept = [row for row in read_table(out / "runs.csv") if row["run"] not in collected]
        kept_runs = {row["run"] for row in kept}
        if kept_runs and (out / "curves.csv").is_file():
            curves += [c for c in read_table(out / "curves.csv") if c["run"] in kept_runs]
    write_table(out / "runs.csv", sorted([*rows, *kept], key=lambda r: r["run"]), first=("run", "stage", "eval", "top1_source"))
    write_table(out / "curves.csv", sorted(curves, key=lambda c: (c["run"], c["epoch"])), first=("run", "epoch"))
    return Collected(len(rows), len(curves), kept, missing)


__all__ = ["Collected", "Run", "collect", "read_curves", "write_study"]
