"""The report's tables as rows of dicts, and their CSV files.

Runs that differ only in ``seed`` are one configuration: accuracy is reported as mean, sample std
and n; counted costs are taken from the first run; timings as the median over the runs. Values
stay in the units of the result files (accuracy as a fraction); Markdown formats them.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsnet.report.discover import Run, show_path
from dsnet.results import RESULT_KEYS

# Runs equal in all of these are one configuration (seeds are averaged over).
CONFIG_KEYS = ("dataset", "arch", "conv", "groups", "width", "image_size", "in_chans",
               "num_classes", "device", "device_name", "precision", "channels_last",
               "num_threads", "batch_size")
COST_KEYS = ("params", "macs", "train_macs")  # counted, so equal across seeds
TIMING_KEYS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_iqr", "throughput_img_s")
SUMMARY_COLUMNS = (*CONFIG_KEYS, "n", "top1_mean", "top1_std", "top5_mean", *COST_KEYS,
                   *TIMING_KEYS, "run_dirs")
RUN_COLUMNS = ("run_dir", "top1_source",
               *(k for k in RESULT_KEYS if k not in ("run_dir", "macs_breakdown")))

# A standard and a dsconv configuration equal in these are compared with each other.
PAIR_KEYS = tuple(k for k in CONFIG_KEYS if k not in ("conv", "groups"))
THEORY_COLUMNS = (*PAIR_KEYS, "macs_ratio", "params_ratio", "latency_ratio", "throughput_ratio",
                  "saving_delivered", "top1_diff")

SHARE_ID_KEYS = ("dataset", "arch", "conv", "width", "image_size")
# The keys of dsnet.measure's macs_breakdown in the order of the MobileNet paper's Table 2 rows:
# 1x1 conv, depthwise, full k x k conv, (grouped), fully connected. Repeated here rather than
# imported because dsnet.measure imports torch and the report only reads files.
LAYER_TYPES = ("pointwise", "depthwise", "standard", "grouped", "linear")

_CONV_ORDER = {"standard": 0, "group": 1, "dsconv": 2}


def conv_rank(conv: str) -> int:
    """Where ``conv`` goes in tables and legends: standard, group, dsconv, then anything else."""
    return _CONV_ORDER.get(conv, 9)


def conv_label(row: dict[str, Any]) -> str:
    """``standard``, ``dsconv`` or ``group (g=4)``."""
    return f"{row['conv']} (g={row['groups']})" if row["conv"] == "group" else row["conv"]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _sort_key(row: dict[str, Any]) -> tuple:
    return (row["dataset"], row["arch"], row["image_size"], row["width"],
            conv_rank(row["conv"]), row["conv"], row["groups"] or 0, row["device_name"])


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per configuration: accuracy mean/std/n over seeds, costs, median timings.

    ``top1_std`` is the sample standard deviation (n - 1), None for fewer than two runs with
    accuracy; ``n`` counts the runs in the configuration.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(getattr(run.record, k) for k in CONFIG_KEYS), []).append(run)
    rows = []
    for key, members in groups.items():
        first = members[0].record
        accs = [r.top1 for r in members if r.top1 is not None]
        top5 = [r.top5 for r in members if r.top5 is not None]
        row = dict(zip(CONFIG_KEYS, key))
        row.update(
            n=len(members), top1_mean=_mean(accs),
            top1_std=statistics.stdev(accs) if len(accs) > 1 else None, top5_mean=_mean(top5),
            **{k: getattr(first, k) for k in COST_KEYS},
            run_dirs=";".join(show_path(r.run_dir) for r in members),
            macs_breakdown=first.macs_breakdown,
        )
        for timing in TIMING_KEYS:
            row[timing] = statistics.median(getattr(r.record, timing) for r in members)
        rows.append(row)
    return sorted(rows, key=_sort_key)


def theory_vs_measurement(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Standard against dsconv for each configuration that has both.

    Ratios are standard / dsconv for costs and latency and dsconv / standard for throughput, so
    every ratio above 1 means dsconv is cheaper or faster. ``saving_delivered`` is the measured
    latency saving over the theoretical (MAC) saving: (1 - lat_ds/lat_std) / (1 - mac_ds/mac_std);
    1 means the hardware delivers the whole saving the MAC count promises.
    """
    by_key = {(tuple(r[k] for k in PAIR_KEYS), r["conv"]): r
              for r in rows if r["conv"] in ("standard", "dsconv")}
    out = []
    for (key, conv), std in by_key.items():
        ds = by_key.get((key, "dsconv"))
        if conv != "standard" or ds is None:
            continue
        mac_saving = 1 - ds["macs"] / std["macs"] if std["macs"] else 0.0
        acc_diff = (None if ds["top1_mean"] is None or std["top1_mean"] is None
                    else ds["top1_mean"] - std["top1_mean"])
        out.append({
            **{k: std[k] for k in PAIR_KEYS},
            "macs_ratio": _ratio(std["macs"], ds["macs"]),
            "params_ratio": _ratio(std["params"], ds["params"]),
            "latency_ratio": _ratio(std["latency_ms_p50"], ds["latency_ms_p50"]),
            "throughput_ratio": _ratio(ds["throughput_img_s"], std["throughput_img_s"]),
            "saving_delivered": _ratio(1 - ds["latency_ms_p50"] / std["latency_ms_p50"],
                                       mac_saving) if std["latency_ms_p50"] else None,
            "top1_diff": acc_diff,
        })
    return out


def layer_shares(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and layer type, the share (fraction) of MACs and of parameters.

    Shares are of the model totals, so ``uncounted`` holds what no counted layer owns
    (normalisation parameters, for example). Layer types beyond :data:`LAYER_TYPES` follow them
    in alphabetical order.
    """
    extra = sorted({t for row in rows for t in row["macs_breakdown"]} - set(LAYER_TYPES))
    types = [*LAYER_TYPES, *extra]
    out = []
    for row in rows:
        breakdown = row["macs_breakdown"]
        if not breakdown:
            continue  # nothing counted: a row of zeros would read as a model of uncounted layers
        share = {k: row[k] for k in SHARE_ID_KEYS} | {"conv": conv_label(row)}
        for total in ("macs", "params"):
            counted = 0
            for t in types:
                part = breakdown.get(t, {}).get(total, 0)
                counted += part
                share[f"{t}_{total}_share"] = _ratio(part, row[total]) or 0.0
            share[f"uncounted_{total}_share"] = _ratio(row[total] - counted, row[total]) or 0.0
        out.append(share)
    return out


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with exactly ``columns``; None becomes an empty cell."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows])


def write_csvs(out: Path, runs: Sequence[Run], rows: Sequence[dict[str, Any]],
               theory: Sequence[dict[str, Any]], shares: Sequence[dict[str, Any]]) -> list[str]:
    """Writes every table as CSV into ``out``; returns the file names."""
    run_rows = [{**r.record.to_dict(), "run_dir": show_path(r.run_dir), "top1": r.top1,
                 "top5": r.top5, "top1_source": r.top1_source} for r in runs]
    share_columns = list(dict.fromkeys(k for s in shares for k in s)) or list(SHARE_ID_KEYS)
    tables = {"results.csv": (rows, SUMMARY_COLUMNS), "runs.csv": (run_rows, RUN_COLUMNS),
              "theory_vs_measurement.csv": (theory, THEORY_COLUMNS),
              "layer_shares.csv": (shares, share_columns)}
    for name, (table, columns) in tables.items():
        write_csv(out / name, table, columns)
    return list(tables)
