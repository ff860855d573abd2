"""Markdown sections for :mod:`dsnet.report.compare` and for the tuned hyperparameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dsnet.report.markdown import fmt, has_epochs, markdown_table
from dsnet.report.tables import DIVERGED_MARGIN, conv_label, one_per_config

_DIVERGED_NOTE = (
    "*diverged* names the seeds whose run, on either side, was back at chance after its first epoch "
    "(mean training loss within {margin:g} of ln C, C classes); the means include it.").format(
    margin=DIVERGED_MARGIN)
_PAIRED_NOTE = (
    "Each comparison pairs the runs of its two configurations by seed; the difference is b − a in "
    "percentage points, mean over the n seed pairs ± the half-width of its 95% confidence interval "
    "(Student t, n − 1 degrees of freedom). An interval that excludes 0 is a difference the seeds "
    "do not explain. *conv* comparisons keep each arm's own learning rate and weight decay. The split "
    "is *test* where both configurations were tested; where either was trained without a test split "
    "(the runs a recipe is chosen with), the pair compares on *val*, the best epoch's validation "
    "top-1, when they share two seeds or more. An arm trained at two learning rates names each side's. "
    + _DIVERGED_NOTE + "\n")
_EQUAL_COST_NOTE = (
    "Configurations of two convolution types whose {metrics} agree within {tol} (max/min − 1), "
    "whatever their widths; the closest match per configuration. Difference b − a in percentage "
    "points, paired by seed, ± 95% CI (Student t, n − 1 dof).\n")
_CONVERGENCE_NOTE = (
    "Each schedule that was also trained twice as long: how much the doubling moved each arm's top-1 "
    "and the gap between two arms, paired by seed (long − short; for the gap, the per-seed gap at "
    "the long schedule minus the one at the short), in percentage points ± 95% CI (Student t, "
    "n − 1 dof); the accuracy columns are means over the same seed pairs. *val* is the best epoch's "
    "validation top-1, the split a schedule is chosen on; *test* is the test top-1 of the same runs, "
    "which reports what the choice gave. The schedule counts as converged when every change on val "
    "is under {threshold:.1f} pp. An arm whose learning rate changes with the schedule (a step-down "
    "after a divergence) names both rates. {diverged}\n")
_METRIC_NAMES = {"params": "params", "macs": "MACs", "latency_ms_p50": "latency p50 (ms)"}


def _diff_cell(row: dict[str, Any]) -> str:
    if row["diff_mean"] is None:
        return "– (no seed in common)"
    cell = f"{row['diff_mean'] * 100:+.2f}"
    return cell + (f" ± {row['diff_ci95'] * 100:.2f}" if row["diff_ci95"] is not None else "")


def _cost(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric.startswith("latency") else f"{value / 1e6:.3f} M"


def _seeds_cell(r: dict[str, Any]) -> str:
    """``3 (2 3 4)``, and the seeds whose run diverged: ``3 (2 3 4; diverged: 2)``."""
    if not r["n_pairs"]:
        return "0"
    return f"{r['n_pairs']} ({r['seeds']}" + (f"; diverged: {r['diverged']})" if r.get("diverged") else ")")


def comparisons_section(rows: Sequence[dict[str, Any]], by_seed: Sequence[dict[str, Any]] = ()) -> str:
    """Paired differences by seed, one row per comparison; then the conv comparisons seed by seed
    (:func:`dsnet.report.compare.comparisons_by_seed`)."""
    epochs = has_epochs(rows)
    header = ["factor", "split", "dataset", "model", "width", "resolution (px)", *(["epochs"] if epochs else []),
              "a", "b", "top-1 a (%)", "top-1 b (%)", "b − a (pp), mean ± 95% CI", "seed pairs"]
    body = [[r["factor"], r["split"], r["dataset"], r["arch"], f"{r['width']:g}", str(r["image_size"]),
             *([fmt(r["epochs"], "d")] if epochs else []), r["a"], r["b"],
             fmt(r["a_top1_mean"], ".2f", 100), fmt(r["b_top1_mean"], ".2f", 100),
             _diff_cell(r), _seeds_cell(r)] for r in rows]
    return ("## Paired differences by seed\n\n" + _PAIRED_NOTE + "\n"
            + (markdown_table(header, body) if body else
               "No two configurations with top-1 differ in one factor only.\n")
            + _conv_by_seed_table(by_seed))


def _conv_by_seed_table(rows: Sequence[dict[str, Any]]) -> str:
    """The conv comparisons seed by seed: each side's top-1 and b − a, † on a diverged run."""
    if not rows:
        return ""
    epochs = has_epochs(rows)

    def cell(r, side):
        return fmt(r[f"{side}_top1"], ".2f", 100) + (" †" if side in r["diverged"].split() else "")

    header = ["split", "dataset", "model", "width", "resolution (px)", *(["epochs"] if epochs else []), "a", "b",
              "seed", "top-1 a (%)", "top-1 b (%)", "b − a (pp)"]
    body = [[r["split"], r["dataset"], r["arch"], f"{r['width']:g}", str(r["image_size"]),
             *([fmt(r["epochs"], "d")] if epochs else []), r["a"], r["b"], str(r["seed"]),
             cell(r, "a"), cell(r, "b"), fmt(r["diff"], "+.2f", 100)] for r in rows]
    return ("\n### Convolution types by seed\n\nEach *conv* comparison above, one row per seed both sides "
            "ran: top-1 in %, b − a in pp; † marks a run that diverged.\n\n" + markdown_table(header, body))


