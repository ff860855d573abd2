"""Learning curves: validation accuracy per epoch from each train run's CSV log, one line per arm.

Lightning's CSVLogger writes ``<run_dir>/csv/version_N/metrics.csv``; a resumed run writes the
next ``version_N``, so versions are read in order and a later one replaces the epochs it repeats.
The rows with a ``val/acc`` value are the end-of-epoch validations (``epoch`` counts from 0).
An *arm* is a configuration (its seeds are the band): the line is the mean over seeds at each
epoch, the band spans the lowest to the highest seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dsnet.report.discover import Run
from dsnet.report.plots import save_figure, series_styles
from dsnet.report.tables import MODEL_KEYS, TRAIN_KEYS, conv_label, conv_rank, write_csv

CURVE_COLUMNS = ("dataset", "arm", "conv", "groups", "epoch", "val_acc_mean", "val_acc_min", "val_acc_max", "n")


# Short names for the keys an arm label shows (the legend holds up to a dozen arms).
_SHORT = {"epochs": "ep", "depthwise_weight_decay": "dw wd", "weight_decay": "wd", "train_size": "train",
          "image_size": "px", "num_classes": "classes", "in_chans": "chans"}


def _arm_label(values: dict[str, Any], varying: Sequence[str]) -> str:
    parts = [conv_label(values), f"w{values['width']:g}"]
    # None is "not set": the default's value (the optimizer's weight decay, the full training split)
    parts += [f"{_SHORT.get(k, k)}={'default' if values[k] is None else values[k]}" for k in varying
              if k not in ("conv", "groups", "width", "dataset")]
    return " ".join(parts)


def learning_curves(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per dataset, arm and epoch: mean, min and max of val/acc over the arm's seeds, and n."""
    arms: dict[tuple, dict[Path, dict[int, float]]] = {}
    first: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        if run.train_dir is None:
            continue
        key = tuple(run.values.get(k) for k in (*MODEL_KEYS, *TRAIN_KEYS))
        curve = run.curve()
        if curve:
            arms.setdefault(key, {})[run.train_dir] = curve
            first.setdefault(key, run.values)
    keys = (*MODEL_KEYS, *TRAIN_KEYS)
    varying = [k for i, k in enumerate(keys) if len({a[i] for a in arms}) > 1]
    out = []
    order = sorted(arms, key=lambda a: (str(a[0]), conv_rank(first[a]["conv"]), str(a[1:])))
    for key in order:
        curves = list(arms[key].values())
        for epoch in sorted({e for c in curves for e in c}):
            accs = [c[epoch] for c in curves if epoch in c]
            out.append({"dataset": first[key]["dataset"], "arm": _arm_label(first[key], varying),
                        "conv": first[key]["conv"], "groups": first[key]["groups"], "epoch": epoch, "val_acc_mean": statistics.fmean(accs),
                        "val_acc_min": min(accs), "val_acc_max": max(accs), "n": len(accs)})
    return out


_LINES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "X")  # with the line style, so that ":" and "-." are told apart


def _arm_styles(points: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Per arm: its conv label's colour in the trade-off plots, and a line style and marker per arm
    within it (the n-th arm of a conv: the n-th of each)."""
    colours = series_styles(points)
    styles: dict[str, tuple[str, str, str]] = {}
    arms_of: dict[str, int] = {}  # conv label -> arms styled so far
    for p in points:
        label = conv_label(p)
        if p["arm"] not in styles:
            n = arms_of[label] = arms_of.get(label, -1) + 1
            styles[p["arm"]] = (colours[label][0], _LINES[n % len(_LINES)], _MARKERS[n % len(_MARKERS)])
    return styles


def _last_half(pts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """An arm's points after the middle of its schedule: where convergence is judged."""
    end = max(p["epoch"] for p in pts)
    return [p for p in pts if p["epoch"] > end / 2]


def plot_learning_curves(runs: Sequence[Run], out_dir: Path) -> list[str]:
    """Writes ``learning_curves.png``/``.svg`` and ``learning_curves.csv``; none without CSV logs."""
    points = learning_curves(runs)
    if not points:
        return []
    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    # Per dataset a column: the whole run above, and below each arm's second half at its own scale,
    # since the early epochs (a warm-up at a high lr can fall to 20%) squash where the arms end.
    fig = Figure(figsize=(7.2 * len(datasets), 8.4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, len(datasets), squeeze=False, height_ratios=(1, 1.15))
    for (whole, zoom), dataset in zip(grid.T, datasets):
        here = [p for p in points if p["dataset"] == dataset]
        styles = _arm_styles(here)
        for arm in dict.fromkeys(p["arm"] for p in here):
            pts = [p for p in here if p["arm"] == arm]
            colour, line, marker = styles[arm]
            seeds = max(p["n"] for p in pts)
            for ax, shown in ((whole, pts), (zoom, _last_half(pts))):
                epochs = [p["epoch"] for p in shown]
                ax.plot(epochs, [100 * p["val_acc_mean"] for p in shown], color=colour, ls=line, marker=marker,
                        ms=3.5, lw=1.3, label=f"{arm} (n={seeds})")
                ax.fill_between(epochs, [100 * p["val_acc_min"] for p in shown],
                                [100 * p["val_acc_max"] for p in shown], color=colour, alpha=0.15, lw=0)
        whole.set_title(f"{dataset}: validation accuracy, mean over seeds, band = min–max", fontsize=10)
        zoom.set_title("the second half of each arm's schedule, zoomed", fontsize=10)
        for ax in (whole, zoom):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("val top-1 accuracy (%)")
            ax.grid(True, alpha=0.25)
        zoom.legend(fontsize=8, frameon=False, loc="lower right")
    write_csv(out_dir / "learning_curves.csv", points, CURVE_COLUMNS)
    return [*save_figure(fig, out_dir, "learning_curves"), "learning_curves.csv"]
