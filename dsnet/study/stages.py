"""A study's stages as Hydra multirun commands of ``train.py``, run by a Hydra launcher.

A study config (``configs/study/<name>.yaml``) names its stages in order; each is a list of
``train.py`` overrides (an experiment config and what the stage changes in it). A stage runs as::

    python train.py -m <overrides> hydra.sweep.dir=<runs dir>/<stage> ckpt_path=last <launcher> [extra]

with ``hydra/launcher=joblib hydra.launcher.n_jobs=N`` on one machine or ``hydra/launcher=slurm`` on
a cluster. Running the same command again resumes: a job whose run directory holds its finished
result is skipped, a partial one continues from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

import dsnet

ROOT = Path(dsnet.__file__).resolve().parents[1]  # the checkout: train.py and configs/
STUDY_DIR = ROOT / "configs" / "study"
LAUNCHERS = ("joblib", "slurm")


@dataclass(frozen=True)
class Stage:
    name: str
    overrides: list[str]
    gpu: bool = False  # its jobs ask for a GPU (trainer=gpu in the overrides)


@dataclass(frozen=True)
class Study:
    name: str
    stages: list[Stage]
    search: str | None = None  # the stage whose trials choose the lr
    base_grid: list[float] = field(default_factory=list)
    max_grow: int = 0
    match: dict = field(default_factory=dict)  # conv, target_conv, target_width and the input, for `match`

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"study {self.name!r} has no stage {name!r}; its stages: "
                         f"{', '.join(s.name for s in self.stages)}")


def load_study(name_or_path: str) -> Study:
    """The study ``configs/study/<name>.yaml``, or the study file at a path ending in ``.yaml``.

    Raises:
        ValueError: no such study, or the file lacks a name or stages.
    """
    path = Path(name_or_path) if name_or_path.endswith(".yaml") else STUDY_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.yaml")))
        raise ValueError(f"no study {name_or_path!r} (a file {path}); studies: {known}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict) or not cfg.get("name") or not cfg.get("stages"):
        raise ValueError(f"{path}: a study needs `name` and a list of `stages` (name, overrides)")
    stages = [Stage(str(s["name"]), [str(o) for o in s["overrides"]], bool(s.get("gpu", False)))
              for s in cfg["stages"]]
    return Study(str(cfg["name"]), stages, cfg.get("search"), [float(v) for v in cfg.get("base_grid", [])],
                 int(cfg.get("max_grow", 0)), dict(cfg.get("match") or {}))


def launcher_overrides(launcher: str, workers: int) -> list[str]:
    """The Hydra overrides of a launcher: ``joblib`` with ``workers`` processes, or ``slurm``."""
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]
    if launcher == "slurm":
        return ["hydra/launcher=slurm"]
    raise ValueError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")


def stage_command(stage: Stage, runs_dir: Path, launcher: list[str], extra: list[str] = ()) -> list[str]:
    """The ``train.py -m`` command of one stage (run from :data:`ROOT`)."""
    return [sys.executable, "train.py", "-m", *stage.overrides, f"hydra.sweep.dir={runs_dir / stage.name}",
            "ckpt_path=last", *launcher, *extra]


def run_dirs(stage_dir: Path) -> dict[Path, str]:
    """The run directories under ``stage_dir`` (those a job wrote its ``config.yaml`` into), each
    ``finished``, ``failed`` or ``partial`` (started, unfinished)."""
    return {run_dir: ("finished" if (run_dir / "metrics.json").is_file() else
                      "failed" if (run_dir / "error.txt").is_file() else "partial")
            for run_dir in sorted(p.parent for p in stage_dir.glob("*/config.yaml"))}


def state_counts(runs: dict[Path, str]) -> dict[str, int]:
    """How many of :func:`run_dirs`' directories are finished, partial or failed."""
    states = list(runs.values())
    return {state: states.count(state) for state in ("finished", "partial", "failed")}


