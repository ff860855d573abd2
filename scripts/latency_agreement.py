"""Do two back-to-back ``eval.py`` runs of the same network agree within their stated intervals?

    python scripts/latency_agreement.py --pairs 5                          # eval.py's defaults
    python scripts/latency_agreement.py --pairs 5 -- latency.rounds=9 model.width=1.0
    python scripts/latency_agreement.py --pairs 1 --json /tmp/a.json -- data=synthetic data.image_size=16 latency.rounds=3

Each pair runs ``eval.py`` twice in a row, each in its own process as a user would, with the same
overrides (after ``--``), and reads both ``results.json``. A pair agrees when the two runs' p50
intervals [``latency_ms_p50_low``, ``latency_ms_p50_high``] (``dsnet.intervals``) overlap: both
claims can hold at once. The stricter reading, each run's median of rounds inside the other's
interval, is printed beside it; the header gives the chance of each if nothing changed between the
runs (``dsnet.intervals.agreement_probabilities``), so a count can be read against it. Printed per
run: best round, median of rounds, interval, other processes' CPU share, the 1-minute load average
before it started; per pair: the difference of the best rounds and of the medians, and both verdicts;
at the end, the counts and the longest streak of agreeing pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnet.intervals import agreement_probabilities, median_coverage  # noqa: E402


def run_eval(overrides: list[str], run_dir: Path) -> dict:
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"eval.py {' '.join(overrides)} failed (exit {proc.returncode}): "
                 f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    results = json.loads((run_dir / "results.json").read_text())
    rounds = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["latency"]["rounds"]
    return {"load_before": load, "rounds": rounds, **{k: results[k] for k in (
        "latency_ms_p50", "latency_ms_p50_median", "latency_ms_p50_low", "latency_ms_p50_high",
        "latency_ms_p50_coverage", "cpu_contention", "contention_flagged")}}


def overlap(a: dict, b: dict) -> bool:
    """The two runs' intervals share a point: their claims are consistent."""
    return a["latency_ms_p50_low"] <= b["latency_ms_p50_high"] and b["latency_ms_p50_low"] <= a["latency_ms_p50_high"]


def medians_inside(a: dict, b: dict) -> bool:
    """Each run's median of rounds inside the other's interval (the stricter reading)."""
    inside = lambda x, r: r["latency_ms_p50_low"] <= x["latency_ms_p50_median"] <= r["latency_ms_p50_high"]  # noqa: E731
    return inside(a, b) and inside(b, a)


def longest_streak(flags: list[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def null_line(samples: int, coverage: float) -> str:
    """The chance of each verdict if both runs drew their ``samples`` values from one unchanging distribution."""
    k = next((k for k in range(1, (samples + 1) // 2 + 1) if abs(median_coverage(samples, k) - coverage) < 1e-9), None)
    if k is None:
        return f"# no exact null: no order statistic of {samples} values has coverage {coverage}"
    try:
        p = agreement_probabilities(samples, k)
    except ValueError as err:
        return f"# no exact null for {samples} values ({err})"
    return (f"# if nothing changed between runs ({samples} values): intervals overlap with p = {float(p['overlap']):.3f}, "
            f"medians inside with p = {float(p['medians_inside']):.3f} per pair")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--json", help="also write every run's numbers to this file")
    parser.add_argument("overrides", nargs="*", help="eval.py overrides, after --")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: must be a positive integer")
    print(f"# latency_agreement  {args.pairs} pairs of eval.py {' '.join(args.overrides) or '(defaults)'}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| pair | run | best round ms | median of rounds ms | interval ms (coverage) | other CPU | load before |")
    print("|---:|---|---:|---:|---|---:|---:|")
    pairs = []
    with tempfile.TemporaryDirectory(prefix="dsnet-agreement-") as tmp:
        for i in range(1, args.pairs + 1):
            runs = [run_eval(args.overrides, Path(tmp) / f"pair{i}{side}") for side in "ab"]
            for side, r in zip("ab", runs):
                contention = "-" if r["cpu_contention"] is None else f"{100 * r['cpu_contention']:.0f} %"
                print(f"| {i} | {side} | {r['latency_ms_p50']:.3f} | {r['latency_ms_p50_median']:.3f} | "
                      f"[{r['latency_ms_p50_low']:.3f}, {r['latency_ms_p50_high']:.3f}] "
                      f"({100 * r['latency_ms_p50_coverage']:.1f} %) | {contention} | {r['load_before']:.2f} |",
                      flush=True)
            a, b = runs
            if i == 1:
                null = null_line(a["rounds"], a["latency_ms_p50_coverage"])
            pairs.append(dict(pair=i, runs=runs, agree=overlap(a, b), medians_inside=medians_inside(a, b),
                              best_diff=abs(a["latency_ms_p50"] - b["latency_ms_p50"]) / min(a["latency_ms_p50"], b["latency_ms_p50"]),
                              median_diff=abs(a["latency_ms_p50_median"] - b["latency_ms_p50_median"])
                              / min(a["latency_ms_p50_median"], b["latency_ms_p50_median"])))
    print()
    print(null)
    for p in pairs:
        print(f"pair {p['pair']}: best rounds differ by {100 * p['best_diff']:.1f} %, medians by "
              f"{100 * p['median_diff']:.1f} %: intervals {'overlap' if p['agree'] else 'DISJOINT'}, medians "
              f"{'inside' if p['medians_inside'] else 'outside'} each other's interval")
    agreeing = [p["agree"] for p in pairs]
    print(f"agreeing pairs (intervals overlap): {sum(agreeing)}/{len(pairs)}, longest streak {longest_streak(agreeing)}; "
          f"medians inside: {sum(p['medians_inside'] for p in pairs)}/{len(pairs)}; load {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "pairs": pairs}, indent=2))
    return pairs


if __name__ == "__main__":
    main()
