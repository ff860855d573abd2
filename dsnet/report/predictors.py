"""Which counted cost predicts measured latency: rank correlation across a sweep, and its figure.

Multiply-adds are a poor proxy for speed (Ma et al. 2018, ShuffleNet V2): memory traffic and how
well a layer keeps the cores busy count too, and depthwise layers do little arithmetic per byte.
For every measurement environment (runtime, device, threads, batch size, precision) in which at
least :data:`MIN_NETWORKS` networks were timed, :func:`predictor_rows` gives Spearman's rank
correlation (``scipy.stats.spearmanr``) of each cost in :data:`PREDICTORS` with latency p50: does
the cost order the networks as the clock does? A rank correlation rather than a linear fit, which
the largest networks of a sweep would dominate. :func:`plot_predictors` draws latency against each
cost, one panel per cost, one colour per convolution type.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter
from scipy.stats import ConstantInputWarning, spearmanr

from dsnet.report.markdown import fmt, markdown_table
from dsnet.report.plots import save_figure, series_styles
from dsnet.report.tables import ENV_KEYS, conv_label

# (row key, axis label): the costs dsnet counts per image (results.json), from the cheapest to
# count to the closest to the hardware.
PREDICTORS = (("params", "parameters"), ("macs", "multiply-adds"),
              ("activations", "activations (conv and linear outputs)"),
              ("memory_traffic_bytes", "memory traffic (bytes, fp32)"))
# Below 4 networks a perfect rank correlation comes by chance too often (3 networks: 1 ordering in 3).
MIN_NETWORKS = 4
LATENCY_KEY = "latency_ms_p50"
PREDICTOR_COLUMNS = (*ENV_KEYS, "n_networks", *(f"rho_{key}" for key, _ in PREDICTORS), "best_predictor")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get mean ranks); NaN for fewer than 2 points or a constant."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} values against {len(ys)}")
    if len(xs) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # a constant cost: NaN says it
        return float(spearmanr(xs, ys).statistic)


def cost_latency_correlation(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``{cost: Spearman correlation with latency p50}`` over ``rows`` that have both values."""
    result = {}
    for key, _ in PREDICTORS:
        pairs = [(r[key], r[LATENCY_KEY]) for r in rows
                 if r.get(key) is not None and r.get(LATENCY_KEY) is not None]
        result[key] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return result


def _environments(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(LATENCY_KEY) is not None:
            groups.setdefault(tuple(row.get(k) for k in ENV_KEYS), []).append(row)
    return {env: members for env, members in groups.items() if len(members) >= MIN_NETWORKS}


def predictor_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per measurement environment with at least :data:`MIN_NETWORKS` timed networks.

    Args:
        rows: report rows (one per configuration and environment); the caller leaves out rows
            timed under contention.
    """
    out = []
    for env, members in _environments(rows).items():
        rho = cost_latency_correlation(members)
        known = {k: v for k, v in rho.items() if not math.isnan(v)}
        best = [k for k, v in known.items() if v == max(known.values())]  # ties: all of them
        out.append(dict(zip(ENV_KEYS, env)) | {"n_networks": len(members)}
                   | {f"rho_{k}": v for k, v in rho.items()}
                   | {"best_predictor": " = ".join(best) or None})
    return out


def predictors_section(predictors: Sequence[dict[str, Any]]) -> str:
    """Markdown: the correlation table, one row per environment."""
    text = ("## Which cost predicts latency\n\nSpearman rank correlation of each counted cost with "
            "latency p50 (at the latency batch size) across the networks timed in one environment "
            "(1 = the cost orders the "
            f"networks exactly as the clock does); environments with at least {MIN_NETWORKS} "
            "networks.\n\n")
    if not predictors:
        return text + f"No environment has {MIN_NETWORKS} or more timed networks.\n"
    header = ["runtime", "device", "threads", "throughput batch", "networks", *(label.split(" (")[0] for _, label in PREDICTORS),
              "best"]
    body = [[p["runtime"] or "–", p["device_name"] or p["device"] or "–", fmt(p["num_threads"]),
             fmt(p["batch_size"]), str(p["n_networks"]),
             *(fmt(None if math.isnan(p[f"rho_{k}"]) else p[f"rho_{k}"], ".3f") for k, _ in PREDICTORS),
             p["best_predictor"] or "–"] for p in predictors]
    return text + markdown_table(header, body)


def plot_predictors(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[str]:
    """``cost_vs_latency.png``/``.svg``: latency against each cost, log-log, one row per environment.

    Returns:
        The file names written; none when no environment has enough timed networks.
    """
    envs = _environments(rows)
    # Costs older results.json files lack (activations, memory traffic) get no panel.
    costs = [(k, label) for k, label in PREDICTORS if any(r.get(k) for m in envs.values() for r in m)]
    if not envs or not costs:
        return []
    fig = Figure(figsize=(4.2 * len(costs), 3.6 * len(envs) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(envs), len(costs), squeeze=False)
    styles = series_styles([r for m in envs.values() for r in m])  # the colours of the report's other plots
    for i, (env, members) in enumerate(envs.items()):
        rho = cost_latency_correlation(members)
        where = dict(zip(ENV_KEYS, env))
        for j, (key, label) in enumerate(costs):
            ax = grid[i][j]
            if not any(r.get(key) for r in members):
                ax.set_axis_off()  # this environment's runs lack the cost
                continue
            for conv, (colour, marker) in styles.items():
                pts = [r for r in members if conv_label(r) == conv and r.get(key)]
                if pts:
                    ax.scatter([r[key] for r in pts], [r[LATENCY_KEY] for r in pts], label=conv, s=24,
                               color=colour, marker=marker, zorder=3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            # "200k", "1.5M" at the decades only: matplotlib's minor labels ("3x10^5") collide.
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel(label + " (log)")
            ax.set_ylabel("latency p50 (ms, log)")
            ax.grid(True, which="both", alpha=0.25)
            ax.set_title(f"{where['runtime']}, {where['device_name'] or where['device']}, "
                         f"{where['num_threads']} thread(s): ρ = {rho[key]:.2f}", fontsize=9)
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), frameon=False)
    return save_figure(fig, out_dir, "cost_vs_latency")
