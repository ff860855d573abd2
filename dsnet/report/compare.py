"""Comparisons between configurations: paired differences by seed, at equal width and at equal cost.

A *comparison* pairs two configurations that differ in one factor and are equal in everything
else (:data:`FACTORS`): the convolution type (each arm keeps its own tuned learning rate and weight
decay), the schedule length (the convergence check: doubling the epochs), the depthwise weight
decay (the paper's detail) or the label smoothing (a recipe's choice). Its top-1 difference is
taken seed by seed (``b - a``), with the 95% interval of the per-seed differences
(:func:`dsnet.report.stats.paired_difference`). Top-1 is the test split's where both sides have
it; two configurations trained without a test split (``test=false``: the runs a recipe is chosen
with) are compared on their best epochs' validation top-1 instead, when they share at least two
seeds: such a comparison is evidence for a decision, and one seed gives it no interval.

The *convergence check* asks whether a schedule is long enough: doubling it must move each arm's
top-1 and the standard − other gap by less than a threshold (0.5 pp, the Fashion-MNIST study's criterion). Both are paired by
seed: an arm's shift is its long run minus its short run, the gap's change is the long schedule's
per-seed gap minus the short one's. It is read on each split that has the accuracies: on
validation (each run's best epoch, ``val/acc_best``), the split a schedule is chosen on, and on
test, which only reports what the choice gave.

*At equal cost* pairs configurations of two convolution types whose parameters, multiply-adds or
measured latency agree within a relative tolerance, whatever their widths: the accuracy each
convolution type reaches for the same budget. Both sides' actual costs are in every row.

A latency match measured once, by a width search that timed both networks in one process
(``python -m dsnet.study match STUDY --cost latency``), pairs the runs of the two widths it names even where
their own eval latencies come from different machines: :func:`latency_match_pairs`, whose rows take
both costs from the search's record.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

from dsnet.report.stats import paired_difference
from dsnet.report.tables import (
    ENV_KEYS,
    MIX_KEY,
    TUNED_KEYS,
    conv_label,
    conv_rank,
    keys_except,
    one_per_config,
    ratio,
)

# factor -> the keys that may differ between its two sides (all other configuration keys match).
FACTORS = {"conv": ("conv", "groups", *TUNED_KEYS), "epochs": ("epochs",),
           "depthwise_weight_decay": ("depthwise_weight_decay",), "label_smoothing": ("label_smoothing",)}
COMPARISON_COLUMNS = ("factor", "split", "dataset", "arch", "width", "image_size", "epochs", "a", "b", "a_top1_mean",
                      "b_top1_mean", "diff_mean", "diff_ci95", "n_pairs", "seeds", "diverged")
COMPARISON_SEED_COLUMNS = ("split", "dataset", "arch", "width", "image_size", "epochs", "a", "b", "seed", "a_top1",
                           "b_top1", "diff", "diverged")
COST_METRICS = ("params", "macs", "latency_ms_p50")
EQUAL_COST_COLUMNS = ("metric", "dataset", "arch", "image_size", "epochs", "a_conv", "a_width", "a_cost",
                      "a_top1_mean", "b_conv", "b_width", "b_cost", "b_top1_mean", "cost_ratio",
                      "diff_mean", "diff_ci95", "n_pairs", "tolerance", "source")
DEFAULT_TOLERANCE = 0.05
# Measured latency wobbles from process to process: on an idle 2-core EPYC the median batch-1 p50
# of one network timed in two processes differed by 6-10% (docs/studies/latency.md), so a
# 5% match would be decided by the noise; 10% is that noise, not less. Counted costs are exact and
# keep DEFAULT_TOLERANCE.
DEFAULT_LATENCY_TOLERANCE = 0.10
CONVERGENCE_THRESHOLD = 0.005  # 0.5 pp: what doubling the schedule may move an arm or the gap by
CONVERGENCE_COLUMNS = ("split", "what", "dataset", "arch", "width", "image_size", "short_epochs", "long_epochs",
                       "short_mean", "long_mean", "change_mean", "change_ci95", "n_pairs", "seeds",
                       "diverged", "threshold", "meets")
CONVERGENCE_SEED_COLUMNS = ("split", "dataset", "arch", "width", "image_size", "short_epochs", "long_epochs", "a", "b",
                            "seed", "a_short", "a_long", "a_change", "b_short", "b_long", "b_change", "gap_short",
                            "gap_long", "gap_change", "diverged")


def _side(row: dict[str, Any], factor: str) -> str:
    """How a comparison names one side: the conv label, or the value of the factor."""
    if factor == "conv":
        return conv_label(row)
    value = row[factor]
    return "optimizer's" if value is None else f"{value:g}"


SPLITS = {"val": "val_by_seed", "test": "top1_by_seed"}  # split -> a row's accuracies by seed
_SPLIT_MEANS = {"val": "val_acc_best_mean", "test": "top1_mean"}  # split -> a row's mean over its seeds


def _diverged(seeds: Sequence[Any], *rows: dict[str, Any]) -> str:
    """The ``seeds`` whose run diverged in any of ``rows`` (:func:`dsnet.report.tables.diverged_epochs`),
    space-separated; "" when none did. A mean over them holds a network that was back at chance."""
    return " ".join(str(s) for s in seeds if any(s in (r.get("diverged_by_seed") or {}) for r in rows))


def _diff(a: dict[str, Any], b: dict[str, Any], split: str = "test") -> dict[str, Any]:
    """The paired difference of ``b`` and ``a`` on the ``split``'s accuracies (by seed), with each
    side's mean over its own seeds."""
    d = paired_difference(a[SPLITS[split]], b[SPLITS[split]])
    mean = _SPLIT_MEANS[split]
    return {"a_top1_mean": a[mean], "b_top1_mean": b[mean], "diff_mean": d["mean"],
            "diff_ci95": d["ci95"], "n_pairs": d["n"], "seeds": " ".join(map(str, d["seeds"])),
            "diverged": _diverged(d["seeds"], a, b)}


