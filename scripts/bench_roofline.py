"""This machine's roofline, measured: fp32 GEMM peak and memory bandwidth per thread count.

    python scripts/bench_roofline.py                          # threads 1 and 2, writes results/roofline/<tag>.csv
    python scripts/bench_roofline.py --threads 1 --gemm-sizes 256 --levels L2 --min-run-time 0.05 --csv /tmp/r.csv

Compute ceiling: ``torch.mm`` of two n x n fp32 matrices into a preallocated output (2 n^3 FLOP;
MKL's AVX-512 kernels on this build; AMX does no fp32), the best over ``--gemm-sizes`` (n = 512
fits in L2 and is not the slowest: the peak is a property of the core, not of DRAM). Memory ceilings: ``copy`` (``dst.copy_(src)``,
8 bytes per element: one read, one write) and STREAM's ``triad`` (``a = b + 3 c`` as
``torch.add(b, c, alpha=3, out=a)``, 12 bytes per element), each at a working set sized for a level
of the memory hierarchy: ``L2`` (arrays of 256 KiB, inside one core's L2), ``L3`` (32 MiB) and
``DRAM`` (1 GiB per array, over twice the L3 this VM reports). Write-allocate traffic is not
counted, as in STREAM. Every number is ``torch.utils.benchmark``'s median over timed blocks
(warm-up excluded, thread count pinned by the Timer), with its interquartile range.

The ridge point is GEMM peak / DRAM triad bandwidth (FLOP per byte): a kernel below it is bound by
memory, above it by arithmetic. The theoretical peak is printed beside the measured one: AVX-512
does 16 fp32 lanes x 2 FLOP per FMA, times the FMA units per core (``--fma-units``, 2 on Xeon
Scalable server cores: ports 0+1 fused and port 5), times the clock. The clock is measured with a
chain of dependent integer multiplies (3 cycles each), compiled with ``gcc`` when it is there: inside a VM neither ``/proc/cpuinfo`` (a constant) nor ``perf``
(no cycle counter) says it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from dsnet.environment import environment

logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

CLOCK = time.perf_counter  # --timer cpu: time.thread_time, this thread's CPU seconds
LEVELS = {"L2": 256 * 2**10, "L3": 32 * 2**20, "DRAM": 2**30}  # bytes per array
BYTES_PER_ELEMENT = {"copy": 8, "triad": 12}  # fp32: copy reads 1 and writes 1, triad reads 2 and writes 1
CSV_FIELDS = ("machine", "date", "timer", "quantity", "threads", "size", "value", "unit", "median_s", "iqr_s")

# A chain of dependent 64-bit multiplies, 100 per loop trip so the loop's own branch hides behind
# them. imul r64, r64 has a latency of 3 cycles on every Intel big core since Nehalem (Agner Fog's
# tables); a chain of `add $1` would not do: Golden Cove's renamer folds immediate adds, several per cycle.
# Timed in the thread's CPU seconds, so time the core spent on other processes does not count.
CLOCK_PROBE_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    long x = 3, y = 1, trips = 2000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    for (long i = 0; i < trips; i++) {
        __asm__ volatile(".rept 100\n\timul %1, %0\n\t.endr" : "+r"(x) : "r"(y));
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    printf("%ld %.9f\n", 100 * trips, (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    return 0;
}
"""
IMUL_LATENCY_CYCLES = 3


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def fp32_lanes(flags: set[str]) -> int:
    """fp32 lanes of the widest vector the CPU's flags name: 16 with AVX-512F, 8 with AVX2, 4 (SSE) else."""
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 4


def cpuinfo_mhz() -> float | None:
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return float(match.group(1)) if match else None


def measured_clock_ghz(repeats: int = 5) -> float | None:
    """The core clock from a dependent multiply chain (max over ``repeats``); None without gcc."""
    if shutil.which("gcc") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="dsnet-clock-") as tmp:
        source, binary = Path(tmp) / "clock.c", Path(tmp) / "clock"
        source.write_text(CLOCK_PROBE_C)
        subprocess.run(["gcc", "-O1", "-o", str(binary), str(source)], check=True, capture_output=True)
        rates = []
        for _ in range(repeats):
            muls, seconds = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split()
            rates.append(IMUL_LATENCY_CYCLES * int(muls) / float(seconds) / 1e9)
    return max(rates)  # interruptions only slow the chain down


def timed(stmt: str, globals_: dict, threads: int, min_run_time: float) -> benchmark.Measurement:
    timer = benchmark.Timer(stmt=stmt, globals=globals_, num_threads=threads, timer=CLOCK)
    timer.timeit(2)  # warm-up: first-touch page faults, MKL's buffers, thread pool start
    return timer.blocked_autorange(min_run_time=min_run_time)


def gemm(n: int, threads: int, min_run_time: float) -> tuple[float, benchmark.Measurement]:
    a, b, c = (torch.randn(n, n) for _ in range(3))
    m = timed("torch.mm(a, b, out=c)", {"torch": torch, "a": a, "b": b, "c": c}, threads, min_run_time)
    return 2 * n**3 / m.median / 1e9, m


