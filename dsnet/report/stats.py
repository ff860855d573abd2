"""Seed statistics: mean with a Student-t 95% confidence interval, and paired differences by seed.

Seeds of one configuration are treated as independent draws; the interval is
``mean ± t(0.975, n - 1) · s / √n`` with ``s`` the sample standard deviation (n - 1). With one
seed there is no interval (None), never a zero-width one. A comparison of two configurations
pairs their runs by seed (the same seed gives the same data order and split), so the spread that
both arms share cancels: the interval is that of the per-seed differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import t as student_t

CONFIDENCE = 0.95


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value, e.g. 4.303 for 2 degrees of freedom at 95%."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return float(student_t.ppf(0.5 + confidence / 2, dof))


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "ci95", "n"}`` of ``values``; ``ci95`` is the interval's half-width.

    ``std`` and ``ci95`` are None below two values; ``mean`` is None for none.
    """
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1}
    std = statistics.stdev(values)
    return {"mean": mean, "std": std, "ci95": t_quantile(n - 1) * std / math.sqrt(n), "n": n}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """``b - a`` paired by seed: ``{"mean", "std", "ci95", "n", "seeds"}`` over the common seeds.

    Args:
        a, b: accuracy (or any value) by seed for the two arms; seeds only one arm has are left
            out (``n`` counts the pairs).
    """
    seeds = sorted(set(a) & set(b), key=str)
    return {**mean_ci([b[s] - a[s] for s in seeds]), "seeds": seeds}