def _twins(row: dict[str, Any], configs: Sequence[dict[str, Any]]) -> list[str]:
    """The tuned settings (of :data:`TUNED_KEYS`) in which another configuration of ``configs``, the
    same arm otherwise, differs from ``row``: what a label must name to tell the two apart."""
    fixed = keys_except(*TUNED_KEYS)
    twins = [c for c in configs if c is not row and conv_label(c) == conv_label(row)
             and all(c[k] == row[k] for k in fixed)]
    return [k for k in TUNED_KEYS if any(c[k] != row[k] for c in twins)]


# how a label names each of TUNED_KEYS, and the settings that tell apart two pairs shown alike
_SETTING_NAMES = {"lr": "lr", "weight_decay": "wd", "label_smoothing": "ls", "depthwise_weight_decay": "depthwise wd"}


def _tuned(row: dict[str, Any], keys: Sequence[str]) -> str:
    """`` (lr 0.8, ls 0.1)``: the settings ``keys`` of ``row`` (:data:`_SETTING_NAMES`); "" without keys."""
    shown = [f"{_SETTING_NAMES[k]} {row[k]:g}" for k in keys if row.get(k) is not None]
    return f" ({', '.join(shown)})" if shown else ""


MIN_VAL_PAIRS = 2  # seeds two validation-only configurations must share to be compared


