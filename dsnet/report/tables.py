"""The report's tables as rows of dicts, and their CSV files.

A *configuration* is what runs share apart from the seed: the model and data
(:data:`MODEL_KEYS`) and the training schedule and optimiser (:data:`TRAIN_KEYS`). Accuracy is a
property of the trained networks, so it is aggregated over the configuration's seeds (one value
per trained network, mean ± Student-t 95% interval, :mod:`dsnet.report.stats`). Timing belongs to
where it was measured (:data:`ENV_KEYS`): a configuration evaluated in two runtimes or on two
devices gives two rows with the same accuracy, one not evaluated at all one row without timing.
Counted costs are taken from the first run; timings are medians over the evaluated runs. Values
stay in the units of the result files (accuracy as a fraction); Markdown formats them.

A run with a conv mix (:data:`MIX_KEY`: one conv type per stage, ``experiment=conv_mix``) is
configured by its mix, not by its ``conv``, which such a network does not use: the mix joins the
configuration's keys and names its series (:func:`conv_label`).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsnet.report.discover import FORWARD_KEYS, Run, show_path
from dsnet.report.stats import mean_ci
from dsnet.results import RESULT_KEYS

MODEL_KEYS = ("dataset", "arch", "conv", "groups", "width", "image_size", "in_chans", "num_classes")
# From the train run; None for an untrained eval (and train_size None: the whole split).
TRAIN_KEYS = ("train_size", "epochs", "lr", "weight_decay", "depthwise_weight_decay", "label_smoothing")
ENV_KEYS = ("runtime", "device", "device_name", "precision", "channels_last", "num_threads",
            "batch_size")  # where latency was measured; None when it was not
CONFIG_KEYS = (*MODEL_KEYS, *TRAIN_KEYS, *ENV_KEYS)
MIX_KEY = "mix"  # the conv mix of a network with one conv type per stage; absent (None) otherwise
COST_KEYS = ("params", "macs", "train_macs", "activations", "memory_traffic_bytes")  # counted, so equal across seeds
TIMING_KEYS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_iqr", "throughput_img_s")
SUMMARY_COLUMNS = (*CONFIG_KEYS, "n", "top1_mean", "top1_ci95", "top1_std", "top5_mean",
                   "val_acc_best_mean", *COST_KEYS, *TIMING_KEYS, "n_timed", "n_contended",
                   "runtime_version", "time_per_epoch_s", "cpu_h", "n_cpu", "run_dirs")
RUN_COLUMNS = ("run_dir", "train_dir", "top1_source", "train_size", "epochs", "time_per_epoch_s",
               "val_acc_best", "lr", "weight_decay", "depthwise_weight_decay", "label_smoothing",
               *(k for k in RESULT_KEYS if k not in ("run_dir", "macs_breakdown")),
               *(k for k in FORWARD_KEYS if k not in RESULT_KEYS))

# Two configurations equal in these are compared with each other (the conv type and the
# optimiser's settings, tuned per conv type, may differ).
TUNED_KEYS = ("lr", "weight_decay")
PAIR_KEYS = tuple(k for k in CONFIG_KEYS if k not in ("conv", "groups", *TUNED_KEYS))
THEORY_COLUMNS = (*PAIR_KEYS, "runtime_version", "macs_ratio", "params_ratio", "latency_ratio",
                  "throughput_ratio", "saving_delivered", "top1_diff")

SHARE_ID_KEYS = ("dataset", "arch", "conv", "width", "image_size")
# The keys of dsnet.models.cost's macs_breakdown in the order of the MobileNet paper's Table 2 rows:
# 1x1 conv, depthwise, full k x k conv, (grouped), fully connected. Repeated here rather than
# imported because dsnet.models.cost imports torch and the report only reads files.
LAYER_TYPES = ("pointwise", "depthwise", "standard", "grouped", "linear")

_CONV_ORDER = {"standard": 0, "group": 1, "dsconv": 2}


CONTENTION_LIMIT = 0.05  # share of all CPUs other processes may use while a run is timed


def is_contended(run: Run) -> bool:
    """Whether ``run`` was timed while other processes used the CPUs (as measured, or as flagged)."""
    return bool(run.values.get("contention_flagged")) or (
        (run.values.get("cpu_contention") or 0.0) > CONTENTION_LIMIT)


def conv_rank(conv: str) -> int:
    """Where ``conv`` goes in tables and legends: standard, group, dsconv, then anything else."""
    return _CONV_ORDER.get(conv, 9)


def conv_label(row: dict[str, Any]) -> str:
    """``standard``, ``dsconv`` or ``group (g=4)``; a conv mix's name where the row has one."""
    if row.get(MIX_KEY) is not None:
        return str(row[MIX_KEY])
    return f"{row['conv']} (g={row['groups']})" if row["conv"] == "group" else row["conv"]


