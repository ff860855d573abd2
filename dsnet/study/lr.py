"""The learning-rate choice of a grid search: per arm the best trial, or a grid grown at its edges.

A search trains every arm (convolution type) at every lr of one grid and scores each trial by its
validation accuracy (``val/acc_best``; a failed trial, say a NaN loss, scores 0). An arm's best lr at
an edge of the grid may not be its best lr at all, so the grid grows by a factor 2 at each edge some
arm's best sits at, for every arm (equal trial counts), at both edges in one round when arms sit at
both, by at most ``max_grow`` values over the base grid. With one value left and arms at both edges,
it goes to the edge where an arm's score still climbs most. Ties go to the smaller lr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from dsnet.study.stages import run_dirs


@dataclass(frozen=True)
class Choice:
    """The outcome of a finished search: ``grid`` to run next (grown), or ``chosen`` per arm."""

    grid: list[float]  # the grid the decision rests on, or the grown grid still to run
    chosen: dict[str, dict] | None  # {arm: {lr, val_acc_best, trials, grid, at_edge}}; None: grow


def _fmt(lrs: list[float]) -> str:
    return ",".join(f"{lr:g}" for lr in sorted(lrs))


def choose_lr(scores: dict[str, dict[float, float]], base: list[float], max_grow: int = 3) -> Choice:
    """The choice for ``scores`` (``{arm: {lr: val_acc_best}}``, every arm over the same grid).

    Args:
        base: the grid the search started from; the grid grows by at most ``max_grow`` values over it.

    Raises:
        ValueError: the arms were not scored over one grid, or a grid has fewer than two values.
    """
    grids = {tuple(sorted(s)) for s in scores.values()}
    if len(grids) != 1 or len(next(iter(grids))) < 2:
        raise ValueError(f"every arm needs a score at each lr of one grid of 2 or more values, got "
                         f"{ {arm: _fmt(list(s)) for arm, s in scores.items()} }")
    grid = sorted(next(iter(grids)))
    best = {arm: max(grid, key=lambda lr, s=s: (s[lr], -lr)) for arm, s in scores.items()}
    gains = {}
    for side, edge, neighbour in (("low", grid[0], grid[1]), ("high", grid[-1], grid[-2])):
        at_edge = [arm for arm, lr in best.items() if lr == edge]
        if at_edge:
            gains[side] = max(scores[arm][edge] - scores[arm][neighbour] for arm in at_edge)
    room = len(base) + max_grow - len(grid)
    if room > 0 and gains:
        sides = set(gains)
        if room == 1 and len(sides) == 2:
            sides = {max(gains, key=lambda side: (gains[side], side == "low"))}
        grown = [grid[0] / 2] * ("low" in sides) + grid + [grid[-1] * 2] * ("high" in sides)
        return Choice(grown, None)
    return Choice(grid, {arm: {"lr": best[arm], "val_acc_best": scores[arm][best[arm]], "trials": len(grid),
                               "grid": _fmt(grid), "at_edge": best[arm] in (grid[0], grid[-1])}
                         for arm in scores})


def search_scores(stage_dir: Path) -> tuple[dict[str, dict[float, float]], list[Path]]:
    """``{conv: {lr: val_acc_best}}`` of the trials under ``stage_dir`` (a failed one, with
    ``error.txt``, scores 0), and the trial directories not finished yet.

    A trial's conv type and lr come from the resolved ``config.yaml`` it writes when it starts.
    """
    scores: dict[str, dict[float, float]] = {}
    unfinished = []
    for run_dir, state in run_dirs(stage_dir).items():
        if state == "partial":
            unfinished.append(run_dir)
            continue
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        lr = float(config["optim"]["optimizer"]["lr"])
        score = (json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["val/acc_best"]
                 if state == "finished" else 0.0)
        scores.setdefault(str(config["model"]["conv"]), {})[lr] = score
    return scores, unfinished