def _matched_cell(row: dict[str, Any]) -> str:
    name = _METRIC_NAMES[row["metric"]]
    return name if row["source"] == "runs" else f"{name}, match record"


def _records_note(records: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Where each latency-match record timed its two networks (both in one process)."""
    lines = []
    for source, r in records:
        env = r["environment"]
        lines.append(f"- `{source}`: {r['target_conv']} w{r['target_width']:g} {r['target']:.3f} ms, "
                     f"{r['conv']} w{r['width']:g} {r['cost']:.3f} ms, timed in one process on "
                     f"{env.get('device_name', env.get('device', '?'))} ({env.get('platform', '?')}), "
                     f"{env.get('num_threads', '?')} thread(s), torch {env.get('torch', '?')}")
    return ("\n*match record* rows take both latencies from a width search that timed the two networks "
            "side by side in one process (`python -m dsnet.study match STUDY --cost latency`), not from the runs' "
            "own evaluations, which may come from different machines; the pair is equal in latency "
            "where that search ran:\n\n" + "\n".join(lines) + "\n") if lines else ""


def equal_cost_section(rows: Sequence[dict[str, Any]], tolerance: float, latency_tolerance: float,
                       records: Sequence[tuple[str, dict[str, Any]]] = ()) -> str:
    """The at-equal-cost table: each pair with both sides' costs and the paired difference;
    ``records`` are the latency-match records (``(source, record)``) some rows come from."""
    epochs = has_epochs(rows)
    header = ["matched", "dataset", "model", "resolution (px)", *(["epochs"] if epochs else []), "a", "a width",
              "a cost", "b", "b width", "b cost", "cost b/a", "top-1 a (%)", "top-1 b (%)",
              "b − a (pp), mean ± 95% CI", "seed pairs"]
    body = [[_matched_cell(r), r["dataset"], r["arch"], str(r["image_size"]),
             *([fmt(r["epochs"], "d")] if epochs else []), r["a_conv"],
             f"{r['a_width']:g}", _cost(r["a_cost"], r["metric"]), r["b_conv"], f"{r['b_width']:g}",
             _cost(r["b_cost"], r["metric"]), f"{r['cost_ratio']:.3f}",
             fmt(r["a_top1_mean"], ".2f", 100), fmt(r["b_top1_mean"], ".2f", 100), _diff_cell(r),
             str(r["n_pairs"])] for r in rows]
    tol = f"{tolerance:.0%}" if latency_tolerance == tolerance else \
        f"{tolerance:.0%} ({latency_tolerance:.0%} for latency, a measurement)"
    note = _EQUAL_COST_NOTE.format(metrics="parameters, multiply-adds or measured latency", tol=tol)
    return ("## At equal cost\n\n" + note + "\n"
            + (markdown_table(header, body) if body else
               f"No two configurations of different convolution types match within {tol}"
               " (train the widths that match, e.g. with the width-matching recipe).\n")
            + _records_note(records))


HPARAM_MIRRORS = ("hparams/lr", "hparams/weight_decay", "hparams/depthwise_weight_decay")


def hparams_section(rows: Sequence[dict[str, Any]], hparam_keys: Sequence[str]) -> str:
    """Learning rate, weight decay and every ``hparams/*`` key of each trained configuration.

    ``hparams/lr`` and the like repeat the config's value; they get a column only where some
    configuration's differs from it.
    """
    configs = [r for r in one_per_config(rows) if r["epochs"] is not None]
    keys = [k for k in hparam_keys if k not in HPARAM_MIRRORS or any(
        r.get(k) is not None and r.get(k) != r.get(k.split("/", 1)[1]) for r in configs)]
    dw = any(r["depthwise_weight_decay"] is not None for r in configs)
    header = ["dataset", "model", "conv", "width", "epochs", "lr", "weight decay",
              *(["depthwise wd"] if dw else []), *(k.split("/", 1)[1] for k in keys),
              "val top-1 (%)", "runs"]
    body = [[r["dataset"], r["arch"], conv_label(r), f"{r['width']:g}", str(r["epochs"]),
             fmt(r["lr"], "g"), fmt(r["weight_decay"], "g"),
             *([fmt(r["depthwise_weight_decay"], "g")] if dw else []),
             *(fmt(r.get(k), "") for k in keys), fmt(r["val_acc_best_mean"], ".2f", 100),
             str(r["n_runs"])] for r in configs]
    return ("## Hyperparameters\n\nThe optimiser's settings of each trained configuration (its "
            "config.yaml) and the `hparams/*` keys its metrics.json holds (a search's trial count "
            "and grid, for instance); *val top-1* is the best epoch's validation accuracy, mean over "
            "seeds, the split a search selects on.\n\n"
            + (markdown_table(header, body) if body else "No training run among the runs.\n"))


def convergence_section(rows: Sequence[dict[str, Any]], by_seed: Sequence[dict[str, Any]] = ()) -> str:
    """The convergence check: each arm's shift and each gap's change when the schedule doubles,
    then the same readings seed by seed (:func:`dsnet.report.compare.convergence_by_seed`)."""
    if not rows:
        return ("## Convergence check\n\nNo configuration was also trained twice as long (the check "
                "pairs runs equal in everything but epochs, one schedule twice the other).\n")
    header = ["split", "model", "width", "resolution (px)", "what", "epochs", "top-1 short (%)", "top-1 long (%)",
              "change (pp), mean ± 95% CI", "seed pairs", "under the threshold"]
    body = [[r["split"], r["arch"], f"{r['width']:g}", str(r["image_size"]), r["what"],
             f"{r['short_epochs']} → {r['long_epochs']}", fmt(r["short_mean"], ".2f", 100),
             fmt(r["long_mean"], ".2f", 100),
             _diff_cell({"diff_mean": r["change_mean"], "diff_ci95": r["change_ci95"]}),
             _seeds_cell(r), {True: "yes", False: "**no**", None: "–"}[r["meets"]]]
            for r in rows]
    return ("## Convergence check\n\n" + _CONVERGENCE_NOTE.format(threshold=rows[0]["threshold"] * 100, diverged=_DIVERGED_NOTE)
            + "\n" + markdown_table(header, body) + _by_seed_tables(by_seed))


def _by_seed_tables(rows: Sequence[dict[str, Any]]) -> str:
    """One table per doubling and pair of arms, a row per seed: top-1 in %, changes in pp."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in ("split", "dataset", "arch", "width", "image_size",
                                               "short_epochs", "long_epochs", "a", "b")), []).append(r)
    if not groups:
        return ""
    parts = ["\n### By seed\n\nThe same readings, seed by seed: top-1 in %, changes and gaps in pp "
             "(long − short; gap = a − b); – where a seed lacks that run; † marks a run that diverged.\n"]
    for (split, dataset, arch, width, size, short, long, a, b), members in groups.items():
        def cell(r, name):
            return fmt(r[name], ".2f", 100) + (" †" if name in r["diverged"].split() else "")

        name_a, name_b = (label.split(" (")[0] for label in (a, b))  # the title names the rates
        header = ["seed", f"{name_a} {short}", f"{name_a} {long}", "change", f"{name_b} {short}", f"{name_b} {long}",
                  "change", f"gap {short}", f"gap {long}", "gap change"]
        body = [[str(r["seed"]), cell(r, "a_short"), cell(r, "a_long"), fmt(r["a_change"], "+.2f", 100),
                 cell(r, "b_short"), cell(r, "b_long"), fmt(r["b_change"], "+.2f", 100),
                 fmt(r["gap_short"], ".2f", 100), fmt(r["gap_long"], ".2f", 100), fmt(r["gap_change"], "+.2f", 100)]
                for r in members]
        parts.append(f"\n**{split}: {dataset}, {arch} w{width:g}, {size} px, {short} → {long} epochs: {a} against {b}**\n\n"
                     + markdown_table(header, body))
    return "".join(parts)
