"""A conv-mix study's latency per mix and runtime, its Pareto fronts and the table per mix.

The latency of each mix is measured apart from the training runs, all mixes in alternation
(``scripts/latency_conv_mix.py``: deploy form, one thread, batch 1), into the study folder's
``latency.csv``: one row per ``(mix, runtime, image_size)``. Joined by mix to the study's
configurations (one per mix: accuracy is the mix's over its seeds, at the resolution it trained at),
it gives one accuracy-against-latency figure per runtime and input size, drawn by
:mod:`dsnet.report.plots` with its Pareto front, and ``mixes.md``/``mixes.csv``: per mix the counted
cost, the latency in every runtime and size, top-1, and on which fronts the mix lies.

*Excess over the chord*: a mix's top-1 minus what the two pure ends give at its latency when accuracy
is interpolated between them linearly in log latency, paired by seed (for each seed, the mix's top-1
minus the chord through the two ends' top-1 of that seed), mean ± 95% interval over seeds. Above
zero: the mix beats the straight trade between the pure ends at equal latency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsnet.report.markdown import fmt, markdown_table
from dsnet.report.plots import pareto_front, plot_cost_axis
from dsnet.report.stats import mean_ci
from dsnet.report.tables import MIX_KEY, one_per_config, write_csv

LATENCY_FILE = "latency.csv"
ENDS = ("dsconv", "standard")  # the pure mixes: all depthwise-separable, all full convolutions


def axis_name(runtime: str, image_size: int) -> str:
    """``eager_28px``: one latency axis of ``latency.csv``."""
    return f"{runtime}_{image_size}px"


def _configs(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r[MIX_KEY]: r for r in one_per_config(rows) if r.get(MIX_KEY) is not None and r["top1_mean"] is not None}


def latency_rows(rows: Sequence[dict[str, Any]], latency: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per latency axis, the mixes' configuration rows with that axis's latency and environment."""
    configs = _configs(rows)
    out: dict[str, list[dict[str, Any]]] = {}
    for lat in latency:
        if lat["mix"] in configs:
            out.setdefault(axis_name(lat["runtime"], lat["image_size"]), []).append({
                **configs[lat["mix"]], "latency_ms_p50": lat["latency_ms_p50"], "runtime": lat["runtime"],
                "device_name": f"{lat['image_size']} px",
                "n_contended": lat["flagged_rounds"]})
    return out


def chord_excess(config: dict[str, Any], ends: Sequence[dict[str, Any]], ms: dict[str, float]) -> dict[str, Any]:
    """The mix's top-1 over the chord between the pure ``ends`` at its latency (module docstring)."""
    lo, hi = ends
    t = (math.log(ms[config[MIX_KEY]]) - math.log(ms[lo[MIX_KEY]])) / (math.log(ms[hi[MIX_KEY]]) - math.log(ms[lo[MIX_KEY]]))
    seeds = sorted(set(config["top1_by_seed"]) & set(lo["top1_by_seed"]) & set(hi["top1_by_seed"]), key=str)
    return mean_ci([config["top1_by_seed"][s] - ((1 - t) * lo["top1_by_seed"][s] + t * hi["top1_by_seed"][s])
                    for s in seeds])


