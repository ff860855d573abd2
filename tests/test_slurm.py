"""dsnet on a real SLURM cluster: ``train.py -m hydra/launcher=slurm`` against two slurmd "nodes" on
this machine (``scripts/slurm_cluster.py``), started once for this module and stopped after it.

What a user meets: a sweep whose jobs go through sbatch (a failing job does not stop the others), DDP
across the two nodes under srun, a job that reaches its time limit and is requeued by submitit, and
one requeued by the scheduler mid-epoch (``scontrol requeue``, as a preemption does). Lightning's
own SLURM requeueing is off (``dsnet.cluster``), so exactly one requeue happens and the job resumes
from ``checkpoints/last.ckpt``. Needs root and Debian's ``slurm-wlm`` and ``munge``; skipped without.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY

_spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "scripts" / "slurm_cluster.py")
slurm_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slurm_cluster)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(slurm_cluster.missing() is not None, reason=f"no local SLURM: {slurm_cluster.missing()}"),
]

# The slurm launcher config as a CPU-only cluster needs it: no GPUs, one CPU and no memory request per task.
LAUNCHER = (
    "hydra/launcher=slurm",
    f"hydra.launcher.partition={slurm_cluster.PARTITION}",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=5",
)
QUIET = ("callbacks.progress_bar=null", "callbacks.model_summary=null")

# The requeue tests: deterministic, 16 steps per epoch, about a second per epoch here.
STEPS_PER_EPOCH = (576 - 64) // 32
RUN = (
    "data=synthetic",
    "data.image_size=16",
    "data.num_train=576",
    "data.val_size=64",
    "data.num_test=64",
    "data.batch_size=32",
    "model.width=0.25",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=2",
    "+logger.csv.flush_logs_every_n_steps=2",
    *QUIET,
)
COMPARED = ("test/acc", "test/acc5", "test/loss", "val/acc_best", "epochs")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster.LocalSlurmCluster(tmp_path_factory.mktemp("slurm"), kill_wait_s=10) as running:
        yield running


@pytest.fixture
def env(cluster):
    """The environment of ``train.py`` and, through sbatch, of its jobs: this worktree's dsnet, one thread,
    and the first node's address for DDP (the node names exist only in the cluster's config)."""
    return cluster.env({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        "MASTER_ADDR": "127.0.0.1"})


@pytest.fixture
def started():
    """The processes a test starts; those still running when it ends (a failed test) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start_sweep(started: list, tmp_path: Path, env: dict, *overrides: str) -> subprocess.Popen:
    """``python train.py -m hydra/launcher=slurm ...`` into ``tmp_path/sweep``, running in the background."""
    started.append(subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *LAUNCHER, "hydra.sweep.dir=sweep", *overrides],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return started[-1]


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = proc.communicate(timeout=timeout)
    return output


