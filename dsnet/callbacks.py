"""Two small Lightning callbacks: epoch wall time, and a progress bar that reads metrics rarely."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class EpochTimer(L.Callback):
    """Logs the wall time of every training epoch as ``time/epoch_s`` (validation included).

    Also logs ``time/epoch_s_mean`` (mean over the epochs of this fit) and ``epochs`` (epochs
    completed, resumed ones included). They are logged, not only kept here, so that they reach the
    main process's ``trainer.callback_metrics`` even when DDP ran the fit in spawned processes.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._times_s: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._times_s = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation (and checkpointing) before this hook.
        self._times_s.append(time.perf_counter() - self._start)
        pl_module.log_dict(
            {
                "time/epoch_s": self._times_s[-1],
                "time/epoch_s_mean": sum(self._times_s) / len(self._times_s),
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
