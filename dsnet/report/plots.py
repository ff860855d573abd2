"""Accuracy against parameters, multiply-adds and latency, with the Pareto front drawn in.

One row of panels per dataset and protocol (the training schedule and regularisation of
:data:`PROTOCOL_KEYS`): a front drawn through runs of different schedules would compare networks
that were not trained alike, so each protocol gets its own panels, titled with it.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display) and saved as PNG
and as SVG without a date or random ids, so the same rows give the same SVG file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from dsnet.report.tables import MIX_KEY, conv_label, conv_rank, one_per_config

# What makes two runs' accuracies comparable beyond the network (the lr is tuned per conv type, so
# it may differ within a protocol).
PROTOCOL_KEYS = ("train_size", "epochs", "weight_decay", "depthwise_weight_decay")

# (row key, axis label, file stem) of the cost axes accuracy is plotted against.
COST_AXES = (("params", "parameters", "top1_vs_params"),
             ("macs", "multiply-adds per image", "top1_vs_macs"),
             ("latency_ms_p50", "latency p50 in ms", "top1_vs_latency"))
_CONV_STYLE = {"standard": ("tab:blue", "s"), "dsconv": ("tab:orange", "o")}
_GROUP_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_MIX_STYLES = (("tab:green", "^"), ("tab:purple", "v"), ("tab:brown", "D"), ("tab:pink", "P"),
               ("tab:olive", "X"), ("tab:cyan", "h"))
_FRONT_LABEL = "Pareto front"


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[str]:
    """Writes ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg``; returns the two file names.

    The SVG is the same bytes for the same figure: no date, and element ids hashed with a fixed
    salt instead of a random one, so a rerun of a committed report changes no file it need not.
    """
    fig.savefig(out_dir / f"{stem}.png", dpi=150)
    with matplotlib.rc_context({"svg.hashsalt": stem}):
        fig.savefig(out_dir / f"{stem}.svg", metadata={"Date": None})
    return [f"{stem}.png", f"{stem}.svg"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(cost, accuracy)`` points no other point beats, ordered by cost.

    A point is dominated when another costs no more and is no less accurate, and is strictly
    better in one of the two. Equal points do not dominate each other, so both stay on the front.
    """
    front = [
        i for i, (cost, acc) in enumerate(points)
        if not any(c <= cost and a >= acc and (c < cost or a > acc) for c, a in points)
    ]
    return sorted(front, key=lambda i: (points[i][0], i))


