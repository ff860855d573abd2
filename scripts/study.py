"""The converged trade-off study (issue 12): a resumable queue of training runs, in priority order.

    python scripts/study.py plan                  # every job of the study, its state and estimated time
    python scripts/study.py run [--workers 2]     # train what is not finished yet, resuming partial runs
    python scripts/study.py run --finish-by 03:50 # ... starting only runs estimated to end by then (UTC)
    python scripts/study.py collect               # copy finished runs' small files into docs/results/converged/runs
    python scripts/study.py restore               # the reverse: committed runs back into the run directory
    python scripts/study.py choose                # the lr chosen per arm, written to docs/results/converged/lr_choice.json
    python scripts/study.py match --cost latency  # dsconv's width with standard w0.25's latency (idle machine!)
    python scripts/study.py evaluate              # eval.py on each finished run: test top-1 again, batch-1 latency
    python scripts/study.py report                # the reports of the collected runs: report/ and report_lr_search/

A sitting of known length (a machine lent for hours, an allocation's time limit): ``--finish-by``
starts a run only if its estimate, the median measured epoch of finished runs of its convolution
(the nearest width, scaled by training multiply-adds) times its epochs to go, times 1.1, ends before
then; it logs each run it skips and why. Where nothing but the results survives a sitting, no CPU
goes into a run that would be cut off.

A session on another day: ``restore`` then ``run``. Restored runs hold ``metrics.json`` and the resolved
``config.yaml``, so ``train.py`` skips them (``skip_finished``); a run interrupted with SIGTERM left
``checkpoints/last.ckpt`` and continues from it (every job runs with ``ckpt_path=last``).

Runs live under ``--runs-dir`` (default /work/study_runs/converged, or $DSNET_STUDY_DIR), one
directory per stage, one run directory per job named by ``hydra.sweep.subdir`` of
``experiment=converged`` (``<conv>_w<width>_lr<lr>_e<epochs>_seed<seed>``). Restoring needs the same
``--runs-dir``: the resolved config holds the run's own path, and a different one trains again.

Every job is ``nice -n 19 python train.py -m <stage overrides> <job overrides> hydra.sweep.dir=<stage dir>
ckpt_path=last`` with OMP_NUM_THREADS=1 (``--threads N``: N), so the study takes only idle CPU. ``run`` starts the search's jobs
with ``--workers`` processes at once, and the later stages' once it finished (they need the lr it
chose), as one queue in stage order: a job of a stage starts when a worker is free, whether or not
the stage before it finished. Its process group id and the running jobs' pids are in
``<runs-dir>/PIDS``: ``kill -STOP -- -<pgid>`` pauses everything, ``kill -CONT -- -<pgid>`` resumes,
``kill -TERM -- -<pgid>`` stops (each run writes last.ckpt; the runner starts nothing new).

Stages, in the issue's priority order (the chosen lr per arm comes from ``lr_search``):

- ``lr_search``: hparams_search=converged_lr at width 0.25, seed 1, test off. If an arm's best lr is
  at an edge of the grid, the grid grows by a factor 2 on that side for both arms (equal trial counts),
  at both edges in one round when arms sit at both, by at most MAX_GROW values.
- ``table4_w0.25``: standard and dsconv, seeds 2, 3, 4, each arm at its chosen lr.
- ``dw_decay_w0.25``: dsconv with no weight decay on its depthwise filters, seeds 2, 3, 4.
- ``equal_cost``: dsconv at the widths matching standard w0.25's parameters and multiply-adds
  (``dsnet.matching.match_width``; one width, 0.74, when it matches both within 2%), and its latency
  once ``match --cost latency`` measured it (docs/results/converged/match_latency.json; a width
  Table 4 trains anyway is not trained twice), seeds 2, 3, 4, at dsconv's chosen lr.
- ``long_w0.25``: the convergence check, experiment=converged_long (30 epochs), seeds 2, 3, 4.
- ``long60_w0.25``, only if the check failed (30 epochs is then the schedule of every later stage):
  its own check, 60 epochs, seeds 2, 3, 4.
- ``table4_w0.5``: as table4_w0.25 at width 0.5, dsconv's runs first (w0.5 reuses the lr chosen at
  w0.25: a stated shortcut, no search at 0.5).
- ``equal_cost_e30``, only if the check failed: the equal-cost runs again at 30 epochs.
- ``table6``: dsconv at widths 1.0 and 0.75 (0.5 and 0.25 are Table 4's), seeds 2, 3, 4.
- ``table4_w1``: the standard arm at width 1.0 (its dsconv arm is Table 6's), seeds 2, 3, 4, on a GPU
  (``trainer=gpu trainer.precision=32-true`` in its overrides). A runner on a machine without one
  starts none of its jobs and says so when nothing else is left; ``plan`` marks them "(needs a GPU)".
  ``bash scripts/gpu_study.sh OUT`` runs whatever is left on a GPU machine (``run --extra trainer=gpu``).

``evaluate`` runs ``eval.py`` on the best checkpoint of every finished run of the later stages into
``<run>/eval/`` (test top-1 from the checkpoint, counted costs, batch-1 latency: 1 thread, fp32,
eager, as ``match`` times), skipping runs evaluated already; a GPU run whose checkpoint stayed on the
GPU machine gets a cost-only eval of its own network (top-1 then comes from its metrics.json). Latency needs a quiet machine, so it
pauses a running study (SIGSTOP to the process group in PIDS) and resumes it when done, also on
Ctrl-C or SIGTERM. The report joins ``<run>/eval`` to its run wherever the two are copied.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import functools
import itertools
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dsnet.config import register_resolvers
from dsnet.results import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: reproduce.py's eval helpers
from reproduce import best_checkpoint, eval_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "results" / "converged"
DEFAULT_RUNS_DIR = Path(os.environ.get("DSNET_STUDY_DIR", "/work/study_runs/converged"))
SEARCH = ["experiment=converged", "hparams_search=converged_lr"]
SEEDS = (2, 3, 4)  # the tables' seeds; the search ran at seed 1 (its winner is not reused)
ARMS = ("conv", "dsconv")
TABLE4_WIDTHS = (0.25, 0.5)  # the stages table4_w0.25 and table4_w0.5
# The paper's own width, 1.0, for the standard arm: 28.3 M params and 4.4x dsconv w1.0's training
# multiply-adds, hours an epoch on one of these cores. Its runs ask for a GPU in their overrides
# (fp32 weights; cuDNN's default TF32 convolutions), and a runner without one skips them.
GPU_OVERRIDES = ["trainer=gpu", "trainer.precision=32-true"]
FMNIST = {"image_size": 28, "num_classes": 10, "in_chans": 1}  # what experiment=converged trains on
FMNIST_INPUT = (FMNIST["in_chans"], FMNIST["image_size"], FMNIST["image_size"])  # (C, H, W) of one image
MAX_GROW = 3  # values the lr grid may grow by, over both edges together (2 until sitting 3: see docs)
# How often a running job's sitting is written to its study_sessions.json: a runner that dies with
# the machine (as at the end of sittings 1 and 4) leaves its last note, not nothing.
SITTING_NOTE_S = 60.0
EVAL_DIR = "eval"  # <run>/eval: eval.py's results.json for a finished run
EVAL_OVERRIDES = ["latency.num_threads=1"]  # batch 1, fp32, eager, contiguous: eval.yaml's defaults, as match times
SMALL_FILES = ("metrics.json", "config.yaml", "error.txt", ".hydra/overrides.yaml", "study_sessions.json",
               f"{EVAL_DIR}/results.json", f"{EVAL_DIR}/.hydra/overrides.yaml")  # + csv/*/metrics.csv


# The workers' threads log too: one line must not break into another. Reentrant, because the
# SIGTERM/SIGINT handlers log from the main thread, which may be inside log() when the signal comes.
_LOG_LOCK = threading.RLock()


def log(message: str) -> None:
    with _LOG_LOCK:
        print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Job:
    stage: str
    overrides: list[str]
    arm: str = ""  # model config: conv or dsconv
    name: str = ""  # the run directory's name: hydra.sweep.subdir, resolved
    config: dict = field(default_factory=dict)

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.stage / self.name

    def pid_file(self, runs_dir: Path) -> Path:
        return runs_dir / self.stage / f"{self.name}.pid"

    @property
    def needs_gpu(self) -> bool:
        return self.config.get("trainer", {}).get("accelerator") == "gpu"

    def state(self, runs_dir: Path) -> str:
        run_dir = self.run_dir(runs_dir)
        if _alive(self.pid_file(runs_dir)):
            return "running"  # by another runner (one restarted with new code, say): leave it alone
        if (run_dir / "metrics.json").is_file():
            return "finished"
        if (run_dir / "error.txt").is_file():
            return "failed"
        return "partial" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "todo"


EXTRA: list[str] = []  # --extra: overrides added to every job (a smoke run of the machinery)


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    import torch  # lazy: plan and the runner need torch only for this

    return torch.cuda.is_available()


def thread_env(threads: int = 1) -> dict[str, str]:
    """The environment of every process the study starts: ``threads`` intra-op threads (one unless
    ``run --threads``), this checkout's dsnet."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # packages on it stay
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