def bandwidth(kernel: str, array_bytes: int, threads: int, min_run_time: float) -> tuple[float, benchmark.Measurement]:
    n = array_bytes // 4
    a, b, c = (torch.rand(n) for _ in range(3))
    stmt = "a.copy_(b)" if kernel == "copy" else "torch.add(b, c, alpha=3.0, out=a)"
    m = timed(stmt, {"torch": torch, "a": a, "b": b, "c": c}, threads, min_run_time)
    return BYTES_PER_ELEMENT[kernel] * n / m.median / 1e9, m


def machine_tag() -> str:
    name = environment()["device_name"].lower()
    name = re.sub(r"\((r|tm)\)|processor|cpu|@.*", " ", name)
    return "-".join(re.findall(r"[a-z0-9]+", name)) + f"-{os.cpu_count()}c"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gemm-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="n of the n x n GEMMs")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds timed per number")
    parser.add_argument("--fma-units", type=int, default=2, help="vector FMA units per core, for the theoretical peak")
    parser.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                        help="cpu: time this thread's CPU seconds, not wall time (one thread only): on a shared "
                             "machine the time other processes hold the core is left out, their cache traffic is not")
    parser.add_argument("--tag", default=None, help="machine tag of the CSV's name (default: from the CPU model)")
    parser.add_argument("--csv", default=None, help="default: results/roofline/<tag>.csv")
    args = parser.parse_args(argv)
    for name in ("threads", "gemm_sizes"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: every value must be a positive integer")

    if args.timer == "cpu" and args.threads != [1]:
        parser.error(f"--timer cpu times the calling thread only; it needs --threads 1, not {args.threads}")
    global CLOCK
    CLOCK = time.thread_time if args.timer == "cpu" else time.perf_counter
    tag = args.tag or machine_tag()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = cpu_flags()
    clock = measured_clock_ghz()
    per_cycle = fp32_lanes(flags) * 2 * args.fma_units
    print(f"# bench_roofline  {tag}  {date}  load {os.getloadavg()[0]:.2f}  timer {args.timer}")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment().items() if k != "num_threads"))
    print(f"# flags: {' '.join(sorted(f for f in flags if f.startswith(('avx512f', 'avx2', 'fma', 'amx'))))}")
    print(f"# clock: /proc/cpuinfo {cpuinfo_mhz()} MHz; dependent-multiply chain "
          + (f"{clock:.2f} GHz" if clock else "not measured (no gcc)"))
    print(f"# theoretical fp32 peak: {per_cycle} FLOP/cycle/core ({args.fma_units} FMA units x "
          f"{per_cycle // 2 // args.fma_units} lanes x 2)")

    rows: list[dict] = []

    def add(quantity, threads, size, value, unit, m=None):
        rows.append(dict(machine=tag, date=date, timer=args.timer, quantity=quantity, threads=threads, size=size, value=round(value, 3),
                         unit=unit, median_s="" if m is None else f"{m.median:.6g}",
                         iqr_s="" if m is None else f"{m.iqr:.3g}"))
        spread = "" if m is None else f"  (median {m.median * 1e3:.3f} ms, IQR {m.iqr / m.median:.1%}, {len(m.times)} blocks)"
        print(f"{quantity:<24} threads={threads}  {size:<10} {value:10.2f} {unit}{spread}", flush=True)

    for threads in args.threads:
        for ghz, source in ((clock, "measured clock"), (cpuinfo_mhz() and cpuinfo_mhz() / 1e3, "cpuinfo clock")):
            if ghz:
                add(f"peak_theoretical ({source})", threads, f"{ghz:.2f}GHz", per_cycle * ghz * threads, "GFLOP/s")
        peak = 0.0
        for n in args.gemm_sizes:
            gflops, m = gemm(n, threads, args.min_run_time)
            add("gemm_fp32", threads, f"n={n}", gflops, "GFLOP/s", m)
            peak = max(peak, gflops)
        if clock:
            add("gemm_flop_per_cycle_core", threads, f"{clock:.2f}GHz", peak / clock / threads, "FLOP/cycle")
        for level in args.levels:
            for kernel in ("copy", "triad"):
                gbs, m = bandwidth(kernel, LEVELS[level], threads, args.min_run_time)
                add(f"{kernel}_{level}", threads, f"{LEVELS[level] // 2**10}KiB", gbs, "GB/s", m)
        triads = {r["size"]: r["value"] for r in rows if r["threads"] == threads and r["quantity"].startswith("triad_")}
        for level in args.levels:
            add(f"ridge_{level}", threads, "triad", peak / triads[f"{LEVELS[level] // 2**10}KiB"], "FLOP/byte")

    out = Path(args.csv or f"results/roofline/{tag}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)  # never a half-written table
    print(f"# load {os.getloadavg()[0]:.2f} at end; wrote {out}")
    return rows


if __name__ == "__main__":
    main()