def config_key(values: dict[str, Any]) -> tuple:
    """What a run or row shares with the others of its configuration: the model and training keys,
    and its conv mix."""
    return (*(values.get(k) for k in (*MODEL_KEYS, *TRAIN_KEYS)), values.get(MIX_KEY))


def summary_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """:data:`SUMMARY_COLUMNS`, with :data:`MIX_KEY` after ``conv`` when a row has a mix."""
    columns = list(SUMMARY_COLUMNS)
    if any(r.get(MIX_KEY) is not None for r in rows):
        columns.insert(columns.index("conv") + 1, MIX_KEY)
    return columns


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``; None when either is unknown or ``den`` is 0."""
    return None if num is None or not den else num / den


def _sort_key(row: dict[str, Any]) -> tuple:
    return (row["dataset"], row["arch"], row["image_size"], row["width"], conv_rank(row["conv"]),
            row["conv"], row["groups"] or 0, row.get(MIX_KEY) or "", *(str(row[k]) for k in (*TRAIN_KEYS, *ENV_KEYS)))


def by_seed(runs: Sequence[Run], value: Callable[[Run], Any]) -> dict[Any, Any]:
    """One ``value(run)`` per trained network (runs evaluating the same one count once), by seed;
    a run whose value is None is left out. A seed two networks share keys the second by its identity."""
    out: dict[Any, Any] = {}
    seen = set()
    for run in runs:
        if run.identity in seen or (v := value(run)) is None:
            continue
        seen.add(run.identity)
        seed = run.values.get("seed")
        out[seed if seed is not None and seed not in out else str(run.identity)] = v
    return out


def accuracy_by_seed(runs: Sequence[Run], key: str = "top1") -> dict[Any, float]:
    """One accuracy per trained network, by seed (:func:`by_seed`)."""
    return by_seed(runs, lambda run: run.values.get(key))


# A run has *diverged* at an epoch after its first whose mean training loss is back within
# DIVERGED_MARGIN of ln(num_classes), the cross-entropy of a uniform guess: a too-high learning rate
# that threw the network back to chance, not a slow start. In the published studies the collapsed
# runs read 2.32-2.39 (ln 10 = 2.30) and every other run stays at or below 1.92 after its first epoch;
# a validation top-1 alone would also flag a one-epoch dip whose training loss kept falling.
DIVERGED_MARGIN = 0.1


def diverged_epochs(run: Run) -> list[int]:
    """The epochs after the first at which ``run``'s training loss was back at chance."""
    classes = run.values.get("num_classes")
    if not classes:
        return []
    chance = math.log(classes) - DIVERGED_MARGIN
    return sorted(e for e, loss in run.curve("train/loss_epoch").items() if e > 1 and loss >= chance)


def diverged_by_seed(runs: Sequence[Run]) -> dict[Any, list[int]]:
    """``{seed: epochs}`` of the trained networks among ``runs`` that diverged (:func:`by_seed`)."""
    return by_seed(runs, lambda run: diverged_epochs(run) or None)


def _median(runs: Sequence[Run], key: str) -> float | None:
    values = [r.values[key] for r in runs if r.values.get(key) is not None]
    return statistics.median(values) if values else None


def _first(runs: Sequence[Run], key: str) -> Any:
    return next((r.values[key] for r in runs if r.values.get(key) is not None), None)