_COMPOSED: dict[tuple[str, ...], tuple[str, dict]] = {}  # overrides -> (name, config): composing takes ~0.1 s


def resolve(jobs: list[Job]) -> list[Job]:
    """Fills in each job's run-directory name and resolved config by composing ``train.yaml``."""
    for job in jobs:
        job.overrides = [*job.overrides, *(o for o in EXTRA if o not in job.overrides)]
    missing = [job for job in jobs if tuple(job.overrides) not in _COMPOSED]
    if missing:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            for job in missing:
                cfg = compose("train", overrides=job.overrides, return_hydra_config=True)
                _COMPOSED[tuple(job.overrides)] = (str(OmegaConf.select(cfg, "hydra.sweep.subdir")),
                                                   OmegaConf.to_container(cfg, resolve=False))
    for job in jobs:
        job.name, job.config = _COMPOSED[tuple(job.overrides)]
    return jobs


# --- the learning-rate search and its choice ------------------------------------------------------

def search_grid() -> tuple[list[str], list[float]]:
    """The arms and the lr grid of hparams_search/converged_lr.yaml."""
    params = OmegaConf.load(ROOT / "configs" / "hparams_search" / "converged_lr.yaml").hydra.sweeper.params
    return str(params["model"]).split(","), [float(v) for v in str(params["optim.optimizer.lr"]).split(",")]


def search_jobs(grid: list[float]) -> list[Job]:
    # Centre out and the two arms interleaved, so a search cut short has the middle of the grid for both.
    centre = sorted(grid, key=lambda lr: abs(grid.index(lr) - (len(grid) - 1) / 2))
    arms, _ = search_grid()
    return [Job("lr_search", [*SEARCH, f"model={arm}", f"optim.optimizer.lr={lr:g}"], arm) for lr in centre for arm in arms]


