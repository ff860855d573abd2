"""Reproduce one paper table end to end: train every run of a recipe, evaluate each, report.

    python scripts/reproduce.py RECIPE [--out DIR] [--threads N] [--eval OVERRIDE ...] [override ...]

RECIPE is a file of ``configs/experiment/`` (table4, table6, table7, group_sweep, ...). Three stages,
each a command of its own, everything under ``DIR`` (default ``outputs/reproduce/RECIPE``):

1. ``python train.py -m experiment=RECIPE hydra.sweep.dir=DIR/train [override ...]``: the recipe's
   whole sweep, one run directory per job under ``DIR/train``.
2. ``python eval.py experiment=RECIPE ckpt_path=<run>/checkpoints/best-*.ckpt ...`` for every run
   that finished (``metrics.json`` and a best checkpoint): test accuracy again, parameters, MACs
   and CPU latency into ``DIR/eval/<run>/results.json``. Eval gets the recipe and the run's own
   overrides that eval's config knows (``data.*``, the recipe's sweep keys, ...), so it builds the
   data the run was trained on; the network comes from the checkpoint's run. ``--eval OVERRIDE``
   (repeatable) adds overrides for eval.py only, e.g. ``--eval latency.rounds=5``.
3. ``python -m dsnet.report DIR/eval DIR/train --out DIR/report``: tables and plots; train runs
   without an eval are listed there as missing.

``DIR/reproduce.json`` records the commands, their exit codes and wall times. A failed training job
does not stop the others (Hydra runs the rest); the script evaluates and reports what finished and
then exits 1. ``--threads N`` runs training and eval with N intra-op threads (OMP_NUM_THREADS) and
times latency with N threads: on a shared machine one thread per process avoids oversubscription.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dsnet.study.evaluate import best_checkpoint, eval_overrides

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "configs" / "experiment"


def recipes() -> list[str]:
    """The recipe names, i.e. the files of ``configs/experiment/`` without ``.yaml``."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def check_recipe(name: str) -> str:
    """``name`` if it is a recipe, else a ValueError listing the recipes there are."""
    if name not in recipes():
        raise ValueError(f"unknown recipe {name!r}; the recipes in {RECIPE_DIR} are: {', '.join(recipes())}")
    return name


def log(message: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- finding what training produced ----------------------------------------------------------------

def finished_runs(train_dir: Path) -> list[Path]:
    """Run directories under ``train_dir`` whose training finished (they hold ``metrics.json``)."""
    return sorted(p.parent for p in train_dir.rglob("metrics.json") if (p.parent / ".hydra").is_dir())


# --- running the stages ----------------------------------------------------------------------------

def run_stage(name: str, cmd: list[str], env: dict[str, str], record: list[dict]) -> int:
    """Runs ``cmd`` from the repository root with its output streamed; appends its record."""
    log(f"{name}: {' '.join(cmd)}")
    start = time.perf_counter()
    returncode = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    wall_s = time.perf_counter() - start
    record.append({"stage": name, "cmd": cmd, "returncode": returncode, "wall_s": round(wall_s, 1)})
    log(f"{name}: {'done' if returncode == 0 else f'FAILED (exit {returncode})'} in {wall_s / 60:.1f} min")
    return returncode


def write_record(path: Path, record: dict) -> None:
    """``reproduce.json``, written atomically (temp file in the same directory, then replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def reproduce(recipe: str, out: Path, overrides: Sequence[str], threads: int | None = None,
              eval_extra: Sequence[str] = ()) -> int:
    """Train, evaluate and report ``recipe`` into ``out``; returns the exit code (0: all ran).

    Args:
        recipe: a file name of ``configs/experiment/`` without ``.yaml``.
        out: the directory everything goes to.
        overrides: Hydra overrides for training (and, where eval has the key, for eval).
        threads: intra-op threads of every process and of the latency timing; None: torch's default.
        eval_extra: Hydra overrides for eval.py only.
    """
    check_recipe(recipe)
    out = out.resolve()
    train_dir, eval_dir, report_dir = out / "train", out / "eval", out / "report"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    thread_overrides: list[str] = []
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        thread_overrides = [f"latency.num_threads={threads}"]
    stages: list[dict] = []
    record = {"recipe": recipe, "out": str(out), "overrides": list(overrides), "threads": threads,
              "eval_overrides": list(eval_extra), "stages": stages}
    start = time.perf_counter()

    train_rc = run_stage("train", [sys.executable, "train.py", "-m", f"experiment={recipe}",
                                   f"hydra.sweep.dir={train_dir}", *overrides], env, stages)
    runs = finished_runs(train_dir) if train_dir.is_dir() else []
    log(f"{len(runs)} finished training runs under {train_dir}")
    failed = train_rc != 0
    for i, run_dir in enumerate(runs, 1):
        ckpt = best_checkpoint(run_dir)
        if ckpt is None:
            log(f"eval {i}/{len(runs)}: {run_dir.name}: no best checkpoint in {run_dir / 'checkpoints'}; skipped")
            failed = True
            continue
        cmd = [sys.executable, "eval.py", f"experiment={recipe}", f"ckpt_path={ckpt}",
               f"hydra.run.dir={eval_dir / run_dir.relative_to(train_dir)}",
               *eval_overrides(run_dir), *thread_overrides, *eval_extra]
        failed |= run_stage(f"eval {i}/{len(runs)} {run_dir.name}", cmd, env, stages) != 0
    if runs:
        report_inputs = [str(d) for d in (eval_dir, train_dir) if d.is_dir()]
        failed |= run_stage("report", [sys.executable, "-m", "dsnet.report", *report_inputs,
                                       "--out", str(report_dir)], env, stages) != 0
    else:
        log("nothing finished training: no eval, no report")
        failed = True
    record["wall_s"] = round(time.perf_counter() - start, 1)
    write_record(out / "reproduce.json", record)
    log(f"{'FINISHED WITH ERRORS' if failed else 'finished'} in {record['wall_s'] / 60:.1f} min; "
        f"report in {report_dir}, commands in {out / 'reproduce.json'}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/reproduce.py", description=__doc__.split("\n")[0],
        epilog="Any other argument is a Hydra override for training, e.g. seed=1 trainer.max_epochs=1.")
    parser.add_argument("recipe", help=f"a file of configs/experiment/: {', '.join(recipes())}")
    parser.add_argument("--out", type=Path, help="directory for everything (default outputs/reproduce/RECIPE)")
    parser.add_argument("--threads", type=int, help="intra-op threads of every process and of the latency timing")
    parser.add_argument("--eval", action="append", default=[], metavar="OVERRIDE",
                        help="a Hydra override for eval.py only (repeatable), e.g. --eval latency.rounds=5")
    args, overrides = parser.parse_known_args(argv)
    if unknown := [o for o in overrides if o.startswith("-")]:
        parser.error(f"unknown option(s) {' '.join(unknown)}; overrides look like key=value")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        check_recipe(args.recipe)
    except ValueError as err:
        parser.error(str(err))
    out = args.out if args.out is not None else ROOT / "outputs" / "reproduce" / args.recipe
    return reproduce(args.recipe, out, overrides, args.threads, args.eval)


if __name__ == "__main__":
    sys.exit(main())
