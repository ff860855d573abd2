"""Which report columns the runs cannot fill, and the command that fills them: one line each.

A sweep of training runs has top-1, params and MACs; latency, throughput, forward+backward MACs
and the per-layer-type shares come from ``eval.py`` (``results.json``). Each line names the
columns, how many runs lack them, and what to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dsnet.report.discover import Run, show_path

EVAL_COLUMNS = "latency_ms_p50, throughput_img_s, train_macs, layer shares"
TRAIN_COLUMNS = "epochs, lr, weight_decay, time_per_epoch_s"


def example_checkpoint(run_dir: Path) -> str:
    """The best checkpoint of a train run (its last when there is no best), as eval.py takes it.

    A run read from a study folder's ``runs.csv`` names its directory relative to the runs directory
    the study was collected from, which the folder does not hold: the path is given under ``RUNS``.
    """
    study = next((p for p in run_dir.parents if (p / "runs.csv").is_file()), None)
    if study is not None and not run_dir.is_dir():
        return f"RUNS/{run_dir.relative_to(study).as_posix()}/checkpoints/best-*.ckpt"
    ckpts = sorted((run_dir / "checkpoints").glob("best*.ckpt")) or [run_dir / "checkpoints" / "last.ckpt"]
    return show_path(ckpts[0])


def missing_columns(runs: Sequence[Run]) -> list[str]:
    """One line per family of columns some runs cannot fill; empty when every column is filled."""
    lines = []
    trained = {r.identity for r in runs if r.train_dir is not None}
    unevaluated = [r for r in runs if r.record is None]
    if unevaluated:
        ckpt = example_checkpoint(unevaluated[0].run_dir)
        runs_note = "; RUNS: the runs directory the study was collected from" if ckpt.startswith("RUNS/") else ""
        lines.append(
            f"{EVAL_COLUMNS}: no eval results for {len(unevaluated)} of {len(trained)} training runs; "
            f"run `python eval.py ckpt_path={ckpt}` (with the run's data.* overrides{runs_note}) for each, "
            "or `python scripts/reproduce.py RECIPE`, which trains, evaluates and reports")
    untested = [r for r in runs if r.top1 is None and r.train_dir is not None]
    if untested:
        lines.append(
            f"top1: {len(untested)} of {len(trained)} training runs have no test accuracy "
            "(trained with test=false, as a search's trials are: their val top-1 is in "
            "hyperparameters.md); test one with `python eval.py ckpt_path=<run>/checkpoints/best-*.ckpt`")
    cost_only = [r for r in runs if r.top1 is None and r.train_dir is None]
    if cost_only:
        lines.append(
            f"top1: {len(cost_only)} eval runs measured an untrained network (no ckpt_path); "
            "evaluate a trained checkpoint with `python eval.py ckpt_path=<run>/checkpoints/best-*.ckpt`")
    orphans = [r for r in runs if r.record is not None and r.record.ckpt_path is not None
               and r.train_dir is None]
    if orphans:
        lines.append(
            f"{TRAIN_COLUMNS}: the training run of {len(orphans)} evaluated checkpoints is not under "
            f"the directories given (e.g. {orphans[0].record.ckpt_path}); add its run directory "
            "to the command")
    return lines