def mix_table(rows: Sequence[dict[str, Any]], latency: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per mix: cost, latency per axis, top-1, the fronts it lies on and its excess over the
    chord of each axis (mixes other than the pure ends, where both ends were trained and timed)."""
    configs = _configs(rows)
    mixes = sorted(configs, key=lambda m: (configs[m]["macs"] or 0, m))
    table = {m: {MIX_KEY: m, "params": configs[m]["params"], "macs": configs[m]["macs"],
                 "top1_mean": configs[m]["top1_mean"], "top1_ci95": configs[m]["top1_ci95"], "n": configs[m]["n"],
                 "fronts": []} for m in mixes}
    for key in ("params", "macs"):
        front = pareto_front([(configs[m][key], configs[m]["top1_mean"]) for m in mixes])
        for i in front:
            table[mixes[i]]["fronts"].append(key)
    for axis, axis_rows in latency_rows(rows, latency).items():
        ms = {r[MIX_KEY]: r["latency_ms_p50"] for r in axis_rows}
        for m in ms:
            table[m][f"latency_ms_{axis}"] = ms[m]
        timed = [m for m in mixes if m in ms]
        for i in pareto_front([(ms[m], configs[m]["top1_mean"]) for m in timed]):
            table[timed[i]]["fronts"].append(axis)
        if all(e in ms for e in ENDS) and ms[ENDS[0]] != ms[ENDS[1]]:
            for m in timed:
                if m not in ENDS:
                    excess = chord_excess(configs[m], [configs[e] for e in ENDS], ms)
                    table[m][f"chord_excess_{axis}"] = excess["mean"]
                    table[m][f"chord_excess_{axis}_ci95"] = excess["ci95"]
    out = [table[m] for m in mixes]
    for row in out:
        row["fronts"] = " ".join(row["fronts"])
    return out


def _axes(table: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k[len("latency_ms_"):] for r in table for k in r if k.startswith("latency_ms_")))


def mixes_section(table: Sequence[dict[str, Any]]) -> str:
    """``mixes.md``: the table per mix, then the excess over the chord per latency axis."""
    axes = _axes(table)
    header = ["mix", "params", "MACs", *(f"latency {a.replace('_', ' ')} (ms)" for a in axes),
              "top-1 (%) mean ± 95% CI", "seeds", "on the Pareto front of"]
    body = [[r[MIX_KEY], fmt(r["params"], ","), fmt(r["macs"], ","), *(fmt(r.get(f"latency_ms_{a}"), ".3f") for a in axes),
             f"{fmt(r['top1_mean'], '.2f', 100)} ± {fmt(r['top1_ci95'], '.2f', 100)}", str(r["n"]),
             r["fronts"] or "–"] for r in table]
    text = ["# Conv mixes\n",
            "Counted cost at the input the networks trained at; latency of the deploy form, one thread, "
            "batch 1, median over interleaved rounds (latency.csv); top-1 over the seeds.\n",
            markdown_table(header, body)]
    excess = [a for a in axes if any(f"chord_excess_{a}" in r for r in table)]
    if excess:
        text += ["\n## Excess over the chord between the pure ends\n",
                 "Top-1 minus the straight trade between all-dsconv and all-standard at the mix's latency "
                 "(linear in log latency), paired by seed, in percentage points, mean ± 95% CI. Above 0: the "
                 "mix beats both pure ends at equal latency.\n",
                 markdown_table(["mix", *(a.replace("_", " ") for a in excess)],
                                [[r[MIX_KEY], *(f"{fmt(r.get(f'chord_excess_{a}'), '+.2f', 100)} ± "
                                                f"{fmt(r.get(f'chord_excess_{a}_ci95'), '.2f', 100)}" for a in excess)]
                                 for r in table if any(f"chord_excess_{a}" in r for a in excess)])]
    return "\n".join(text)


def write_mix_report(rows: Sequence[dict[str, Any]], latency: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """Writes ``mixes.md``, ``mixes.csv`` and ``top1_vs_latency_<runtime>_<size>px`` figures into ``out``;
    returns the file names (none when no row has a mix)."""
    table = mix_table(rows, latency)
    if not table:
        return []
    names = []
    for axis, axis_rows in sorted(latency_rows(rows, latency).items()):
        names += plot_cost_axis(axis_rows, out, "latency_ms_p50", f"top1_vs_latency_{axis}")
    columns = list(dict.fromkeys(k for r in table for k in r))
    write_csv(out / "mixes.csv", table, columns)
    (out / "mixes.md").write_text(mixes_section(table), encoding="utf-8")
    return ["mixes.md", "mixes.csv", *names]