def series_styles(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Colour and marker per conv label; each group count gets its own colour, and each conv mix
    its own colour and marker (the pure ``dsconv`` and ``standard`` mixes those of their conv)."""
    styles = {}
    for row in sorted(rows, key=lambda r: (conv_rank(r["conv"]), r["groups"] or 0, r.get(MIX_KEY) or "")):
        label = conv_label(row)
        if label not in styles and row.get(MIX_KEY) is not None:
            n_mix = sum(1 for s in styles if s not in _CONV_STYLE)
            styles[label] = _CONV_STYLE.get(label) or _MIX_STYLES[n_mix % len(_MIX_STYLES)]
        elif label not in styles:
            n_group = sum(1 for s in styles if s.startswith("group"))
            styles[label] = _CONV_STYLE.get(row["conv"]) or (
                (_GROUP_COLOURS[n_group % len(_GROUP_COLOURS)], "^") if row["conv"] == "group"
                else ("tab:gray", "D"))
    return styles


def _point_label(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """Width always (a conv mix's name instead where the panel's widths are one); resolution and
    arch only where the panel mixes several."""
    one_width = len({r["width"] for r in rows}) == 1
    parts = [str(row[MIX_KEY])] if row.get(MIX_KEY) is not None else []
    if not (parts and one_width):
        parts.append(f"{row['width']:g}x")
    if len({r["image_size"] for r in rows}) > 1:
        parts.append(f"{row['image_size']}px")
    if len({r["arch"] for r in rows}) > 1:
        parts.append(row["arch"])
    if len({r["runtime"] for r in rows}) > 1 and all(r["runtime"] for r in rows):
        parts.append(row["runtime"])
    return " ".join(parts)


def _format_axes(ax, xs: Sequence[float], x_key: str, x_label: str) -> None:
    """A log cost axis labelled so that narrow sweeps stay readable; accuracy in percent."""
    ax.set_xscale("log")
    # Short labels ("200k", "1.5") at 1-2-5 steps for narrow sweeps: matplotlib's default minor
    # labels ("4x10^5") collide when a sweep spans less than two decades.
    xs = list(xs) or [1.0]
    narrow = max(xs) / min(xs) < 100
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    is_ms = x_key.startswith("latency")  # milliseconds: "0.5", not EngFormatter's "500m"
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}") if is_ms
                                 else EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.1, y=0.1)
    ax.set_xlabel(x_label + " (log scale)")
    ax.set_ylabel("top-1 accuracy (%), mean ± 95% CI")
    ax.grid(True, which="both", alpha=0.25)


def _clipped_ci(rows: Sequence[dict[str, Any]]) -> list[list[float]]:
    """Error bars (lower, upper) in percent: the 95% interval, cut at 0% and 100% (few seeds
    give intervals wider than accuracy can go)."""
    lower = [100 * min(r["top1_ci95"] or 0.0, r["top1_mean"]) for r in rows]
    upper = [100 * min(r["top1_ci95"] or 0.0, 1.0 - r["top1_mean"]) for r in rows]
    return [lower, upper]


def _draw_panel(ax, rows: Sequence[dict[str, Any]], x_key: str, x_label: str,
                styles: dict[str, tuple[str, str]]) -> None:
    """Top-1 (mean ± 95% interval over seeds) against one cost, a series per conv label, and the front."""
    rows = [r for r in rows  # a log axis needs > 0
            if r["top1_mean"] is not None and r[x_key] is not None and r[x_key] > 0]
    if not x_key.startswith("latency"):
        rows = one_per_config(rows)  # rows of other runtimes repeat its params and MACs
    for label, (colour, marker) in styles.items():
        pts = [r for r in rows if conv_label(r) == label]
        if pts:
            ax.errorbar([r[x_key] for r in pts], [100 * r["top1_mean"] for r in pts],
                        yerr=_clipped_ci(pts), fmt=marker,
                        color=colour, label=label, markersize=7, capsize=3, zorder=3)
    for r in rows:
        ax.annotate(_point_label(r, rows), (r[x_key], 100 * r["top1_mean"]), fontsize=8,
                    textcoords="offset points", xytext=(6, -10), zorder=4)
    front = pareto_front([(r[x_key], r["top1_mean"]) for r in rows])
    if front:
        # Step "post": the best accuracy reachable at a cost is that of the last front point
        # at or below it.
        ax.step([rows[i][x_key] for i in front], [100 * rows[i]["top1_mean"] for i in front],
                where="post", color="0.45", linestyle="--", linewidth=1.2, label=_FRONT_LABEL,
                zorder=2)
    _format_axes(ax, [r[x_key] for r in rows], x_key, x_label)


def _shared_legend(fig: Figure, axes: Sequence[Any]) -> None:
    """One legend entry per series across all panels, series first and the front last."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if _FRONT_LABEL in handles:
        handles[_FRONT_LABEL] = handles.pop(_FRONT_LABEL)
    fig.legend(list(handles.values()), list(handles), loc="outside upper center",
               ncol=len(handles), frameon=False)


def protocol(row: dict[str, Any]) -> tuple:
    """The dataset and the :data:`PROTOCOL_KEYS` of a row: the runs one panel may hold."""
    return (row["dataset"], *(row.get(k) for k in PROTOCOL_KEYS))


def protocol_title(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """``Fashion-MNIST, 15 epochs``, with the other protocol keys where the rows differ in them."""
    parts = [row["dataset"]]
    if row.get("epochs") is not None:
        parts.append(f"{row['epochs']} epochs")
    for key, short in (("train_size", "train"), ("weight_decay", "wd"), ("depthwise_weight_decay", "dw wd")):
        if len({r.get(key) for r in rows}) > 1:
            parts.append(f"{short}={'default' if row.get(key) is None else f'{row[key]:g}'}")
    return ", ".join(parts)


def _figure(rows: Sequence[dict[str, Any]], axes: Sequence[tuple[str, str, str]]) -> Figure:
    """One row of panels per dataset and protocol, one column per cost axis, a shared legend on top."""
    protocols = sorted({protocol(r) for r in rows}, key=lambda p: tuple(str(v) for v in p))
    styles = series_styles(rows)
    # At least as wide as the one-row legend above the panels (about 1.3 in per entry, the front's included).
    width = max(5.4 * len(axes), 1.3 * (len(styles) + 1))
    fig = Figure(figsize=(width, 4.3 * len(protocols) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: no display, no pyplot global state
    grid = fig.subplots(len(protocols), len(axes), squeeze=False)
    for i, key in enumerate(protocols):
        subset = [r for r in rows if protocol(r) == key]
        for j, (x_key, x_label, _) in enumerate(axes):
            _draw_panel(grid[i][j], subset, x_key, x_label, styles)
            title = protocol_title(subset[0], rows)
            if x_key.startswith("latency"):
                title += " — " + ", ".join(sorted({f"{r['device_name']}, {r['runtime']}"
                                                   for r in subset if r["device_name"]}))
                if any(r["n_contended"] for r in subset):
                    title += " (timed under CPU contention)"
            grid[i][j].set_title(title, fontsize=10)
    _shared_legend(fig, grid.flat)
    return fig


def plot_tradeoffs(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[str]:
    """Writes top-1 against each cost axis, and all of them in ``tradeoff``, as PNG and SVG.

    The latency axis is drawn only when some run with top-1 has a latency (eval results).

    Returns:
        The file names written; none when no configuration has accuracy.
    """
    rows = [r for r in rows if r["top1_mean"] is not None]
    if not rows:
        return []
    axes = [a for a in COST_AXES if any(r[a[0]] is not None for r in rows)]
    names = []
    for stem, panel_axes in [*((a[2], [a]) for a in axes), ("tradeoff", axes)]:
        names += save_figure(_figure(rows, panel_axes), out_dir, stem)
    return names


def plot_cost_axis(rows: Sequence[dict[str, Any]], out_dir: Path, x_key: str, stem: str) -> list[str]:
    """Writes top-1 against the one cost ``x_key`` of :data:`COST_AXES` as ``<stem>.png`` and ``.svg``
    (a latency measured apart from the runs' evals, one runtime a figure); returns the file names."""
    axis = next(a for a in COST_AXES if a[0] == x_key)
    rows = [r for r in rows if r["top1_mean"] is not None]
    if not rows:
        return []
    fig = _figure(rows, [axis])
    for ax in fig.axes:
        ax.title.set_fontsize(8.5)  # one panel's width: the runtime and the contention note must fit
    return save_figure(fig, out_dir, stem)
