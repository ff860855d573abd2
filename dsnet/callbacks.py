"""Small Lightning callbacks: epoch wall time, a progress bar that reads metrics rarely, weight EMA
whose decay warms up, and the two that make an interrupted run resumable as if nothing had happened
(random state in checkpoints, a checkpoint on SIGTERM / Ctrl-C)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class EpochTimer(L.Callback):
    """Logs the wall time of every training epoch as ``time/epoch_s`` (validation included), and
    the seconds the whole fit has cost so far.

    Also logs ``time/epoch_s_mean`` (mean over every epoch the fit ran, in all its resumed segments)
    and ``epochs`` (epochs completed, resumed ones included). They are logged, not only kept here, so that they reach the
    main process's ``trainer.callback_metrics`` even when DDP ran the fit in spawned processes.

    ``time/fit_wall_s`` and ``time/fit_cpu_s`` are the fit's wall and CPU seconds (this process's
    CPU time, all its threads: ``time.process_time``) summed over every segment of a resumed run: the
    totals travel in the checkpoints (this callback's state), up to the moment each was written, so
    work lost to an interruption after the last checkpoint is not counted. The logged values are
    the totals at the last epoch's end; :attr:`fit_wall_s` and :attr:`fit_cpu_s` also hold the
    fit's last moments (final checkpoints), and are what ``metrics.json`` records where this
    process ran the fit.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.fit_wall_s = 0.0
        self.fit_cpu_s = 0.0
        self.epoch_s_sum = 0.0  # the timed epochs' wall seconds and count, over all segments
        self.epochs_timed = 0
        self._mark: tuple[float, float] | None = None  # (wall, cpu) up to which the totals count

    def _flush(self) -> None:
        """Adds the time since the last mark to the totals, while the fit runs."""
        if self._mark is not None:
            now = (time.perf_counter(), time.process_time())
            self.fit_wall_s += now[0] - self._mark[0]
            self.fit_cpu_s += now[1] - self._mark[1]
            self._mark = now

    @property
    def epoch_s_mean(self) -> float | None:
        """Mean wall seconds of the epochs timed so far, in every segment; None before the first."""
        return self.epoch_s_sum / self.epochs_timed if self.epochs_timed else None

    def state_dict(self) -> dict[str, float]:
        self._flush()  # called as a checkpoint is written: the totals up to now
        return {"fit_wall_s": self.fit_wall_s, "fit_cpu_s": self.fit_cpu_s,
                "epoch_s_sum": self.epoch_s_sum, "epochs_timed": self.epochs_timed}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.fit_wall_s = float(state_dict.get("fit_wall_s", 0.0))
        self.fit_cpu_s = float(state_dict.get("fit_cpu_s", 0.0))
        self.epoch_s_sum = float(state_dict.get("epoch_s_sum", 0.0))
        self.epochs_timed = int(state_dict.get("epochs_timed", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        self._mark = (time.perf_counter(), time.process_time())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        self._mark = None  # testing afterwards is not the fit's time

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation (and checkpointing) before this hook.
        epoch_s = time.perf_counter() - self._start
        self.epoch_s_sum += epoch_s
        self.epochs_timed += 1
        self._flush()
        pl_module.log_dict(
            {
                "time/epoch_s": epoch_s,
                "time/epoch_s_mean": self.epoch_s_mean,
                "time/fit_wall_s": self.fit_wall_s,
                "time/fit_cpu_s": self.fit_cpu_s,
                "epochs": float(trainer.current_epoch + 1),
            },
            on_step=False,
            on_epoch=True,
        )


class ThrottledRichProgressBar(RichProgressBar):
    """``RichProgressBar`` that reads the logged metrics every ``metrics_every_n_steps`` batches.

    Reading them turns each progress-bar tensor into a Python number, which on a GPU waits for all
    queued work: Lightning's bar does it after every batch. The bar itself still moves every batch.

    Args:
        metrics_every_n_steps: optimizer steps between two reads of the metrics.
        **kwargs: passed to ``RichProgressBar`` (``refresh_rate`` is in redraws per second).
    """

    def __init__(self, metrics_every_n_steps: int = 50, **kwargs) -> None:
        n = metrics_every_n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"metrics_every_n_steps={n!r} must be a positive integer")
        super().__init__(**kwargs)
        self.metrics_every_n_steps = metrics_every_n_steps
        self._cached: dict | None = None
        self._cached_step = 0

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        if not trainer.training or trainer.sanity_checking:
            self._cached = None  # validation just logged new numbers: show them at the next batch
            return super().get_metrics(trainer, pl_module)
        step = trainer.global_step
        if self._cached is None or not 0 <= step - self._cached_step < self.metrics_every_n_steps:
            self._cached, self._cached_step = super().get_metrics(trainer, pl_module), step
        return self._cached


class RandomStateCheckpoint(L.Callback):
    """Stores torch's random state (CPU and CUDA generators) in every checkpoint and restores it on resume.

    Lightning seeds a run once, at its start; a resumed run would otherwise draw dropout masks
    (and any other ``torch.rand`` of the model) from a fresh stream. The data order and the crops
    have streams of their own, keyed by epoch (``DistributedSampler``, ``BatchAugment.set_epoch``).
    The states are uint8 tensors, so the checkpoint still loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["cpu"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class InterruptCheckpoint(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` when training is stopped by SIGTERM or Ctrl-C.

    Lightning turns both into an exception after the current batch (``SIGTERMException``,
    ``KeyboardInterrupt``) and hands it to ``on_exception``; the checkpoint is written there, so
    ``ckpt_path=last`` continues from the interrupted step instead of the last finished epoch.
    Other exceptions (a crash, a NaN loss) write nothing: their state is not worth resuming from.

    Args:
        dirpath: the directory of the run's ``last.ckpt`` (the last-epoch ``ModelCheckpoint``'s).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        # Every rank joins; rank 0 writes (atomically: AtomicCheckpointIO). A full checkpoint, for resuming.
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            log.warning(
                "%s at epoch %d, step %d: saved %s; resume with ckpt_path=last in the same run directory",
                type(exception).__name__, trainer.current_epoch, trainer.global_step, self.path,
            )


def ema_decay(num_averaged: int, decay: float, warmup_gamma: float = 1.0, warmup_power: float = 0.75) -> float:
    """The EMA decay for the update after ``num_averaged`` earlier ones: timm's ``ModelEmaV3`` warm-up,
    ``min(decay, 1 - (1 + n / gamma) ** -power)``.

    A fixed decay of 0.999 keeps ``0.999 ** n`` of the first weights in the average: 93 % after 70
    steps, so a short run validated (and tested) what was still nearly its random initialisation. The
    warm-up averages over about the last ``n / 4`` steps early on (power 3/4, timm's choice for
    short runs) and reaches ``decay`` after ``(1 - decay) ** (-1 / power)`` steps: 10,000 for 0.999.
    """
    return min(decay, 1.0 - (1.0 + num_averaged / warmup_gamma) ** -warmup_power)


class WarmupEMA(WeightAveraging):
    """Exponential moving average of the weights (and buffers) with a warm-up of the decay.

    Lightning's ``WeightAveraging`` does the rest: validation, checkpoints and so the test use the
    averaged weights; the raw ones are kept in the checkpoint (``current_model_state``) for resuming.

    Args:
        decay: the decay once warmed up, in [0, 1).
        warmup: warm the decay up (:func:`ema_decay`); False: ``decay`` from the first update.
        warmup_gamma, warmup_power: :func:`ema_decay`'s.
        update_every_n_steps: optimizer steps between two updates of the average.
    """

    def __init__(self, decay: float = 0.9998, warmup: bool = True, warmup_gamma: float = 1.0,
                 warmup_power: float = 0.75, update_every_n_steps: int = 1) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay!r} must be a number in [0, 1)")
        if isinstance(update_every_n_steps, bool) or not isinstance(update_every_n_steps, int) \
                or update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps={update_every_n_steps!r} must be a positive integer")
        if not warmup_gamma > 0 or not warmup_power > 0:
            raise ValueError(f"warmup_gamma={warmup_gamma!r} and warmup_power={warmup_power!r} must be > 0")
        self.decay, self.warmup = float(decay), warmup
        self.warmup_gamma, self.warmup_power = warmup_gamma, warmup_power
        self.update_every_n_steps = update_every_n_steps
        super().__init__(use_buffers=True, multi_avg_fn=self._average)

    def decay_at(self, num_averaged: int) -> float:
        if not self.warmup:
            return self.decay
        return ema_decay(num_averaged, self.decay, self.warmup_gamma, self.warmup_power)

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel copies the weights at its first update (num_averaged 0) and calls this after,
        # once per group of tensors of one device and dtype.
        if not averaged[0].is_floating_point():  # batch norm's num_batches_tracked: a count, not averaged
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(int(num_averaged)))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0
