"""Evaluating a study's finished runs: ``eval.py`` on each run's best checkpoint, into ``<run>/eval``.

The eval of a run gets the stage's experiment config and the run's own overrides that shape its data
(:func:`eval_overrides`), so it tests on the data the run trained on, and times latency with one
thread (batch 1, fp32, eager: eval.yaml's defaults). Runs already evaluated are skipped, so the
command resumes like a stage does; runs are evaluated one at a time, as timing wants a quiet machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from dsnet.study.stages import ROOT, Stage

# Top-level keys of a run's overrides that eval.py's config has no place for: passing them would
# make Hydra fail ("Could not override"); none of them changes what eval measures.
TRAIN_ONLY_ROOTS = frozenset({"callbacks", "logger", "debug", "hydra", "ckpt_path", "test", "experiment",
                              "hparams_search"})
# A study's evals also leave out the run's trainer: each times on the machine it runs on, with eval's
# own trainer, wherever the run trained (a GPU run's eval on the CPU machine, say).
STUDY_DROPPED = TRAIN_ONLY_ROOTS | {"trainer"}
EVAL_DIR = "eval"
EVAL_OVERRIDES = ("latency.num_threads=1",)
_ACC_IN_NAME = re.compile(r"acc(\d+(?:\.\d+)?)")


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best checkpoint of a run: ``checkpoints/best*.ckpt``; of several, the one whose name
    says the highest accuracy (``...acc0.9012.ckpt``), else the newest. None when there is none."""
    found = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if len(found) <= 1:
        return found[0] if found else None

    def rank(path: Path) -> tuple[float, float]:
        match = _ACC_IN_NAME.search(path.stem)
        return (float(match.group(1).rstrip(".")) if match else -1.0, path.stat().st_mtime)

    return max(found, key=rank)


def eval_overrides(run_dir: Path, dropped: frozenset[str] = TRAIN_ONLY_ROOTS) -> list[str]:
    """The run's own command-line overrides (``.hydra/overrides.yaml``) that eval.py takes.

    They include the sweep's values (``seed=2``, ``data.image_size=48``, ``table7.rho=6`` ...) and
    the caller's extra overrides; eval needs the ones that shape the data. Overrides of keys only
    training has (``dropped``: :data:`TRAIN_ONLY_ROOTS` unless given) and additions (``+key=``) are left out.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else []
    kept = []
    for override in overrides or []:
        key = override.split("=", 1)[0]
        if key.startswith(("+", "~")):
            continue
        root = key.split("/", 1)[0].split(".", 1)[0].split("@", 1)[0]
        if root not in dropped:
            kept.append(override)
    return kept


def eval_command(stage: Stage, run_dir: Path) -> list[str] | None:
    """The ``eval.py`` command of one finished run (from :data:`ROOT`); None without a best checkpoint."""
    ckpt = best_checkpoint(run_dir)
    if ckpt is None:
        return None
    experiment = [o for o in stage.overrides if o.startswith("experiment=")]
    return [sys.executable, "eval.py", *experiment, *eval_overrides(run_dir, STUDY_DROPPED), f"ckpt_path={ckpt}",
            f"hydra.run.dir={run_dir / EVAL_DIR}", *EVAL_OVERRIDES]


def to_evaluate(stage: Stage, runs_dir: Path) -> list[Path]:
    """The stage's finished runs that have no eval yet."""
    return sorted(p.parent for p in (runs_dir / stage.name).glob("*/metrics.json")
                  if not (p.parent / EVAL_DIR / "results.json").is_file())


def evaluate_run(stage: Stage, run_dir: Path) -> int:
    """Runs one run's eval, its output into ``<run>/eval.log``; its exit status (1: no checkpoint)."""
    cmd = eval_command(stage, run_dir)
    if cmd is None:
        return 1
    with (run_dir / f"{EVAL_DIR}.log").open("w") as out:
        return subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