def unfinished_lines(runs: dict[Path, str]) -> list[str]:
    """One line per unfinished run of :func:`run_dirs`: what a failed run raised (its traceback's
    last line), how far a partial run got (:func:`progress`)."""
    lines = []
    for run_dir, state in runs.items():
        if state == "failed":
            raised = [line for line in (run_dir / "error.txt").read_text(errors="replace").splitlines() if line.strip()]
            lines.append(f"failed: {run_dir.name}: {raised[-1].strip() if raised else 'error.txt is empty'}")
        elif state == "partial":
            lines.append(f"partial: {run_dir.name}: {progress(run_dir)}")
    return lines


def progress(run_dir: Path) -> str:
    """How far a partial run got, from the ``checkpoints/last.ckpt`` it resumes from (read as a resume
    reads it: weights only, memory-mapped): the epochs it trained, of its ``trainer.max_epochs`` (it
    resumes with the next); its best validation top-1; its CPU time so far, and what the epochs left
    take at that rate."""
    from dsnet.errors import InputError
    from dsnet.guards import check_checkpoint  # lazy: torch, only where a run is partial

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None  # the epochs it trains are then unknown; the checkpoint still says how far it got
    total = ((config.get("trainer") or {}) if isinstance(config, dict) else {}).get("max_epochs")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "no checkpoint yet, starts at epoch 1"
    try:
        checkpoint = check_checkpoint(last, "last.ckpt")
    except InputError as err:
        return str(err)
    if not isinstance(checkpoint, dict):
        return f"{last}: not a Lightning checkpoint"
    epochs = epochs_trained(checkpoint)
    callbacks = checkpoint.get("callbacks") or {}
    scores = [float(c["best_model_score"]) for name, c in callbacks.items()
              if name.startswith("ModelCheckpoint") and c.get("monitor") == "val/acc" and c.get("best_model_score") is not None]
    cpu_s = next((c.get("fit_cpu_s") for name, c in callbacks.items() if name == "EpochTimer"), None)
    parts = [f"{'?' if epochs is None else epochs}{'' if total is None else f' of {total}'} epochs"]
    if scores:
        parts.append(f"best val top-1 {100 * max(scores):.2f}%")
    if cpu_s:
        left = f", about {cpu_s / epochs * (total - epochs) / 3600:.2f} more" if epochs and total else ""
        parts.append(f"{cpu_s / 3600:.2f} CPU-h so far{left}")
    return ", ".join(parts)


def epochs_trained(checkpoint: dict) -> int | None:
    """The epochs a Lightning checkpoint's run trained, as its resume counts them (``FitLoop.reset``):
    the fit loop's processed epochs, and the one in flight when its last training batch ran (a stop
    during that epoch's validation); None for a checkpoint without loop state."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = (fit_loop.get("epoch_progress") or {}).get("total") or {}
    if "processed" not in epochs:
        return None
    in_flight = epochs.get("started", 0) > epochs["processed"]
    return epochs["processed"] + int(in_flight and bool((fit_loop.get("epoch_loop.batch_progress") or {}).get("is_last_batch")))


# Seconds the launcher's workers get after a passed-on signal to save last.ckpt (Lightning stops after
# the current batch) before the group is killed: joblib's workers stay alive, idle, after their task.
STOP_GRACE_S = 15.0


def run_stage(stage: Stage, runs_dir: Path, launcher: list[str], extra: list[str] = (), threads: int = 1) -> int:
    """Runs one stage's command to its end; returns its exit status. Each job gets ``threads``
    intra-op threads (a CPU shared by several workers).

    The command runs in a process group of its own, and SIGTERM or SIGINT sent to this process is
    passed on to the whole group, which is killed :data:`STOP_GRACE_S` later: the launcher's worker
    processes (joblib's) outlive a stopped ``train.py -m`` otherwise, and go on training unseen.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    (runs_dir / stage.name).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(stage_command(stage, runs_dir, launcher, extra), cwd=ROOT, env=env, process_group=0)
    stopped = []

    def pass_on(signum, _frame):
        stopped.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = proc.wait()
        if stopped:
            time.sleep(max(0.0, stopped[0] + STOP_GRACE_S - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
