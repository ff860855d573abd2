"""Every study's report from its tidy tables: ``results/<study>/`` into ``docs/studies/<study>/``.

A study folder holds ``runs.csv`` and ``curves.csv`` (:mod:`dsnet.report.tidy`) and, where the
study matched a width by measured latency, ``latency_match*.json`` records (the equal-cost table
pairs those two widths at the latencies the record timed in one process) and, for a study of conv
mixes, ``latency.csv``, each mix's latency per runtime (:mod:`dsnet.report.mixes`). A stage of a
study whose runs all lack test top-1 but have validation accuracy, an arm at more than one learning
rate or weight decay, is a search (its trials ran with ``test=false``): it is reported on its own,
in ``<study>/<stage>/``, and left out of the study's tables. Each report's index of every table is
``tables.md``. The folder is the report's: a regenerated report deletes the files of the kinds it
writes (md, csv, png, svg) that it did not write this time, and the folders of searches the study
no longer has; files of other kinds stay.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from dsnet.report import ReportSummary, write_report
from dsnet.report.discover import ReportInputError, Run
from dsnet.report.mixes import LATENCY_FILE, write_mix_report
from dsnet.report.tables import TUNED_KEYS, summarise
from dsnet.report.tidy import read_study, read_table

INDEX = "tables.md"
# What a published study keeps of a report: the tables and the PNG figures. The SVG twins and the
# runs.csv copy repeat what the PNGs and results/<study>/runs.csv hold.
DROPPED = ("*.svg", "runs.csv")


def _prune(summary: ReportSummary) -> ReportSummary:
    for pattern in DROPPED:
        for path in summary.out_dir.glob(pattern):
            path.unlink()
    kept = [f for f in summary.files if not any(Path(f).match(p) for p in DROPPED)]
    return dataclasses.replace(summary, files=kept)


def stage_of(run: Run) -> str | None:
    """The stage a study's run belongs to (its ``stage`` column), None outside staged studies."""
    return run.values.get("stage")


def search_stages(runs: list[Run]) -> list[str]:
    """The stages that are searches: their runs were all trained without a test split but validated,
    an arm at more than one learning rate or weight decay (a search's trials). An ablation trained
    the same way at one setting per arm (label smoothing off, say) stays in the study's tables,
    where its runs meet the runs it is compared with."""
    stages: dict[str, list[Run]] = {}
    for run in runs:
        if stage_of(run) is not None:
            stages.setdefault(stage_of(run), []).append(run)
    return sorted(s for s, members in stages.items()
                  if all(r.top1 is None and r.values.get("val_acc_best") is not None for r in members)
                  and _tried_several(members))


def _tried_several(runs: list[Run]) -> bool:
    """Whether one arm (convolution type and width) of ``runs`` ran at several learning rates or
    weight decays."""
    arms: dict[tuple, set[tuple]] = {}
    for run in runs:
        arm = tuple(run.values.get(k) for k in ("conv", "groups", "width"))
        arms.setdefault(arm, set()).add(tuple(run.values.get(k) for k in TUNED_KEYS))
    return any(len(tried) > 1 for tried in arms.values())


def report_study(study_dir: str | os.PathLike, out: str | os.PathLike) -> list[ReportSummary]:
    """Writes the report of one study folder into ``out`` (and its searches below it)."""
    study_dir, out = Path(study_dir), Path(out)
    runs = read_study(study_dir)
    matches = sorted(study_dir.glob("latency_match*.json"))
    searches = search_stages(runs)
    main = [r for r in runs if stage_of(r) not in searches]
    summaries = [write_report(main or runs, [], out, latency_matches=matches, index=INDEX)]
    if (study_dir / LATENCY_FILE).is_file():
        files = write_mix_report(summarise(main or runs), read_table(study_dir / LATENCY_FILE), out)
        summaries[0] = dataclasses.replace(summaries[0], files=[*summaries[0].files, *files])
    for stage in searches if main else ():
        summaries.append(write_report([r for r in runs if stage_of(r) == stage], [], out / stage, index=INDEX))
    summaries = [_prune(s) for s in summaries]
    _drop_stale(out, summaries)
    return summaries


# What a report writes; a file of these kinds in a study's report folder that this report did not
# write is left from an earlier one (a plot whose runs moved to a search's report, say).
GENERATED = ("*.md", "*.csv", "*.png", "*.svg")


def _drop_stale(out: Path, summaries: list[ReportSummary]) -> None:
    """Removes what an earlier report of the study left in ``out`` and this one did not write: its
    generated files, and the folders of searches the study no longer has."""
    written = {s.out_dir / f for s in summaries for f in s.files}
    folders = {s.out_dir for s in summaries}
    for path in sorted(out.iterdir()):
        if path.is_dir() and path not in folders and (path / INDEX).is_file():
            shutil.rmtree(path)
        elif path.is_file() and path not in written and any(path.match(p) for p in GENERATED):
            path.unlink()


def report_studies(results: str | os.PathLike, out: str | os.PathLike) -> list[ReportSummary]:
    """Writes the report of every study folder under ``results`` into ``out/<study>/``.

    Raises:
        ReportInputError: ``results`` holds no study folder (none with a ``runs.csv``).
    """
    studies = sorted(p.parent for p in Path(results).glob("*/runs.csv"))
    if not studies:
        raise ReportInputError(f"no study under {results} (a folder with runs.csv)")
    return [s for study in studies for s in report_study(study, Path(out) / study.name)]