def job_dirs(sweep: Path) -> list[Path]:
    """submitit's per-job directories, named by SLURM job id (``<array id>_<index>`` for several jobs)."""
    return sorted(p.parent for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


def job_logs(job_dir: Path) -> str:
    """All that task 0 of a job wrote (stdout and stderr, every run of a requeued job)."""
    return "".join(p.read_text(errors="replace") for p in sorted(job_dir.glob(f"{job_dir.name}_0_log.*")))


def show_job(job_id: str, env: dict) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def checkpoint_step(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def logged_step(run_dir: Path) -> int:
    """The highest global step the CSV logger has flushed (-1 before any)."""
    rows = [row for f in run_dir.glob("csv/version_*/metrics.csv") for row in csv.DictReader(f.open())]
    return max((int(row["step"]) for row in rows if row.get("step", "").isdigit()), default=-1)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"train.py -m exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


@contextlib.contextmanager
def frozen(pid: int):
    """The job's task stopped (SIGSTOP, behind SLURM's back) for the block, and continued after it
    unless it is gone; the signals slurmstepd sends come with a SIGCONT, which wakes it earlier."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def uninterrupted(started: list, tmp_path: Path, env: dict, *overrides: str) -> subprocess.Popen:
    """The same run without SLURM, as the reference (on the other core, while the job runs)."""
    started.append(subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RUN, *overrides, "hydra.run.dir=reference"],
        cwd=tmp_path, env={k: v for k, v in env.items() if not k.startswith("SLURM")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return started[-1]


def task_pid(job_id: str) -> int:
    """PID of the job's Python task (submitit's runner, started by srun) on this machine.

    ``job_id`` is submitit's: ``<array job id>_<index>`` for a job of an array, found by
    SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID. Its SLURM_JOB_ID need not be the array's id: SLURM
    can give that to another task (its docs' example: the last), and matching on it here found the
    failing job's task, soon gone, so the preempted job ran on unfrozen (CI, 2026-12-04)."""
    array_id, _, index = job_id.partition("_")
    tags = ([f"SLURM_ARRAY_JOB_ID={array_id}".encode(), f"SLURM_ARRAY_TASK_ID={index}".encode()] if index
            else [f"SLURM_JOB_ID={job_id}".encode()])
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name.startswith("python") and b"submitit.core._submit" in argv \
                and all(tag in environ for tag in tags):
            return int(proc_dir.name)
    raise AssertionError(f"no Python task of job {job_id} found")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_sweep_through_sbatch_survives_a_failing_job_and_a_preempted_one(cluster, env, started, tmp_path):
    """Two jobs of one sweep: one fails (a bad width), the other is requeued by the scheduler in the
    middle of its second epoch (``scontrol requeue``, what preemption with PreemptMode=REQUEUE does):
    SIGTERM, a checkpoint at that step, the same job again, resumed there, to the full epoch count.

    An epoch takes 0.3 s on a fast machine, less than the requeue takes to reach the task (on one CI
    machine the SIGTERM came at the third epoch), so the task is frozen (SIGSTOP) in its second epoch
    and the requeue's own SIGCONT wakes it: the signal lands where the test put it on any machine."""
    epochs = 3
    proc = start_sweep(started, tmp_path, env, *RUN, f"trainer.max_epochs={epochs}", "ckpt_path=last", "model.width=0.25,-1")
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    last = run_dir / "checkpoints" / "last.ckpt"

    def task_running() -> bool:
        jobs = job_dirs(sweep)
        with contextlib.suppress(AssertionError):  # not started yet
            return len(jobs) == 2 and task_pid(jobs[0].name) > 0
        return False

    # The task's pid first, so that nothing but the step check stands between epoch 2 and the freeze
    # (an epoch is 0.3 s on a fast machine; the /proc scan reads every process's environment).
    wait_for(task_running, proc, "the job's task", poll_s=0.05)
    job, failing = job_dirs(sweep)
    pid = task_pid(job.name)
    wait_for(lambda: last.exists() and logged_step(run_dir) >= STEPS_PER_EPOCH + 2, proc, "epoch 2", poll_s=0.01)
    with frozen(pid):  # slurmstepd sends SIGCONT before SIGTERM: it wakes to the signal
        frozen_at = logged_step(run_dir)
        subprocess.run(["scontrol", "requeue", job.name], env=env, check=True, timeout=30)
        wait_for(lambda: "SIGTERMException" in job_logs(job), proc, "the requeue's SIGTERM", timeout=60)
    output = finish(proc)

    assert proc.returncode != 0 and re.search(r"width=-1 must be a .*positive number", output)  # the failure, reported
    assert "width=-1" in (sweep / "1" / "error.txt").read_text() and not (sweep / "1" / "metrics.json").exists()
    array_id = job.name.split("_")[0]
    assert "#SBATCH --array=0-1" in (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "Job completed successfully" in job_logs(failing)  # Hydra's record of a failure, not a crash
    logs = job_logs(job)
    saved = re.search(r"SIGTERMException at epoch 1, step (\d+): saved (\S+); resume with ckpt_path=last", logs)
    assert saved, logs[-3000:]
    assert STEPS_PER_EPOCH < frozen_at <= int(saved.group(1)) < 2 * STEPS_PER_EPOCH, (frozen_at, saved[1])
    assert saved.group(2) == str(last)
    assert f"Restoring states from the checkpoint path at {last}" in logs
    assert show_job(job.name, env)["Restarts"] == "1"  # requeued once: Lightning did not requeue too
    assert "SLURM auto-requeueing enabled" not in logs and not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert checkpoint_step(last) == epochs * STEPS_PER_EPOCH
    assert (metrics(run_dir)["epochs"], metrics(run_dir)["width"]) == (epochs, 0.25)
    assert 0 < metrics(run_dir)["time_per_epoch_s"] < 60  # the resumed epoch is timed from the resume


@pytest.mark.slow
def test_ddp_across_two_nodes_takes_its_ranks_from_slurm(cluster, env, started, tmp_path):
    # test=false: the test phase under DDP is tests/test_ddp.py's; here it only adds time
    proc = start_sweep(started, tmp_path, env, *TINY, *QUIET, "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1",
                       "test=false")
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    sweep = tmp_path / "sweep"
    assert [p.relative_to(sweep) for p in sweep.rglob("metrics.json")] == [Path("0/metrics.json")]
    assert metrics(sweep / "0")["epochs"] == 1
    (job,) = job_dirs(sweep)
    info = show_job(job.name, env)
    assert (info["NodeList"], info["NumNodes"], info["NumTasks"]) == ("n[1-2]", "2", "2")
    # One srun task per node (submitit's view of SLURM_NODEID, SLURM_PROCID), and Lightning's ranks
    # from SLURMEnvironment, in each task's own log.
    for rank in (0, 1):
        out, err = (job / f"{job.name}_{rank}_log.{ext}" for ext in ("out", "err"))
        assert f"node={rank}(2), global_rank={rank}(2)" in out.read_text()
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in err.read_text()
    for node in slurm_cluster.NODES:  # the job's srun step, launched by each node's slurmd
        assert f"launch task StepId={job.name}.0 " in cluster.log(f"slurmd.{node}"), node


@pytest.mark.slow
def test_time_limit_requeues_through_submitit_and_resumes_to_the_uninterrupted_metrics(cluster, env, started, tmp_path):
    """A 1-minute limit and USR2 ``signal_delay_s`` before it; submitit requeues, the rerun resumes.

    SLURM checks limits every 30 s, so the signal comes 29-59 s into the run: a real job is still
    training then, this tiny one would have finished. So once its first epoch is saved the test
    freezes it (SIGSTOP, behind SLURM's back: its clock runs on) until the signal comes. The rerun gets a longer limit, as real jobs have, so it is not signalled again.
    """
    epochs = 3
    proc = start_sweep(started, tmp_path, env, *RUN, f"trainer.max_epochs={epochs}", "hydra.launcher.timeout_min=1",
                       "hydra.launcher.signal_delay_s=1", "hydra.launcher.max_num_timeout=1", "ckpt_path=last")
    reference = uninterrupted(started, tmp_path, env, f"trainer.max_epochs={epochs}")
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last.exists, proc, "the first epoch's checkpoint")
    (job,) = job_dirs(sweep)
    with frozen(task_pid(job.name)):  # slurmstepd sends SIGCONT with the signal, so the handler runs
        frozen_at = checkpoint_step(last)
        wait_for(lambda: "Caught signal SIGUSR2" in job_logs(job), proc, "SLURM's USR2", timeout=75)
    wait_for(lambda: show_job(job.name, env).get("Restarts") == "1", proc, "the requeue", timeout=60)
    subprocess.run(["scontrol", "update", f"JobId={job.name}", "TimeLimit=5"], env=env, check=True, timeout=30)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    finish(reference)
    assert reference.returncode == 0

    logs = job_logs(job)
    assert "Caught signal SIGUSR2 on localhost: this job is timed-out." in logs
    assert f"Requeued job {job.name} (0 remaining timeouts)" in logs
    # The rerun resumes from the last finished epoch's checkpoint (USR2 makes submitit exit at once).
    assert frozen_at % STEPS_PER_EPOCH == 0 and 0 < frozen_at < epochs * STEPS_PER_EPOCH
    assert f"Restoring states from the checkpoint path at {last}" in logs
    assert show_job(job.name, env)["Restarts"] == "1"  # requeued once: Lightning did not requeue too
    assert "SLURM auto-requeueing enabled" not in logs and not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert checkpoint_step(last) == epochs * STEPS_PER_EPOCH
    assert {k: metrics(run_dir)[k] for k in COMPARED} == {k: metrics(tmp_path / "reference")[k] for k in COMPARED}