def val_acc(job: Job, runs_dir: Path) -> float | None:
    """val/acc_best of a finished trial, 0.0 for a failed one (say a NaN loss), None if not run yet."""
    state = job.state(runs_dir)
    if state == "failed":
        return 0.0
    if state != "finished":
        return None
    return json.loads((job.run_dir(runs_dir) / "metrics.json").read_text())["val/acc_best"]


def _edge_gains(grid: list[float], scores: dict[str, dict[float, float]], best: dict[str, float]) -> dict[str, float]:
    """``{"low"|"high": gain}`` for each edge of the grid some arm's best lr sits at; the gain is the
    most any such arm's score rises from the edge's neighbour to the edge (0 for a tie-rule edge)."""
    gains = {}
    for side, edge, neighbour in (("low", grid[0], grid[1]), ("high", grid[-1], grid[-2])):
        at_edge = [arm for arm, lr in best.items() if lr == edge]
        if at_edge:
            gains[side] = max(scores[arm][edge] - scores[arm][neighbour] for arm in at_edge)
    return gains


def choose(runs_dir: Path) -> tuple[list[Job], dict | None]:
    """The search's jobs (grid grown at the edges where needed) and, once all finished, the choice.

    Returns:
        ``(jobs, choice)``; ``choice`` is None while trials are missing, else
        ``{arm: {"lr", "val/acc_best", "trials", "grid", "scores", "at_edge"}}``. Ties go to the
        smaller lr. The grid grows by a factor 2 at each edge an arm's best sits at, both edges in
        the same round, by at most MAX_GROW values in all (the last one at the edge where an arm
        gains most); a best lr still at its edge says so.
    """
    arms, base = search_grid()
    grid = list(base)
    while True:
        jobs = resolve(search_jobs(grid))
        scores = {arm: {} for arm in arms}
        for job in jobs:
            scores[job.arm][float(job.config["optim"]["optimizer"]["lr"])] = val_acc(job, runs_dir)
        if any(v is None for s in scores.values() for v in s.values()):
            return jobs, None
        best = {arm: max(sorted(s), key=lambda lr, s=s: s[lr]) for arm, s in scores.items()}
        # Both edges in one round where arms sit at both: an arm at one edge never waits on a trial
        # at the other. With one value left, the edge where an arm still climbs most steeply.
        gain = _edge_gains(sorted(grid), scores, best)
        room = len(base) + MAX_GROW - len(grid)
        if room <= 0 or not gain:
            break
        sides = set(gain)
        if room == 1 and len(sides) == 2:
            sides = {max(gain, key=lambda side: (gain[side], side == "low"))}
        grid = [min(grid) / 2] * ("low" in sides) + grid + [max(grid) * 2] * ("high" in sides)
    choice = {arm: {"lr": best[arm], "val/acc_best": scores[arm][best[arm]], "trials": len(grid),
                    "grid": ",".join(f"{lr:g}" for lr in sorted(grid)),
                    "scores": {f"{lr:g}": scores[arm][lr] for lr in sorted(grid)},
                    "at_edge": best[arm] in (min(grid), max(grid))} for arm in arms}
    return jobs, choice


# --- the stages after the search ------------------------------------------------------------------

def chosen(choice: dict, arm: str) -> list[str]:
    c = choice[arm]
    return [f"optim.optimizer.lr={c['lr']:g}", f"hparams.lr_trials={c['trials']}", f"hparams.lr_grid='{c['grid']}'"]


def check_met(runs_dir: Path, short: list[Job], long: list[Job]) -> bool | None:
    """Whether doubling the schedule (``short`` -> ``long``) moved each arm's test top-1 and the
    standard - dsconv gap by less than 0.5 pp, as the report's convergence check says (paired by seed);
    None while a run of either is unfinished."""
    from dsnet.report import collect_runs, convergence, summarise  # lazy: plan and run only

    if any(job.state(runs_dir) != "finished" for job in (*short, *long)):
        return None
    runs, _ = collect_runs(sorted({job.run_dir(runs_dir) for job in (*short, *long)}))
    rows = convergence(summarise(runs))
    return bool(rows) and all(row["meets"] for row in rows)


def fmnist_net(conv: str, width: float):
    """experiment=converged's network: MobileNetV1 with the small-input stem, for Fashion-MNIST."""
    from dsnet.models import create_model  # lazy: plan and report need no networks

    return create_model("mobilenet_v1", conv=conv, width=width, small_input=True,
                        num_classes=FMNIST["num_classes"], in_chans=FMNIST["in_chans"])