def _cpu_hours(runs: Sequence[Run]) -> tuple[float | None, int]:
    """The training CPU-hours of the networks among ``runs`` trained on a CPU (each counted once,
    however many evals it has) that recorded them (``cpu_s``), and how many did. A network trained
    on an accelerator (``train_device``) is left out: its process's CPU time is not its cost."""
    cpu_s = {r.identity: r.values["cpu_s"] for r in runs
             if r.values.get("cpu_s") is not None and r.values.get("train_device") in (None, "cpu")}
    return (sum(cpu_s.values()) / 3600 if cpu_s else None), len(cpu_s)


def summarise(runs: Sequence[Run], timed: Sequence[Run] | None = None) -> list[dict[str, Any]]:
    """One row per configuration and measurement environment (see the module docstring).

    Args:
        runs: every run; accuracy, costs and training figures come from all of them.
        timed: the runs whose timings count (default: every evaluated run); a configuration whose
            evaluated runs are all left out keeps its environment rows, without timings.

    ``n`` counts the trained networks with top-1 (seeds); ``top1_ci95`` is the half-width of the
    95% interval of the mean, None below two seeds; ``n_timed`` counts the timed runs of the row,
    ``n_contended`` those of them timed under CPU contention (:func:`is_contended`); ``cpu_h`` is
    the training CPU-hours of the ``n_cpu`` networks trained on a CPU that recorded theirs (of
    ``n_runs``).
    """
    timed_ids = {id(r) for r in (timed if timed is not None else runs)}
    configs: dict[tuple, list[Run]] = {}
    for run in runs:
        configs.setdefault(config_key(run.values), []).append(run)
    rows = []
    for key, members in configs.items():
        by_seed, val_by_seed = accuracy_by_seed(members), accuracy_by_seed(members, "val_acc_best")
        top1 = mean_ci(list(by_seed.values()))
        envs: dict[tuple, list[Run]] = {}
        for run in (r for r in members if r.record is not None):
            envs.setdefault(tuple(run.values.get(k) for k in ENV_KEYS), []).append(run)
        for env, env_runs in (envs or {(None,) * len(ENV_KEYS): []}).items():
            in_time = [r for r in env_runs if id(r) in timed_ids]
            breakdown = next((r.record.macs_breakdown for r in env_runs), {})
            row = dict(zip((*MODEL_KEYS, *TRAIN_KEYS, MIX_KEY), key)) | dict(zip(ENV_KEYS, env))
            row.update(
                n=top1["n"], n_runs=len({r.identity for r in members}), top1_mean=top1["mean"],
                top1_ci95=top1["ci95"], top1_std=top1["std"],
                top5_mean=mean_ci(list(accuracy_by_seed(members, "top5").values()))["mean"],
                val_acc_best_mean=mean_ci(list(val_by_seed.values()))["mean"],
                params=_first(members, "params"), macs=_first(members, "macs"),
                train_macs=_first(env_runs, "train_macs"),
                activations=_first(members, "activations"),
                memory_traffic_bytes=_first(members, "memory_traffic_bytes"),
                **{k: _median(in_time, k) for k in TIMING_KEYS}, n_timed=len(in_time),
                n_contended=sum(is_contended(r) for r in in_time),
                runtime_version=_first(env_runs, "runtime_version"),
                time_per_epoch_s=_median(members, "time_per_epoch_s"),
                **dict(zip(("cpu_h", "n_cpu"), _cpu_hours(members))),
                run_dirs=";".join(sorted({show_path(r.run_dir) for r in [*members]})),
                macs_breakdown=breakdown, top1_by_seed=by_seed,
                val_by_seed=val_by_seed, diverged_by_seed=diverged_by_seed(members),
                **{k: _first(members, k) for k in sorted({k for r in members for k in r.values
                                                          if k.startswith("hparams/")})},
            )
            rows.append(row)
    return sorted(rows, key=_sort_key)


def keys_except(*free: str) -> list[str]:
    """The model and training keys of a configuration other than ``free``: what two configurations
    compared across ``free`` must share."""
    return [k for k in (*MODEL_KEYS, *TRAIN_KEYS) if k not in free]


