"""The distribution-free interval for a median: coverage by hand, the chosen order statistics, bad input."""

from __future__ import annotations

from fractions import Fraction

import pytest

from dsnet.intervals import agreement_probabilities, median_coverage, median_interval, p50_interval


def test_coverage_of_order_statistics_by_hand():
    assert median_coverage(5, 1) == 1 - 2 / 32 == 0.9375  # [min, max] of 5: misses only if all 5 fall on one side
    assert median_coverage(9, 2) == 1 - 2 * (1 + 9) / 512  # 96.1 %
    assert median_coverage(9, 3) == 1 - 2 * (1 + 9 + 36) / 512  # 82.0 %


def test_interval_is_the_narrowest_with_the_coverage_asked():
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (1.0, 5.0, 0.9375)
    values = [float(v) for v in range(1, 10)]
    assert median_interval(values, 0.9) == (2.0, 8.0, median_coverage(9, 2))
    assert median_interval(values, 0.8) == (3.0, 7.0, median_coverage(9, 3))


def test_too_few_rounds_give_min_max_at_the_coverage_they_have():
    assert median_interval([2.0, 1.0, 3.0]) == (1.0, 3.0, 0.75)  # 3 rounds cannot reach 90 %
    assert median_interval([4.0]) == (4.0, 4.0, 0.0)


def test_p50_interval_keys_and_even_median():
    assert p50_interval([4.0, 1.0, 3.0, 2.0, 6.0, 5.0]) == {
        "latency_ms_p50_median": 3.5, "latency_ms_p50_low": 1.0, "latency_ms_p50_high": 6.0,
        "latency_ms_p50_coverage": 1 - 2 / 64}


@pytest.mark.parametrize("values, confidence, message", [
    ([], 0.9, "needs at least one value, got none"),
    ([1.0], 1.0, "confidence=1.0 must lie strictly between 0 and 1"),
])
def test_bad_input_is_named(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        median_interval(values, confidence)


def test_agreement_chances_by_hand_and_exactly():
    # 3 rounds, [min, max]: the intervals miss each other only when one run's 3 values all lie below
    # the other's, 2 of the C(6, 3) = 20 equally likely orderings.
    assert agreement_probabilities(3, 1)["overlap"] == Fraction(18, 20)
    five = agreement_probabilities(5, 1)
    assert five["overlap"] == 1 - Fraction(2, 252)
    assert five["medians_inside"] == Fraction(5, 7)  # the stricter reading fails 2 pairs in 7 with nothing changed
    assert float(five["medians_inside"]) ** 5 < 0.19  # five such pairs in a row: under one chance in five
    nine = agreement_probabilities(9, 2)  # eval.py with latency.rounds=9: 2nd smallest to 2nd largest
    assert 0.996 < nine["overlap"] < 0.997 and 0.775 < nine["medians_inside"] < 0.776


@pytest.mark.parametrize("n, k, message", [
    (4, 1, "n=4: exact agreement needs an odd number of rounds from 1 to 11"),
    (13, 2, "n=13: exact agreement needs an odd number of rounds from 1 to 11"),
    (5, 4, "k=4: must lie in 1..3 for n=5"),
])
def test_agreement_bad_input_is_named(n, k, message):
    with pytest.raises(ValueError, match=message):
        agreement_probabilities(n, k)