def later_stages(choice: dict, runs_dir: Path | None = None) -> list[tuple[str, list[Job]]]:
    """Every stage after the search, in priority order, each arm at its chosen lr.

    The stages after the 30-epoch check depend on it (the protocol, docs/results/converged): met,
    the tables train 15 epochs (experiment=converged); failed, 30 (experiment=converged_long), and
    a 60-epoch check at w0.25 comes first. Until the check's runs under ``runs_dir`` are finished
    (or without ``runs_dir``), the list ends with the check.
    """
    from dsnet.matching import match_width  # lazy: builds networks
    from dsnet.models.cost import count_macs

    def jobs(stage: str, base: list[str], arms=ARMS, widths=(0.25,)) -> list[Job]:
        return [Job(stage, [*base, f"model={arm}", f"model.width={w:g}", f"seed={seed}", *chosen(choice, arm)], arm)
                for seed, w, arm in itertools.product(SEEDS, widths, arms)]

    by_params = match_width("dsconv", "standard", 0.25, cost="params", **FMNIST)
    by_macs = match_width("dsconv", "standard", 0.25, cost="macs", **FMNIST)
    # One run set serves both rows when the params-matched width also matches the MACs within 2%
    # (at 28 px: w0.74, -0.11% params and +1.8% MACs; the MACs-matched w0.73 is -2.2% in params).
    macs_at = count_macs(fmnist_net("dsconv", by_params.width), FMNIST_INPUT)
    matched = [by_params.width] if abs(macs_at / by_macs.target - 1) <= 0.02 else [by_params.width, by_macs.width]
    if (RESULTS_DIR / "match_latency.json").is_file():  # measured once (study.py match --cost latency), then fixed
        matched.append(json.loads((RESULTS_DIR / "match_latency.json").read_text())["width"])
    # A matched width Table 4 trains anyway (equal latency at 28 px: 0.5) is not trained twice: the
    # report pairs runs by configuration, whatever their stage.
    matched = sorted(set(matched) - set(TABLE4_WIDTHS))
    # Cheap whole units first: Table 4 at w0.25 (~1.4 CPU-h), the depthwise-decay ablation and the
    # equal-cost runs (dsconv only). Then the 30-epoch check, before Table 4 at w0.5 (its standard arm
    # has 4x the MACs of w0.25: over an hour a run): should 15 epochs fail the criterion, the check's
    # runs are Table 4 w0.25 at 30 epochs, and nothing expensive was trained on the short schedule.
    stages = [
        ("table4_w0.25", jobs("table4_w0.25", ["experiment=converged"], widths=TABLE4_WIDTHS[:1])),
        ("dw_decay_w0.25", jobs("dw_decay_w0.25", ["experiment=converged", "module.depthwise_weight_decay=0"],
                                arms=("dsconv",))),
        ("equal_cost", jobs("equal_cost", ["experiment=converged"], arms=("dsconv",), widths=matched)),
        ("long_w0.25", jobs("long_w0.25", ["experiment=converged_long"])),
    ]
    met = None if runs_dir is None else check_met(runs_dir, resolve(stages[0][1]), resolve(stages[3][1]))
    if met is None:
        return stages
    schedule = ["experiment=converged"] if met else ["experiment=converged_long"]
    if not met:  # 30 epochs is the schedule: its own check (60) first; Table 4 w0.25 at 30 is long_w0.25
        stages += [("long60_w0.25", jobs("long60_w0.25", ["experiment=converged_long", "trainer.max_epochs=60"]))]
    stages += [
        # dsconv first: its w0.5 runs are also the equal-latency arm, and a third of the standard's cost
        ("table4_w0.5", sorted(jobs("table4_w0.5", schedule, widths=TABLE4_WIDTHS[1:]),
                               key=lambda job: job.arm != "dsconv")),
    ]
    if not met:  # the order: Table 4 at both widths, then the equal-cost pairs, then Table 6
        stages += [("equal_cost_e30", jobs("equal_cost_e30", schedule, arms=("dsconv",), widths=matched))]
    return stages + [
        ("table6", jobs("table6", schedule, arms=("dsconv",), widths=(1.0, 0.75))),
        # Table 4 at the paper's width 1.0: the standard arm on a GPU; its dsconv arm is Table 6's w1.0
        ("table4_w1", jobs("table4_w1", [*schedule, *GPU_OVERRIDES], arms=("conv",), widths=(1.0,))),
    ]


# --- fitting runs into a sitting (run --finish-by) -------------------------------------------------

# Estimates are wall times of earlier sittings, which ran beside other work: a run starts only when
# its estimate with this margin ends before --finish-by.
ESTIMATE_MARGIN = 1.1


def measured_epoch_s(runs_dir: Path) -> dict[tuple[str, float, int], list[float]]:
    """Wall seconds per epoch of every finished run under ``runs_dir``, by (convolution, width,
    threads): its sittings' wall time (study_sessions.json) over its epochs; a run whose sittings
    used different thread counts is left out. Restored runs bring the times of the machine that
    trained them; runs trained on a GPU are left out."""
    measured: dict[tuple[str, float, int], list[float]] = {}
    for sittings_file in runs_dir.glob("*/*/study_sessions.json"):
        run_dir = sittings_file.parent
        if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
            continue
        sittings = json.loads(sittings_file.read_text())
        threads = {x.get("threads", 1) for x in sittings}  # sittings before run --threads had one
        if len(threads) != 1:
            continue
        cfg = OmegaConf.load(run_dir / "config.yaml")
        if cfg.trainer.get("accelerator", "cpu") != "cpu":
            continue  # a GPU's epochs say nothing about this machine's
        key = (str(cfg.model.conv), float(cfg.model.width), threads.pop())
        measured.setdefault(key, []).append(sum(x["wall_s"] for x in sittings) / int(cfg.trainer.max_epochs))
    return measured


@functools.lru_cache(maxsize=None)
def train_macs(conv: str, width: float) -> int:
    """Training multiply-adds per image of experiment=converged's network at this width."""
    from dsnet.models.cost import count_train_macs  # lazy: builds networks

    return count_train_macs(fmnist_net(conv, width), FMNIST_INPUT)


