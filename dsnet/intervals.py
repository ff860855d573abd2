"""How precisely a latency is known: a distribution-free confidence interval for a median.

A latency round's p50 is a sample of what the machine gives at that moment; the rounds of one run
are a few such samples. Their median has a confidence interval that needs no assumption about the
distribution (it is bimodal on the VMs dsnet runs on, so a normal interval would be wrong): for
``n`` sorted values, the probability that the true median lies between the ``k``-th smallest and
the ``k``-th largest is ``1 - 2 P(Binomial(n, 1/2) <= k - 1)`` (e.g. Conover, *Practical
Nonparametric Statistics*, 3rd ed., section 3.2). With 5 rounds the only such interval is
[smallest, largest], at 93.75 %; with 9 rounds, the 2nd smallest to the 2nd largest, at 96.1 %.

Two runs of one network "agree within their stated intervals" when their intervals overlap: both
claims can then hold at once. The stricter reading, each run's median inside the other's interval,
fails often even when nothing changes between the runs, because the other run's median is itself a
noisy sample: with 5 rounds, two runs drawing from one unchanging distribution satisfy it in only
5/7 = 71.4 % of pairs (five pairs in a row: 18.6 %), while their intervals overlap in 99.2 %
(``agreement_probabilities``). Disagreement under the overlap reading is evidence that the machine
changed between the runs by more than either run saw.

The interval is over rounds, not over the timed blocks inside a round: blocks a few milliseconds
apart share the machine's state (clock, neighbours, cache contents), so their spread says nothing
about the next run, and an interval from them would claim a precision the runs do not have.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction


def median_coverage(n: int, k: int) -> float:
    """Probability that [k-th smallest, k-th largest] of ``n`` values holds their distribution's median."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """The narrowest order-statistic interval for the median of ``values`` with coverage >= ``confidence``.

    Returns:
        ``(low, high, coverage)``. With too few values for ``confidence`` (fewer than 5 for 0.9):
        ``(min, max, coverage of min..max)``, the most that can be said, its coverage below ``confidence``.

    Raises:
        ValueError: no values, or ``confidence`` outside (0, 1).
    """
    if not values:
        raise ValueError("median_interval needs at least one value, got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1")
    ordered, n = sorted(values), len(values)
    k = 1
    while k + 1 <= (n + 1) // 2 and median_coverage(n, k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], median_coverage(n, k)


def p50_interval(round_p50s_ms: list[float], confidence: float = 0.9) -> dict[str, float]:
    """``latency_ms_p50_median`` of the rounds' p50s, its interval (``_low``, ``_high``) and ``_coverage``."""
    low, high, coverage = median_interval(round_p50s_ms, confidence)
    ordered, n = sorted(round_p50s_ms), len(round_p50s_ms)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return {"latency_ms_p50_median": median, "latency_ms_p50_low": low, "latency_ms_p50_high": high,
            "latency_ms_p50_coverage": coverage}


def agreement_probabilities(n: int, k: int) -> dict[str, Fraction]:
    """Exact chances that two runs of ``n`` rounds each, from one continuous distribution, agree.

    Each run states [k-th smallest, k-th largest] of its rounds (``median_interval``). Under that
    null, all orderings of the 2n values are equally likely, so enumerating which ranks fall to the
    first run gives the probabilities exactly:

    - ``overlap``: the two intervals share a point;
    - ``medians_inside``: each run's median lies inside the other's interval.

    Raises:
        ValueError: ``n`` even (the median then falls between two values, not on a rank), ``n`` over
            11 (the enumeration grows as C(2n, n)), or ``k`` outside 1..(n + 1) // 2.
    """
    if n < 1 or n % 2 == 0 or n > 11:
        raise ValueError(f"n={n!r}: exact agreement needs an odd number of rounds from 1 to 11")
    if not 1 <= k <= (n + 1) // 2:
        raise ValueError(f"k={k!r}: must lie in 1..{(n + 1) // 2} for n={n}")
    mid = n // 2
    overlap = inside = total = 0
    for first in itertools.combinations(range(2 * n), n):
        chosen = set(first)
        second = [r for r in range(2 * n) if r not in chosen]
        (lo_a, md_a, hi_a), (lo_b, md_b, hi_b) = ((run[k - 1], run[mid], run[n - k]) for run in (first, second))
        total += 1
        overlap += lo_a <= hi_b and lo_b <= hi_a
        inside += lo_a <= md_b <= hi_a and lo_b <= md_a <= hi_b
    return {"overlap": Fraction(overlap, total), "medians_inside": Fraction(inside, total)}
