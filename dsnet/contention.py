"""How much of the CPU other processes use, and timing that waits for a quiet machine.

A latency taken while other processes run is inflated, often by several times (dsnet's published
per-run latencies were taken at 30-95 % foreign load). :func:`guarded` measures other processes'
share of all CPUs before and during a timing; above ``threshold`` it waits and times again, a
bounded number of times, then keeps the last timing and flags it. Linux only (``/proc/stat``);
elsewhere the share is unknown (None) and nothing waits.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def cpu_seconds() -> tuple[float, float] | None:
    """(machine-wide busy CPU seconds incl. VM steal, this process's CPU seconds); None off Linux."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), time.process_time()


def other_share(start: tuple[float, float] | None, end: tuple[float, float] | None, wall_s: float) -> float | None:
    """Other processes' (and VM neighbours') share in [0, 1] of all CPUs between two :func:`cpu_seconds`."""
    if not start or not end or wall_s <= 0:
        return None
    other_s = (end[0] - start[0]) - (end[1] - start[1])
    return min(max(other_s / (wall_s * (os.cpu_count() or 1)), 0.0), 1.0)


def probe(seconds: float) -> float | None:
    """Other processes' share of all CPUs over ``seconds`` of this process sleeping."""
    start, wall = cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return other_share(start, cpu_seconds(), time.perf_counter() - wall)


@dataclass(frozen=True)
class ContentionPolicy:
    """When a timing counts as contended, and how long to wait for a quiet machine.

    Args:
        threshold: other processes' share of all CPUs (0-1) above which a timing is contended.
        probe_s: seconds of measuring before each attempt.
        wait_s: seconds to wait after a contended probe or timing before trying again.
        retries: attempts after the first; 0 times once and only flags.
    """

    threshold: float = 0.10
    probe_s: float = 0.5
    wait_s: float = 3.0
    retries: int = 2

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"contention.threshold={self.threshold!r} must be a fraction in [0, 1]")
        for key in ("probe_s", "wait_s"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"contention.{key}={getattr(self, key)!r} must be >= 0 seconds")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"contention.retries={self.retries!r} must be a non-negative integer")


def guarded(timing: Callable[[], dict[str, Any]], policy: ContentionPolicy) -> dict[str, Any]:
    """Runs ``timing()`` on a quiet machine if one comes within ``policy``'s retries, else flags it.

    Each attempt probes first; a contended probe waits and moves to the next attempt without timing.
    The last attempt times whatever the load. A timing that was itself contended is repeated while
    attempts remain.

    Returns:
        ``timing()``'s dict plus ``cpu_busy_other`` (the share during the kept timing; None off Linux),
        ``cpu_busy_other_before`` (its probe), ``contention_retries`` (attempts after the first) and
        ``contention_flagged`` (the kept timing, or its probe, was above the threshold).
    """
    busy = lambda share: share is not None and share > policy.threshold  # noqa: E731
    for attempt in range(policy.retries + 1):
        last = attempt == policy.retries
        before = probe(policy.probe_s) if policy.probe_s > 0 else None
        if busy(before) and not last:
            log.info("other processes use %.0f %% of the CPUs; waiting %g s before timing", 100 * before, policy.wait_s)
            time.sleep(policy.wait_s)
            continue
        start, wall = cpu_seconds(), time.perf_counter()
        result = timing()
        during = other_share(start, cpu_seconds(), time.perf_counter() - wall)
        if busy(during) and not last:
            log.info("other processes used %.0f %% of the CPUs while timing; timing again in %g s",
                     100 * during, policy.wait_s)
            time.sleep(policy.wait_s)
            continue
        break
    flagged = busy(before) or busy(during)
    if flagged:
        log.warning("other processes used %.0f %% of the CPUs while latency was timed (after %d retries): the "
                    "latency and throughput numbers are inflated and flagged; time on a quiet machine",
                    100 * max(s or 0.0 for s in (before, during)), attempt)
    return {**result, "cpu_busy_other": during, "cpu_busy_other_before": before,
            "contention_retries": attempt, "contention_flagged": flagged}