def one_per_config(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each configuration (its other rows are other measurement environments)."""
    seen, out = set(), []
    for row in rows:
        key = config_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def pairs(rows: Sequence[dict[str, Any]], a: str = "standard", b: str = "dsconv",
          keys: Sequence[str] = PAIR_KEYS) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(row_a, row_b)`` for every two rows of conv ``a`` and ``b`` equal in ``keys``."""
    return [(ra, rb) for ra in rows if ra["conv"] == a for rb in rows
            if rb["conv"] == b and all(ra[k] == rb[k] for k in keys)]


def theory_vs_measurement(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Standard against dsconv for each configuration and environment that has both.

    Ratios are standard / dsconv for costs and latency and dsconv / standard for throughput, so
    every ratio above 1 means dsconv is cheaper or faster. ``saving_delivered`` is the measured
    latency saving over the theoretical (MAC) saving: (1 - lat_ds/lat_std) / (1 - mac_ds/mac_std);
    1 means the hardware delivers the whole saving the MAC count promises.
    """
    out = []
    for std, ds in pairs(rows):
        mac_saving = 1 - ds["macs"] / std["macs"] if std["macs"] else 0.0
        lat_saving = (None if ds["latency_ms_p50"] is None or not std["latency_ms_p50"]
                      else 1 - ds["latency_ms_p50"] / std["latency_ms_p50"])
        out.append({
            **{k: std[k] for k in PAIR_KEYS}, "runtime_version": std["runtime_version"],
            "macs_ratio": ratio(std["macs"], ds["macs"]),
            "params_ratio": ratio(std["params"], ds["params"]),
            "latency_ratio": ratio(std["latency_ms_p50"], ds["latency_ms_p50"]),
            "throughput_ratio": ratio(ds["throughput_img_s"], std["throughput_img_s"]),
            "saving_delivered": ratio(lat_saving, mac_saving),
            "top1_diff": (None if ds["top1_mean"] is None or std["top1_mean"] is None
                          else ds["top1_mean"] - std["top1_mean"]),
        })
    return out


def layer_shares(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and layer type, the share (fraction) of MACs and of parameters.

    Shares are of the model totals, so ``uncounted`` holds what no counted layer owns
    (normalisation parameters, for example). Layer types beyond :data:`LAYER_TYPES` follow them
    in alphabetical order. One row per model: environments and schedules do not change shares.
    """
    extra = sorted({t for row in rows for t in row["macs_breakdown"]} - set(LAYER_TYPES))
    types = [*LAYER_TYPES, *extra]
    out, seen = [], set()
    for row in rows:
        breakdown = row["macs_breakdown"]
        ident = (*(row[k] for k in MODEL_KEYS), row.get(MIX_KEY))
        if not breakdown or ident in seen:
            continue  # nothing counted: a row of zeros would read as a model of uncounted layers
        seen.add(ident)
        share = {k: row[k] for k in SHARE_ID_KEYS} | {"conv": conv_label(row)}
        for total in ("macs", "params"):
            counted = 0
            for t in types:
                part = breakdown.get(t, {}).get(total, 0)
                counted += part
                share[f"{t}_{total}_share"] = ratio(part, row[total]) or 0.0
            share[f"uncounted_{total}_share"] = ratio(row[total] - counted, row[total]) or 0.0
        out.append(share)
    return out


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with exactly ``columns``; None becomes an empty cell."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows])


def hparam_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The ``hparams/*`` keys some row has (written by a hyperparameter search), sorted."""
    return sorted({k for r in rows for k in r if k.startswith("hparams/")})


def write_csvs(out: Path, runs: Sequence[Run], tables: dict[str, tuple[Sequence[dict], Sequence[str]]]
               ) -> list[str]:
    """Writes ``runs.csv`` and every ``{name: (rows, columns)}`` table into ``out``; returns the names."""
    run_rows = [{**r.values, "run_dir": show_path(r.run_dir), "top1_source": r.top1_source,
                 "train_dir": show_path(r.train_dir) if r.train_dir else None} for r in runs]
    tables = {**tables, "runs.csv": (run_rows, RUN_COLUMNS)}
    for name, (table, columns) in tables.items():
        write_csv(out / name, table, columns)
    return list(tables)