def estimate_s(job: Job, runs_dir: Path, measured: dict[tuple[str, float, int], list[float]],
               threads: int = 1) -> float | None:
    """Wall seconds the job's remaining epochs take at ``threads`` threads: the median measured epoch
    of its convolution at that thread count and the nearest measured width, scaled by training
    multiply-adds to its own width. With no run of its convolution finished at that count, its
    1-thread time over ``threads`` (linear scaling: a 20-step probe of standard w0.5 measured 2.06x
    at 2 threads). None when no run of its convolution finished at all."""
    conv, width = str(job.config["model"]["conv"]), float(job.config["model"]["width"])
    at = threads if any(c == conv and t == threads for c, _, t in measured) else 1  # the count measured
    widths = [w for c, w, t in measured if c == conv and t == at]
    if not widths:
        return None
    nearest = min(widths, key=lambda w: (abs(w - width), w))
    per_epoch = (statistics.median(measured[conv, nearest, at])
                 * train_macs(conv, width) / train_macs(conv, nearest)) * at / threads
    return per_epoch * (int(job.config["trainer"]["max_epochs"]) - epochs_done(job.run_dir(runs_dir)))


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def finish_by_time(text: str) -> float:
    """``--finish-by HH:MM``: the next such time of day (UTC), as a Unix time."""
    try:
        hour, minute = (int(v) for v in text.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day HH:MM (UTC), e.g. 03:45") from None
    now = time.time()
    today = time.gmtime(now)
    at = calendar.timegm((today.tm_year, today.tm_mon, today.tm_mday, hour, minute, 0))
    return at if at > now else at + 86400


# --- running ---------------------------------------------------------------------------------------

class Runner:
    """Runs jobs ``workers`` at a time; stops starting new ones after SIGTERM or a killed job."""

    def __init__(self, runs_dir: Path, workers: int, finish_by: float | None = None, threads: int = 1) -> None:
        self.runs_dir, self.workers, self.finish_by, self.threads = runs_dir, workers, finish_by, threads
        self.stopping = threading.Event()
        self.running: dict[str, int] = {}
        self.lock = threading.Lock()
        signal.signal(signal.SIGTERM, lambda *_: self.stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.stop("SIGINT"))

    def stop(self, why: str) -> None:
        log(f"{why}: starting no new runs; the running ones save last.ckpt and exit")
        self.stopping.set()

    def write_pids(self) -> None:
        lines = [f"pgid {os.getpgid(0)}", f"runner {os.getpid()}", *(f"job {p} {n}" for n, p in self.running.items())]
        (self.runs_dir / "PIDS").write_text("\n".join(lines) + "\n")

    def run_stage(self, jobs: list[Job]) -> bool:
        """Runs the jobs not finished yet; True when every job of the stage is finished or failed."""
        self.jobs = jobs
        todo: queue.Queue[Job] = queue.Queue()
        for job in jobs:
            if job.state(self.runs_dir) in ("todo", "partial"):
                todo.put(job)
        threads = [threading.Thread(target=self._worker, args=(todo,)) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=1.0)  # a short join, so the signal handlers run in the main thread
        return all(job.state(self.runs_dir) in ("finished", "failed") for job in jobs)

    def busy(self) -> int:
        """Runs going on under runs_dir, this runner's and any other's (their .pid files)."""
        return sum(_alive(p) for p in self.runs_dir.glob("*/*.pid"))

    def _worker(self, todo: queue.Queue) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.busy() >= self.workers:  # another runner's jobs count too: never more at once
                    job = None
                else:
                    try:
                        job = todo.get_nowait()
                    except queue.Empty:
                        return
                    if job.state(self.runs_dir) not in ("todo", "partial"):
                        continue  # started or finished elsewhere meanwhile
                    if not self.fits(job):
                        continue
                    job.pid_file(self.runs_dir).parent.mkdir(parents=True, exist_ok=True)
                    job.pid_file(self.runs_dir).write_text(f"{os.getpid()}\n")  # held until the run's own pid
            if job is None:
                collect(self.runs_dir, self.jobs)  # runs another runner started may have finished
                time.sleep(30)
                continue
            self._run(job)

    def fits(self, job: Job) -> bool:
        """Whether the job's estimated remaining time ends before --finish-by (always, without it)."""
        if self.finish_by is None:
            return True
        left = self.finish_by - time.time()
        need = estimate_s(job, self.runs_dir, measured_epoch_s(self.runs_dir), self.threads)
        if need is not None and need * ESTIMATE_MARGIN <= left:
            return True
        why = ("no finished run of its convolution to estimate from" if need is None
               else f"needs ~{need / 60:.0f} min")
        log(f"skip {job.stage}/{job.name}: {why}, {max(left, 0) / 60:.0f} min left before --finish-by")
        return False

    def _run(self, job: Job) -> None:
        stage_dir = self.runs_dir / job.stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        cmd = ["nice", "-n", "19", sys.executable, "train.py", "-m", *job.overrides,
               f"hydra.sweep.dir={stage_dir}", "ckpt_path=last"]
        env = thread_env(self.threads)
        log(f"start {job.stage}/{job.name} ({epochs_done(job.run_dir(self.runs_dir))} epochs done)")
        start = time.time()
        with open(stage_dir / f"{job.name}.log", "a") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            job.pid_file(self.runs_dir).write_text(f"{proc.pid}\n")
            with self.lock:
                self.running[job.name] = proc.pid
                self.write_pids()
            usage, rc = self._wait(proc.pid, job.run_dir(self.runs_dir), start)
        job.pid_file(self.runs_dir).unlink(missing_ok=True)
        record_session(job.run_dir(self.runs_dir), start, usage.ru_utime + usage.ru_stime, rc, self.threads)
        with self.lock:
            del self.running[job.name]
            self.write_pids()
        log(f"end {job.stage}/{job.name}: exit {rc}, {(time.time() - start) / 60:.1f} min, {job.state(self.runs_dir)}")
        if job.state(self.runs_dir) in ("finished", "failed"):
            collect(self.runs_dir, [job])
        elif rc != 0:  # killed or interrupted (a failed run writes error.txt)
            self.stop(f"{job.name} exited {rc} without a result")

    def _wait(self, pid: int, run_dir: Path, start: float):
        """Waits for the run; every SITTING_NOTE_S notes its sitting so far (exit null) in
        study_sessions.json. Returns wait4's rusage (the CPU time the run used) and the exit code."""
        noted = time.monotonic()
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return usage, os.waitstatus_to_exitcode(status)
            if time.monotonic() - noted >= SITTING_NOTE_S:
                record_session(run_dir, start, process_cpu_s(pid), None, self.threads)
                noted = time.monotonic()
            time.sleep(0.5)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a running process and its descendants, the live ones and those
    already waited for (``/proc/<pid>/stat``); 0.0 once it is gone."""
    ticks, stats = os.sysconf("SC_CLK_TCK"), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": comm may hold spaces
        except (OSError, IndexError):
            continue  # gone meanwhile
        # fields[1] is the parent's pid; 11-14: utime, stime, cutime, cstime (stat fields 14-17)
        stats[int(stat.parent.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    tree = {pid}
    while True:  # descendants: every process whose parent is in the tree, until none is added
        grown = tree | {p for p, (ppid, _) in stats.items() if ppid in tree}
        if grown == tree:
            break
        tree = grown
    total = sum(stats[p][1] for p in tree if p in stats)
    return total / ticks


def record_session(run_dir: Path, start: float, cpu_s: float, rc: int | None, threads: int = 1) -> None:
    """Records one sitting of a run (wall and CPU seconds, exit status, threads) in its study_sessions.json.

    ``rc`` None notes a sitting still running; the next record of the same sitting (its start)
    replaces it, so a sitting cut off with the machine keeps its last note, with ``"exit": null``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "study_sessions.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    start_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    if sessions and sessions[-1]["start_utc"] == start_utc and sessions[-1]["exit"] is None:
        sessions.pop()
    sessions.append({"start_utc": start_utc, "wall_s": round(time.time() - start, 1), "cpu_s": round(cpu_s, 1),
                     "exit": rc, "threads": threads})
    write_text_atomic(path, json.dumps(sessions, indent=1) + "\n")  # a note a minute: never half-written


def epochs_done(run_dir: Path) -> int:
    """Epochs a run has logged (its CSV's ``epochs`` column, over resumed versions too)."""
    done = 0
    for csv_file in run_dir.glob("csv/*/metrics.csv"):
        rows = csv.DictReader(csv_file.open())
        done = max([done, *(int(float(r["epochs"])) for r in rows if r.get("epochs"))])
    return done


def collect(runs_dir: Path, jobs: list[Job]) -> int:
    """Copies the small files of finished (or failed) runs into docs/results/converged/runs: those
    not copied yet or changed since (an eval added, a run trained again); returns the runs copied."""
    copied = 0
    for job in jobs:
        src = job.run_dir(runs_dir)
        if job.state(runs_dir) not in ("finished", "failed"):
            continue
        dst = RESULTS_DIR / "runs" / job.stage / job.name
        files = [rel for rel in [*SMALL_FILES, *(str(p.relative_to(src)) for p in src.glob("csv/*/metrics.csv"))]
                 if (src / rel).is_file()]
        stale = [rel for rel in files  # copy2 keeps the time: an unchanged copy has the source's
                 if not (dst / rel).is_file() or (dst / rel).stat().st_mtime != (src / rel).stat().st_mtime]
        for rel in stale:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
        copied += bool(stale)
    return copied


def restore(runs_dir: Path) -> int:
    """Copies the committed runs back under ``runs_dir`` (never over a run directory's own files)."""
    restored = 0
    for metrics in (RESULTS_DIR / "runs").glob("*/*/metrics.json"):
        src = metrics.parent
        dst = runs_dir / src.relative_to(RESULTS_DIR / "runs")
        for path in src.rglob("*"):
            if path.is_file() and not (dst / path.relative_to(src)).exists():
                (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst / path.relative_to(src))
        restored += 1
    return restored


def match(cost: str, min_run_time: float) -> dict:
    """dsconv's width matching standard w0.25 in ``cost``; latency: batch 1, 1 thread, 28 px, fp32."""
    from dsnet import allocator
    from dsnet.matching import match_width
    from dsnet.environment import environment
    from dsnet.latency import measure_latency

    allocator.configure("keep_freed")  # as eval.py times: freed memory kept, no page faults per pass

    threads = 1

    def latency_ms(net):
        return measure_latency(net, (1, 28, 28), num_threads=threads, min_run_time=min_run_time)["latency_ms_p50"]

    found = match_width("dsconv", "standard", 0.25, cost=latency_ms if cost == "latency" else cost,
                        tolerance=0.05 if cost == "latency" else 0.02, max_width=1.0, **FMNIST)
    # the input the two networks were built for, so that the report pairs runs of that input only
    return {**vars(found), "cost_name": cost, "arch": "mobilenet_v1", **FMNIST,
            "environment": environment("cpu", threads) if cost == "latency" else None}


def pause_study(runs_dir: Path) -> int | None:
    """Stops (SIGSTOP) the process group of a study running under ``runs_dir``; its pgid, or None."""
    try:
        pgid = int((runs_dir / "PIDS").read_text().split()[1])  # "pgid <n>" is the first line
        os.killpg(pgid, signal.SIGSTOP)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return None
    return pgid


def same_network(run_dir: Path) -> bool:
    """Whether a run's cost-only eval (``<run>/eval/results.json``) counted the network the run
    trained: the params and MACs of its metrics.json."""
    trained = json.loads((run_dir / "metrics.json").read_text())
    counted = json.loads((run_dir / EVAL_DIR / "results.json").read_text())
    return (trained["params"], trained["macs"]) == (counted["params"], counted["macs"])


def evaluate(runs_dir: Path, jobs: list[Job]) -> int:
    """eval.py on the best checkpoint of each finished job not evaluated yet (a GPU run without
    one: its network, cost and latency only); returns the failures.

    A study running under ``runs_dir`` is paused meanwhile (latency on a quiet machine) and resumed
    afterwards, whatever happens here (SIGTERM too: it becomes SystemExit, so ``finally`` runs).
    """
    todo = [job for job in jobs if job.state(runs_dir) == "finished"
            and not (job.run_dir(runs_dir) / EVAL_DIR / "results.json").is_file()]
    if not todo:
        log("every finished run is evaluated")
        return 0
    env = thread_env()
    failed = 0
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pgid = pause_study(runs_dir)
    try:
        log(f"evaluating {len(todo)} runs" + (f"; study (pgid {pgid}) paused" if pgid else ""))
        time.sleep(2 if pgid else 0)  # the paused runs' last time slices end before anything is timed
        for i, job in enumerate(todo, 1):
            run_dir = job.run_dir(runs_dir)
            ckpt = best_checkpoint(run_dir)
            if ckpt is None and not job.needs_gpu:
                log(f"eval {i}/{len(todo)} {job.stage}/{job.name}: no best checkpoint; skipped")
                failed += 1
                continue
            experiment = [o for o in job.overrides if o.startswith("experiment=")]
            # every eval times on this machine's CPU with eval's own trainer, wherever the run trained
            overrides = [o for o in eval_overrides(run_dir) if not o.startswith(("trainer=", "trainer."))]
            # A GPU run's checkpoint may have stayed on the GPU machine (standard w1.0's is 108 MiB):
            # then eval.py counts and times the same network with random weights (latency does not
            # depend on them), and the report takes top-1 from the run's metrics.json.
            weights = [f"ckpt_path={ckpt}"] if ckpt is not None else []
            cmd = [sys.executable, "eval.py", *experiment, *overrides, *weights,
                   f"hydra.run.dir={run_dir / EVAL_DIR}", *EVAL_OVERRIDES]
            start = time.time()
            with open(run_dir / f"{EVAL_DIR}.log", "w") as out:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
            if rc == 0 and ckpt is None and not same_network(run_dir):
                rc = 1  # the eval config built another network than the run trained: not its latency
                (run_dir / EVAL_DIR / "results.json").unlink()
                log(f"eval {i}/{len(todo)} {job.stage}/{job.name}: eval.py's network has other params or "
                    f"MACs than {run_dir / 'metrics.json'}; its results.json removed")
            failed += rc != 0
            log(f"eval {i}/{len(todo)} {job.stage}/{job.name}: exit {rc}, {time.time() - start:.0f} s")
    finally:
        if pgid is not None:
            os.killpg(pgid, signal.SIGCONT)
            log(f"study (pgid {pgid}) resumed")
        signal.signal(signal.SIGTERM, previous)
    collect(runs_dir, todo)
    return failed


def report() -> int:
    """``python -m dsnet.report`` over the collected runs: the search into ``report_lr_search/``, every
    later stage together into ``report/`` (with ``match_latency.json``'s pair at equal latency);
    returns the first non-zero exit status, else 0."""
    runs = RESULTS_DIR / "runs"
    stages = sorted(p for p in runs.iterdir() if p.is_dir() and p.name != "lr_search") if runs.is_dir() else []
    inputs = [(dirs, out) for dirs, out in (([runs / "lr_search"], RESULTS_DIR / "report_lr_search"),
                                             (stages, RESULTS_DIR / "report")) if dirs and all(d.is_dir() for d in dirs)]
    if not inputs:
        sys.exit(f"study.py: error: no collected runs under {runs} (python scripts/study.py collect)")
    # the latency match the study trained its equal-latency pair from: the report pairs those runs
    # at the latencies the match timed side by side, not at their own evals' (other machines, perhaps)
    record = RESULTS_DIR / "match_latency.json"
    latency_match = ["--latency-match", str(record)] if record.is_file() else []
    status = 0
    for dirs, out in inputs:
        log(f"report of {', '.join(x.name for x in dirs)} -> {out}")
        extra = latency_match if out.name == "report" else []
        rc = subprocess.run([sys.executable, "-m", "dsnet.report", *map(str, dirs), "--out", str(out), *extra],
                            cwd=ROOT, check=False).returncode
        status = status or rc
    return status


def all_jobs(runs_dir: Path) -> tuple[list[tuple[str, list[Job]]], dict | None]:
    search, choice = choose(runs_dir)
    stages = [("lr_search", search)]
    if choice is not None:
        stages += [(name, resolve(jobs)) for name, jobs in later_stages(choice, runs_dir)]
    return stages, choice


def main(argv: list[str] | None = None) -> int:
    global RESULTS_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("plan", "run", "collect", "restore", "choose", "match", "evaluate", "report"))
    parser.add_argument("--cost", choices=("params", "macs", "latency"), default="params",
                        help="match: the cost to match (latency is measured: run it on an idle machine)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="match --cost latency: seconds per timing")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument("--workers", type=positive_int, default=2, help="training processes at once (default 2)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="run: intra-op threads per training process (default 1; 2 with --workers 1 "
                             "gives one long run both cores)")
    parser.add_argument("--finish-by", type=finish_by_time, metavar="HH:MM",
                        help="run: start only runs whose estimated time (measured epochs here, scaled by "
                             "multiply-adds) ends before this time of day, UTC: a sitting of known length")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where collect copies runs to")
    parser.add_argument("--extra", action="append", default=[], metavar="OVERRIDE",
                        help="an override for every job, e.g. --extra trainer.max_epochs=1 (smoke runs)")
    args = parser.parse_args(argv)
    register_resolvers()  # the stages compose configs that use ${dsnet.*}
    RESULTS_DIR = args.results_dir.resolve()
    EXTRA[:] = args.extra
    runs_dir = args.runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "match":
        try:
            found = match(args.cost, args.min_run_time)
        except ValueError as err:  # no width within the tolerance: noisy timings, or out of reach
            sys.exit(f"study.py: error: {err}")
        if args.cost == "latency":  # the equal_cost stage trains at this width from now on
            (RESULTS_DIR / "match_latency.json").write_text(json.dumps(found, indent=2) + "\n")
        print(json.dumps(found, indent=2))
        return 0
    if args.command == "report":
        return report()
    if args.command == "restore":
        log(f"restored {restore(runs_dir)} runs into {runs_dir}")
        return 0
    if args.command == "run":
        os.nice(19)  # the runner and every run it starts take only idle CPU
        runner = Runner(runs_dir, args.workers, args.finish_by, args.threads)
        while not runner.stopping.is_set():
            stages, _ = all_jobs(runs_dir)
            # without a GPU, the jobs that ask for one are left out of the queue (and named at the end)
            left_out = (lambda job: job.needs_gpu) if not cuda_available() else (lambda job: False)
            waiting = [j for _, jobs in stages for j in jobs
                       if left_out(j) and j.state(runs_dir) not in ("finished", "failed")]
            stages = [(name, [j for j in jobs if not left_out(j)]) for name, jobs in stages]
            pending = [(name, jobs) for name, jobs in stages
                       if any(j.state(runs_dir) not in ("finished", "failed") for j in jobs)]
            if not pending:
                log("every stage finished" + (f", but for {len(waiting)} runs that need a GPU (this machine has none): "
                                              + ", ".join(f"{j.stage}/{j.name}" for j in waiting) if waiting else ""))
                break
            name, jobs = pending[0]
            if name != "lr_search":  # after the search, one queue in stage order: a worker the last
                # long run of a stage would leave idle starts the next stage's first job instead
                name, jobs = " + ".join(n for n, _ in pending), [j for _, js in pending for j in js]
            if not any(j.state(runs_dir) in ("todo", "partial") for j in jobs):
                time.sleep(60)  # the rest of the stage runs in another runner's processes
                continue
            log(f"stage {name}: {len(jobs)} jobs")
            before = [j.state(runs_dir) for j in jobs]
            runner.run_stage(jobs)
            if [j.state(runs_dir) for j in jobs] == before and not runner.stopping.is_set():
                if args.finish_by is not None:  # every job left was skipped: none fits any more
                    log("nothing more fits before --finish-by")
                    return 0
                log(f"stage {name}: no job changed state; stopping (see the jobs' .log files)")
                return 1
        return 0
    stages, choice = all_jobs(runs_dir)
    if args.command == "collect":
        log(f"copied {sum(collect(runs_dir, jobs) for _, jobs in stages)} runs into {RESULTS_DIR / 'runs'}")
    elif args.command == "plan":
        measured = measured_epoch_s(runs_dir)
        for name, jobs in stages:
            for job in jobs:
                state = job.state(runs_dir)
                epochs = f"{epochs_done(job.run_dir(runs_dir))}/{job.config['trainer']['max_epochs']} epochs"
                need = None if state == "finished" or job.needs_gpu else estimate_s(job, runs_dir, measured, args.threads)
                left = "" if need is None else f"  ~{need / 60:.0f} min to go at {args.threads} thread(s)"
                left += "  (needs a GPU)" if job.needs_gpu and state != "finished" else ""
                print(f"{name:16s} {job.name:40s} {state:9s} {epochs}{left}")
        if choice is None:
            print("(the later stages are listed once the lr search finished)")
        sittings = [x for f in runs_dir.glob("*/*/study_sessions.json") for x in json.loads(f.read_text())]
        print(f"CPU used: {sum(x['cpu_s'] for x in sittings) / 3600:.2f} h in {len(sittings)} sittings of runs "
              "(study_sessions.json; runs started by a runner older than it are not counted)")
    elif args.command == "evaluate":
        failed = evaluate(runs_dir, [j for name, jobs in stages if name != "lr_search" for j in jobs])
        if failed:
            sys.exit(f"study.py: error: {failed} evaluations failed (see <run>/{EVAL_DIR}.log)")
    elif args.command == "choose":
        if choice is None:
            sys.exit("study.py: error: the lr search has unfinished trials (python scripts/study.py plan)")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "lr_choice.json").write_text(json.dumps(choice, indent=2) + "\n")
        print(json.dumps(choice, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
