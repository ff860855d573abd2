"""How validation accuracy depends on the learning rate: one line per arm over a search's trials.

An *arm* is every configuration equal in all but ``lr`` (same model, conv type, width, schedule,
weight decay); an arm tried at three or more learning rates gets a line of its best-epoch
validation accuracy (``val/acc_best``, mean over seeds) against ``lr`` on a log axis, its chosen
lr (the best) marked. It shows what a table cannot: whether an arm's optimum is sharp or flat, and
whether the grid brackets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dsnet.report.plots import save_figure, series_styles
from dsnet.report.tables import conv_label, keys_except, one_per_config

MIN_TRIALS = 3  # learning rates an arm needs to get a line


def lr_arms(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Configurations with a val accuracy grouped by everything but ``lr``, each sorted by lr;
    only arms tried at :data:`MIN_TRIALS` or more learning rates."""
    fixed = keys_except("lr")
    arms: dict[tuple, list[dict[str, Any]]] = {}
    for row in one_per_config(rows):
        if row.get("val_acc_best_mean") is not None and row["lr"] is not None:
            arms.setdefault(tuple(row[k] for k in fixed), []).append(row)
    return {key: sorted(arm, key=lambda r: r["lr"]) for key, arm in arms.items() if len(arm) >= MIN_TRIALS}


def plot_lr_sensitivity(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[str]:
    """Writes ``lr_sensitivity.png``/``.svg``; nothing when no arm was tried at enough lr."""
    arms = lr_arms(rows)
    if not arms:
        return []
    styles = series_styles([arm[0] for arm in arms.values()])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for arm in arms.values():
        first = arm[0]
        colour, marker = styles[conv_label(first)]
        lrs, accs = [r["lr"] for r in arm], [100 * r["val_acc_best_mean"] for r in arm]
        seeds = max(r["n_runs"] for r in arm)
        ax.plot(lrs, accs, color=colour, marker=marker,
                label=f"{conv_label(first)} w{first['width']:g}, {first['epochs']} epochs (n={seeds})")
        best = max(range(len(arm)), key=lambda i: (accs[i], -lrs[i]))  # ties: the smaller lr
        ax.scatter([lrs[best]], [accs[best]], s=140, facecolors="none", edgecolors=colour, lw=1.5)
    ax.set_xscale("log", base=2)
    lrs = sorted({r["lr"] for arm in arms.values() for r in arm})
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set_xlabel("learning rate (log scale; circled: the best, ties to the smaller)")
    ax.set_ylabel("best-epoch val top-1 (%)")
    ax.set_title(f"{first['dataset']}: validation accuracy against learning rate", fontsize=10)
    ax.grid(True, alpha=0.25, which="both")
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, out_dir, "lr_sensitivity")
