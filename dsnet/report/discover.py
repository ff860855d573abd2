"""Finds run directories and reads them: eval runs joined to the train runs they evaluated.

A *run directory* is any directory holding ``.hydra/config.yaml``, ``metrics.json`` or
``results.json``:

* an **eval run** has ``results.json`` (:mod:`dsnet.results`): cost, speed and, when a checkpoint
  was evaluated, accuracy. When its ``top1`` is null but its ``ckpt_path`` lies inside a train run,
  top-1 is taken from that run's ``metrics.json`` (``test/acc``).
* a **train run** has ``metrics.json``. It is covered when an eval run's checkpoint lies inside it;
  otherwise it is listed under "runs without results", as is every other run directory without
  usable results (never dropped silently).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from dsnet.results import ResultsRecord, load_results


class ReportInputError(ValueError):
    """The directories given to the report hold nothing it can report."""


_SKIP_DIRS = {"checkpoints", "wandb", "tensorboard", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Run:
    """An eval run's results, accuracy resolved from results.json or training's metrics.json."""

    run_dir: Path
    record: ResultsRecord
    top1: float | None
    top5: float | None
    top1_source: str  # "results.json", "metrics.json" or "" when unknown


def show_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it, for readable reports."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_run_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every run directory at or below ``dirs``, resolved, sorted, without duplicates."""
    found: set[Path] = set()
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            raise ReportInputError(f"not a directory: {root}")
        for here, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS)
            here = Path(here)
            if "results.json" in files or "metrics.json" in files or (
                    here / ".hydra" / "config.yaml").is_file():
                found.add(here.resolve())
    return sorted(found)


def read_train_accuracy(path: Path) -> tuple[float | None, float | None]:
    """``(test/acc, test/acc5)`` as fractions from a training ``metrics.json``; None: not logged."""
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    accs = metrics.get("test/acc"), metrics.get("test/acc5")
    for key, acc in zip(("test/acc", "test/acc5"), accs):
        if acc is not None and not (isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0):
            raise ValueError(f"{path}: {key!r} must be a fraction in [0, 1], got {acc!r}")
    return accs


def _read_eval_run(run_dir: Path, train_acc: dict[Path, tuple]) -> tuple[Run, Path | None]:
    """The eval run in ``run_dir`` and the train run its checkpoint came from, if found.

    Accuracy falls back to the train run's ``test/acc`` (``test/acc5``) when the eval run has no
    top-1. A relative ``ckpt_path`` is taken relative to the working directory, as eval.py
    would have.
    """
    record = load_results(run_dir / "results.json")
    train_dir = None
    if record.ckpt_path is not None:
        parents = Path(record.ckpt_path).resolve().parents
        train_dir = next((p for p in parents if p in train_acc), None)
    top1, top5, source = record.top1, record.top5, "results.json"
    if top1 is None:
        top1, top5 = train_acc.get(train_dir, (None, None))
        source = "metrics.json" if top1 is not None else ""
    return Run(run_dir, record, top1, top5, source), train_dir


def _no_results_reason(run_dir: Path, train_acc: dict[Path, tuple]) -> str:
    """Why a run directory that is no valid eval run and no evaluated train run gave nothing."""
    if run_dir in train_acc:
        acc = train_acc[run_dir][0]
        return (f"train run ({'no test/acc' if acc is None else f'test/acc={acc:.4f}'})"
                " that no results.json points to; run eval.py on its checkpoint")
    if (run_dir / "error.txt").is_file():  # train.py leaves its traceback there when a run fails
        return "failed run, see error.txt"
    return "no results.json or metrics.json (unfinished run?)"


def collect_runs(dirs: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Reads every run directory under ``dirs``.

    Returns:
        The eval runs with valid results, and ``(run_dir, reason)`` for every run directory
        that contributed no results (bad files included, with the error as the reason).

    Raises:
        ReportInputError: a directory does not exist or holds no run directory.
    """
    run_dirs = find_run_dirs(dirs)
    if not run_dirs:
        raise ReportInputError(f"no run directories under {', '.join(map(str, dirs))}")
    train_acc: dict[Path, tuple[float | None, float | None]] = {}
    missing: dict[Path, str] = {}
    for d in run_dirs:
        if (d / "metrics.json").is_file():
            try:
                train_acc[d] = read_train_accuracy(d / "metrics.json")
            except ValueError as err:  # JSONDecodeError is a ValueError
                missing[d] = f"unreadable metrics.json: {err}"
    runs, covered = [], set()
    for d in (d for d in run_dirs if (d / "results.json").is_file()):
        try:
            run, train_dir = _read_eval_run(d, train_acc)
        except (ValueError, TypeError) as err:
            missing[d] = f"invalid: {err}"
            continue
        runs.append(run)
        covered |= {d, train_dir}
        missing.pop(d, None)  # its own metrics.json is only a fallback; the results are valid
    for d in run_dirs:
        if d not in covered and d not in missing:
            missing[d] = _no_results_reason(d, train_acc)
    return runs, sorted(missing.items())
