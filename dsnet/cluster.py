"""Which cluster environment Lightning uses, with its own SLURM requeueing off.

Under SLURM, Lightning's ``SLURMEnvironment`` defaults to ``auto_requeue=True``: on SIGUSR1 it writes
``<run_dir>/hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``, and a later fit with ``ckpt_path=None``
resumes from that file even when a newer ``last.ckpt`` exists
(https://github.com/Lightning-AI/pytorch-lightning/issues/13773). dsnet's jobs
reach SLURM through submitit (``hydra/launcher=slurm``), which requeues on its own signal (USR2 before
the time limit) and reruns the job, which resumes from ``checkpoints/last.ckpt`` (``ckpt_path=last``).
Two requeuers would fight; submitit owns requeueing, so Lightning's is switched off here.
"""

from __future__ import annotations

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)


def cluster_environment(slurm_auto_requeue: bool = False) -> ClusterEnvironment:
    """The environment Lightning would pick itself, in its order, but SLURM's without auto-requeue.

    Args:
        slurm_auto_requeue: give Lightning back its SIGUSR1 requeueing (only without submitit).
    """
    if TorchElasticEnvironment.detect():  # first, as in Lightning: torchrun may run inside SLURM
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=slurm_auto_requeue)
    for environment in (LSFEnvironment, MPIEnvironment):
        if environment.detect():
            return environment()
    return LightningEnvironment()