def _split(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Which split compares ``a`` and ``b``: test where both have it, else validation where they
    share :data:`MIN_VAL_PAIRS` seeds (an ablation trained without the test split against the runs
    it ablates, tested or not); None: not comparable."""
    if a["top1_mean"] is not None and b["top1_mean"] is not None:
        return "test"
    if len(set(a.get(SPLITS["val"]) or {}) & set(b.get(SPLITS["val"]) or {})) >= MIN_VAL_PAIRS:
        return "val"
    return None


def _order(factor: str, row: dict[str, Any]) -> tuple:
    """The baseline comes first: standard conv, fewer epochs, the optimizer's decay."""
    if factor == "conv":  # a conv mix ranks by its name: the pure "standard" mix first
        return (conv_rank(row.get(MIX_KEY) or row["conv"]), row["groups"] or 0)
    return (row[factor] is not None, row[factor] or 0)


def _compared(rows: Sequence[dict[str, Any]]):
    """``(factor, split, a, b, labels)`` for every pair of configurations :func:`comparisons` compares:
    baseline ``a`` first, ``labels`` how the table names each side."""
    configs = [r for r in one_per_config(rows) if r["top1_mean"] is not None or r.get("val_by_seed")]
    # an arm trained at two learning rates (a step-down) names the one each side has
    tuned = {id(r): _twins(r, configs) for r in configs}
    pairs = []
    for factor, free in FACTORS.items():
        fixed = keys_except(*free)
        for i, a in enumerate(configs):
            for b in configs[i + 1:]:
                if any(a[k] != b[k] for k in fixed) or _side(a, factor) == _side(b, factor):
                    continue
                a_, b_ = sorted((a, b), key=lambda r: _order(factor, r))
                if factor == "conv" and (a_.get(MIX_KEY) or a_["conv"]) != "standard":
                    continue
                if (split := _split(a_, b_)) is not None:
                    pairs.append((factor, split, a_, b_))
    # Pairs the table would show alike (same factor, shown keys and sides) differ in a
    # setting no column shows, label smoothing say: each of them names it, and the rates any names.
    alike: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for factor, _, a, b in pairs:
        alike.setdefault(_shown(factor, a, b), []).append((a, b))
    for factor, split, a, b in pairs:
        twins = alike[_shown(factor, a, b)]
        named = [tuned[id(a)], tuned[id(b)]]
        if len(twins) > 1:
            unshown = [k for k in _SETTING_NAMES if k not in TUNED_KEYS and k not in FACTORS[factor]
                       and len({(twin_a[k], twin_b[k]) for twin_a, twin_b in twins}) > 1]
            # each side names every rate any of its twins names, and the unshown settings
            named = [[k for k in TUNED_KEYS if any(k in tuned[id(r)] for r in side)] + unshown
                     for side in zip(*twins)]
        yield factor, split, a, b, [_bare(factor, r) + _tuned(r, keys) for r, keys in zip((a, b), named)]


def _bare(factor: str, row: dict[str, Any]) -> str:
    """A side's label without its settings: ``dsconv``, ``dsconv: 80``."""
    return ("" if factor == "conv" else f"{conv_label(row)}: ") + _side(row, factor)


def _shown(factor: str, a: dict[str, Any], b: dict[str, Any]) -> tuple:
    """What a comparison row shows of a pair, its sides' settings aside. Not its split: an ablation
    on val beside the pair it ablates on test still reads as the same comparison."""
    return (factor, *(a[k] for k in _SHOWN_KEYS), _bare(factor, a), _bare(factor, b))


_SHOWN_KEYS = ("dataset", "arch", "width", "image_size", "epochs")  # a comparison row's columns besides a and b


def _pair_keys(factor: str, a: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    return {**{k: a[k] for k in _SHOWN_KEYS if k != "epochs"},
            # the schedule both sides share (None where it is the factor: a and b name it)
            "epochs": None if factor == "epochs" else a["epochs"], "a": labels[0], "b": labels[1]}


def comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of configurations that differ in exactly one factor of :data:`FACTORS`, on test
    top-1 where both have it, else on validation top-1 (``split``: see the module docstring).

    For the conv factor the baseline is the standard convolution, or the all-standard conv mix
    between mixes (pairs without one are left out); the other factors compare every two values, the smaller first.
    """
    return [{"factor": factor, "split": split, **_pair_keys(factor, a, labels), **_diff(a, b, split)}
            for factor, split, a, b, labels in _compared(rows)]


def comparisons_by_seed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conv comparisons of :func:`comparisons` seed by seed (:data:`COMPARISON_SEED_COLUMNS`):
    each side's top-1 on the comparison's split and ``diff`` = b − a, for every seed both sides ran;
    ``diverged`` names the sides (``a``, ``b``) whose run of that seed diverged."""
    out = []
    for factor, split, a, b, labels in _compared(rows):
        if factor != "conv":
            continue
        key = SPLITS[split]
        for seed in sorted(set(a[key]) & set(b[key]), key=str):
            out.append({"split": split, **_pair_keys(factor, a, labels), "seed": seed, "a_top1": a[key][seed],
                        "b_top1": b[key][seed], "diff": b[key][seed] - a[key][seed],
                        "diverged": " ".join(n for n, r in (("a", a), ("b", b))
                                             if seed in (r.get("diverged_by_seed") or {}))})
    return out


def _match_keys(metric: str) -> tuple[str, ...]:
    """What two configurations of different conv and width share to be compared at equal cost."""
    keys = ("dataset", "arch", "image_size", "in_chans", "num_classes", "train_size", "epochs",
            "depthwise_weight_decay")
    return (*keys, *ENV_KEYS) if metric.startswith("latency") else keys


def equal_cost(rows: Sequence[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE,
               latency_tolerance: float | None = None) -> list[dict[str, Any]]:
    """Pairs of configurations of two conv types whose cost agrees within ``tolerance``
    (``latency_tolerance`` for measured latency; None: ``tolerance`` too).

    Two costs agree when ``max / min - 1 <= tolerance``. For each configuration and metric only
    the closest match of each other conv type is kept. The baseline side ``a`` is the one whose
    conv comes first (standard, group, dsconv); the difference is ``b - a``, paired by seed.

    Raises:
        ValueError: a tolerance is negative.
    """
    latency_tolerance = tolerance if latency_tolerance is None else latency_tolerance
    for name, value in (("tolerance", tolerance), ("latency_tolerance", latency_tolerance)):
        if not value >= 0:
            raise ValueError(f"{name} must be a fraction >= 0 (0.05 = 5%), got {value!r}")
    out = []
    for metric in COST_METRICS:
        tol = latency_tolerance if metric.startswith("latency") else tolerance
        cands = [r for r in (rows if metric.startswith("latency") else one_per_config(rows))
                 if r["top1_mean"] is not None and r[metric]]
        best: dict[tuple, tuple[float, dict, dict]] = {}
        for a in cands:
            for b in cands:
                if (conv_rank(a["conv"]), a["groups"] or 0) >= (conv_rank(b["conv"]), b["groups"] or 0) \
                        or any(a[k] != b[k] for k in _match_keys(metric)):
                    continue
                gap = max(a[metric], b[metric]) / min(a[metric], b[metric]) - 1
                key = (id(a), conv_label(b))
                if gap <= tol and (key not in best or gap < best[key][0]):
                    best[key] = (gap, a, b)
        out += [_cost_row(metric, a, b, a[metric], b[metric], tol, "runs") for _, a, b in best.values()]
    return out


def _cost_row(metric: str, a: dict[str, Any], b: dict[str, Any], a_cost: float, b_cost: float,
              tolerance: float | None, source: str) -> dict[str, Any]:
    """One row of the at-equal-cost table (:data:`EQUAL_COST_COLUMNS`): ``a`` and ``b`` at these costs."""
    return {"metric": metric, **{k: a[k] for k in ("dataset", "arch", "image_size", "epochs")},
            "a_conv": conv_label(a), "a_width": a["width"], "a_cost": a_cost,
            "b_conv": conv_label(b), "b_width": b["width"], "b_cost": b_cost,
            "cost_ratio": ratio(b_cost, a_cost), "tolerance": tolerance, "source": source,
            **{k: v for k, v in _diff(a, b).items() if k != "seeds"}}


def _same_width(a: float, b: float) -> bool:
    return round(a, 6) == round(b, 6)  # widths are multiples of 0.01 written as floats


def latency_match_pairs(rows: Sequence[dict[str, Any]], record: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Equal-latency rows for the two networks a latency-match ``record`` names.

    Every two configurations with top-1, one of ``target_conv`` at ``target_width`` (side ``a``)
    and one of ``conv`` at ``width`` (side ``b``), built for the record's input and equal in
    everything else a cost comparison fixes (dataset, schedule, training set), give one row: the
    accuracy difference paired by seed, the costs the record measured (``a_cost`` its ``target``,
    ``b_cost`` its ``cost``). ``source`` names the record in the row. The record's keys:
    :data:`dsnet.report.discover.LATENCY_MATCH_KEYS`.
    """
    built_for = ("arch", "image_size", "in_chans", "num_classes")
    configs = [r for r in one_per_config(rows) if r["top1_mean"] is not None
               and all(r[k] == record[k] for k in built_for)]
    sides = [[r for r in configs if r["conv"] == record[conv] and _same_width(r["width"], record[width])]
             for conv, width in (("target_conv", "target_width"), ("conv", "width"))]
    return [_cost_row("latency_ms_p50", a, b, record["target"], record["cost"], None, source)
            for a in sides[0] for b in sides[1] if all(a[k] == b[k] for k in _match_keys("params"))]


def _schedule_pairs(configs: Sequence[dict[str, Any]], key: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(short, long) configurations equal in everything but ``epochs``, the long one twice as long,
    that share a seed in ``key``'s accuracies. Their tuned settings may differ: an arm whose run
    diverged at the long schedule trains it at a lower learning rate (a step-down), and its check
    reads the short runs against the stepped-down long ones."""
    fixed = keys_except("epochs", *TUNED_KEYS)
    return [(a, b) for a in configs for b in configs
            if a["epochs"] and b["epochs"] == 2 * a["epochs"] and all(a[k] == b[k] for k in fixed)
            and set(a[key]) & set(b[key])]


def _schedule_label(short: dict[str, Any], long: dict[str, Any], ambiguous: bool) -> str:
    """An arm's name in the convergence check, with its learning rates when they change with the
    schedule or when the long schedule ran at more than one (``dsconv (lr 3.2 → 1.6)``)."""
    if not ambiguous and all(short[k] == long[k] for k in TUNED_KEYS):
        return conv_label(short)
    changes = [f"{_SETTING_NAMES[k]} {short[k]:g} → {long[k]:g}" for k in TUNED_KEYS
               if short[k] is not None and long[k] is not None and (short[k] != long[k] or k == "lr")]
    return f"{conv_label(short)} ({', '.join(changes)})" if changes else conv_label(short)


def _by_seed_gap(a: dict[str, Any], b: dict[str, Any], key: str = "top1_by_seed") -> dict[Any, float]:
    return {s: a[key][s] - b[key][s] for s in set(a[key]) & set(b[key])}


def _below(change: float, threshold: float) -> bool:
    """``|change| < threshold`` at the resolution accuracies are stored at: they reach the report as
    float32 fractions (93.60% - 93.10% comes out as 0.0049999952), and a move of exactly 0.5 pp is
    not "less than 0.5 pp". Six decimals are far below a test set's step (1e-4 for 10k images)."""
    return round(abs(change), 6) < threshold


def convergence(rows: Sequence[dict[str, Any]], threshold: float = CONVERGENCE_THRESHOLD) -> list[dict[str, Any]]:
    """The convergence check of every schedule that was also run twice as long, per split.

    One row per arm (``what`` is its conv label: the long run's accuracy minus the short run's, paired
    by seed) and one per pair of arms, standard against each other conv type of the same model and
    width (``what`` is ``"standard − dsconv gap"``: the change of the per-seed gap from the short
    schedule to the long), first on validation (``split`` ``"val"``, each run's best epoch), then on
    test (``"test"``), each where the runs have it. ``meets`` is ``|change_mean| < threshold``; the
    interval says how well the seeds pin it.
    """
    return [row for split, key in SPLITS.items() for row in _convergence(rows, threshold, split, key)]


def _labelled_pairs(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[tuple], dict[int, str]]:
    """The schedule pairs of ``rows`` on ``key``'s accuracies, and each pair's arm label by ``id``."""
    configs = [r for r in one_per_config(rows) if r.get(key)]
    pairs = _schedule_pairs(configs, key)
    return pairs, {id(p): _schedule_label(*p, ambiguous=sum(q[0] is p[0] for q in pairs) > 1) for p in pairs}


def _arm_pairs(pairs: Sequence[tuple]) -> list[tuple[tuple, tuple]]:
    """Every (standard pair, other arm's pair) of one model, width and training setting: the two
    arms whose gap the check follows from the short schedule to the long."""
    fixed = keys_except(*FACTORS["conv"])
    out = []
    for p, q in itertools.combinations(pairs, 2):
        a, b = sorted([p, q], key=lambda p: _order("conv", p[0]))
        if a[0]["conv"] == "standard" and b[0]["conv"] != "standard" and all(a[0][k] == b[0][k] for k in fixed):
            out.append((a, b))
    return out


def _convergence(rows: Sequence[dict[str, Any]], threshold: float, split: str, key: str) -> list[dict[str, Any]]:
    pairs, label = _labelled_pairs(rows, key)
    out = []

    def row(what, short, long, short_mean, long_mean, d, sides):
        return {"split": split, "what": what, **{k: short[k] for k in ("dataset", "arch", "width", "image_size")},
                "short_epochs": short["epochs"], "long_epochs": long["epochs"], "short_mean": short_mean,
                "long_mean": long_mean, "change_mean": d["mean"], "change_ci95": d["ci95"], "n_pairs": d["n"],
                "seeds": " ".join(map(str, d["seeds"])), "diverged": _diverged(d["seeds"], *sides),
                "threshold": threshold, "meets": None if d["mean"] is None else _below(d["mean"], threshold)}

    def paired_mean(by_seed: dict[Any, float], seeds) -> float | None:
        # over the seeds both schedules ran, so that long - short is the change the row reports
        return statistics.fmean(by_seed[s] for s in seeds) if seeds else None

    for pair in pairs:
        short, long = pair
        d = paired_difference(short[key], long[key])
        out.append(row(label[id(pair)], short, long, paired_mean(short[key], d["seeds"]),
                       paired_mean(long[key], d["seeds"]), d, pair))
    for a, b in _arm_pairs(pairs):
        (s_a, l_a), (s_b, l_b) = a, b
        gap_short, gap_long = _by_seed_gap(s_a, s_b, key), _by_seed_gap(l_a, l_b, key)
        d = paired_difference(gap_short, gap_long)
        out.append(row(f"{label[id(a)]} − {label[id(b)]} gap", s_a, l_a,
                       paired_mean(gap_short, d["seeds"]), paired_mean(gap_long, d["seeds"]), d, (*a, *b)))
    return out


def _minus(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def convergence_by_seed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The convergence check's readings seed by seed (:data:`CONVERGENCE_SEED_COLUMNS`): for each
    doubling of the standard arm and another arm's doubling beside it, per split, one row per seed
    any of the four configurations ran, with each arm's short and long accuracy, its change, the
    standard − other gap at both schedules and the gap's change (None where a run is missing).
    ``diverged`` names the runs of the seed that diverged: ``a_short``, ``a_long``, ``b_short``,
    ``b_long``."""
    out = []
    for split, key in SPLITS.items():
        pairs, label = _labelled_pairs(rows, key)
        for a, b in _arm_pairs(pairs):
            sides = {"a_short": a[0], "a_long": a[1], "b_short": b[0], "b_long": b[1]}
            for seed in sorted({s for r in sides.values() for s in r[key]}, key=str):
                acc = {name: r[key].get(seed) for name, r in sides.items()}
                gap_short, gap_long = _minus(acc["a_short"], acc["b_short"]), _minus(acc["a_long"], acc["b_long"])
                out.append({"split": split, **{k: a[0][k] for k in ("dataset", "arch", "width", "image_size")},
                            "short_epochs": a[0]["epochs"], "long_epochs": a[1]["epochs"],
                            "a": label[id(a)], "b": label[id(b)], "seed": seed, **acc,
                            "a_change": _minus(acc["a_long"], acc["a_short"]),
                            "b_change": _minus(acc["b_long"], acc["b_short"]),
                            "gap_short": gap_short, "gap_long": gap_long, "gap_change": _minus(gap_long, gap_short),
                            "diverged": " ".join(n for n, r in sides.items() if seed in (r.get("diverged_by_seed") or {}))})
    return out
