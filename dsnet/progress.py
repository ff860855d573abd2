"""Progress for people: the Rich bar on a terminal, plain log lines everywhere else.

The Rich bar redraws one line in place, which only a terminal can show: under ``nohup``, SLURM, CI
or ``| tee`` a run printed its model table, then nothing until the last epoch. :func:`progress_bar`
(the ``callbacks.progress_bar`` config) picks the bar when stdout is a terminal and
:class:`ProgressLog` otherwise: one line per epoch, and one every ``every_n_steps`` steps within
long epochs, through Python logging, so the lines also land in the run's ``train.log``::

    epoch 1/5 | train loss 0.6123 acc 0.7731 | val acc 0.8412 | 41.9 s | 1313 img/s
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from dsnet.callbacks import ThrottledRichProgressBar

log = logging.getLogger(__name__)

MODES = ("auto", "rich", "log")


def progress_bar(mode: str = "auto", every_n_steps: int = 100, metrics_every_n_steps: int = 50,
                 refresh_rate: int = 4) -> ProgressBar:
    """The progress callback for ``mode``: ``rich``, ``log``, or ``auto`` (rich on a terminal).

    Args:
        mode: ``auto`` looks at ``sys.stdout.isatty()``.
        every_n_steps: :class:`ProgressLog`'s step lines; 0 logs epochs only.
        metrics_every_n_steps, refresh_rate: :class:`~dsnet.callbacks.ThrottledRichProgressBar`'s.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {', '.join(MODES)}")
    if mode == "rich" or (mode == "auto" and sys.stdout.isatty()):
        return ThrottledRichProgressBar(metrics_every_n_steps=metrics_every_n_steps, refresh_rate=refresh_rate)
    return ProgressLog(every_n_steps=every_n_steps)


class ProgressLog(ProgressBar):
    """Logs one line per training epoch, and one every ``every_n_steps`` optimizer steps within it.

    A ``ProgressBar`` to Lightning, so it takes the place of its default bar. The epoch line needs
    the epoch's train metrics, which ``ClassifierModule.on_train_epoch_end`` logs *after* every
    callback's hook of that name has run; so it is written at the next point where they are all in
    ``trainer.callback_metrics``: the next epoch's start, or the end of training.

    Args:
        every_n_steps: steps between two step lines (0: no step lines).
    """

    def __init__(self, every_n_steps: int = 100) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 0 (0: epoch lines only)")
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._pending: dict[str, Any] | None = None  # the finished epoch whose line is still to write
        self._start = self._train_end = 0.0
        self._images = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch: its line counts from here.
        self._start = self._train_end = time.perf_counter()
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_pending(trainer)
        self._start = self._train_end = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[0]) * trainer.world_size
        self._train_end = time.perf_counter()
        step = batch_idx + 1
        if self._enabled and trainer.is_global_zero and self.every_n_steps and step % self.every_n_steps == 0:
            total = trainer.num_training_batches
            log.info("epoch %d/%d step %d/%s | loss %s | %.0f img/s", trainer.current_epoch + 1, trainer.max_epochs,
                     step, total if total != float("inf") else "?", _fmt(trainer.callback_metrics.get("train/loss_step")),
                     self._images_per_s())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = {"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self._start,
                         "img_s": self._images_per_s()}

    def _images_per_s(self) -> float:
        """Training images per second of this epoch so far (its validation not counted)."""
        return self._images / max(self._train_end - self._start, 1e-9)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_pending(trainer)

    def _write_pending(self, trainer: L.Trainer) -> None:
        epoch, self._pending = self._pending, None
        if epoch is None or not self._enabled or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        log.info("epoch %d/%d | train loss %s acc %s | val acc %s | %.1f s | %.0f img/s", epoch["epoch"],
                 trainer.max_epochs, _fmt(metrics.get("train/loss_epoch")), _fmt(metrics.get("train/acc")),
                 _fmt(metrics.get("val/acc")), epoch["seconds"], epoch["img_s"])


def _fmt(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"
