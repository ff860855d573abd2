"""The training task: config in, trained and tested model plus ``metrics.json`` out.

``train.py`` is the Hydra entry point around :func:`train`; tests call :func:`train` directly with
a composed config. Every object is built from its config group with ``hydra.utils.instantiate``:
``data`` -> LightningDataModule, ``model`` -> network, ``module`` -> ClassifierModule around it,
``callbacks``/``logger`` -> lists, ``trainer`` -> Trainer.

Outputs, all in ``cfg.paths.output_dir`` (the run directory) and written by rank 0 only:
``checkpoints/`` (ModelCheckpoint), ``metrics.json`` (atomically), ``config.yaml`` (the resolved
config; Hydra keeps the unresolved one in ``.hydra/``) and, when the run fails, ``error.txt``.

A failed run still raises. In a multirun that is what we want: Hydra's launcher stores each job's
exception and runs the remaining jobs (``hydra.core.utils.run_job``); its sweeper re-raises the first
one after the batch, so ``train.py -m`` exits non-zero, with every job's outcome on disk.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dsnet.callbacks import EpochTimer
from dsnet.checkpoint_io import check_resume
from dsnet.config import in_multirun
from dsnet.guards import check_data, check_input_size, first_line, user_error, validate
from dsnet.models.cost import model_cost
from dsnet.results import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

# metrics.json: these logged metrics, then the run's identity and cost (see train()).
LOGGED_KEYS = ("test/acc", "test/acc5", "test/loss", "val/acc_best")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fits ``cfg.module`` on ``cfg.data``, tests the best checkpoint, writes ``metrics.json``.

    Args:
        cfg: the composed ``configs/train.yaml``; ``cfg.paths.output_dir`` is the run directory.

    Returns:
        ``(metrics, objects)``: the ``metrics.json`` contents, and the built ``cfg``, ``datamodule``,
        ``net``, ``module``, ``trainer``, ``callbacks`` and ``loggers``.

    Raises:
        Whatever the run raised, after writing its traceback to ``<run_dir>/error.txt``, so that
        a sweep leaves a record in each failed job's directory.
    """
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_finished", True) and (metrics := finished_metrics(cfg, run_dir)) is not None:
        log.info("skipped: %s already holds this run, finished (metrics.json); test/acc %s",
                 run_dir, metrics.get("test/acc"))
        return metrics, {"cfg": cfg}
    try:
        return _train(cfg, run_dir)
    except SIGTERMException as err:
        # Lightning stops on SIGTERM with a SystemExit of status 0, which would tell a scheduler the
        # job succeeded; InterruptCheckpoint has saved last.ckpt. Exit as killed by SIGTERM does.
        raise SystemExit(128 + signal.SIGTERM) from err
    except Exception as err:
        if rank_zero_only.rank == 0:
            with contextlib.suppress(OSError):  # a full or read-only disk: the terminal still gets the error
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run_dir / "error.txt", traceback.format_exc())
            if (message := user_error(err)) is None:
                log.exception("training failed; traceback in %s", run_dir / "error.txt")
            elif in_multirun():  # the sweep goes on with the next job: say now which one failed
                log.error("this job's settings are refused: %s", message)
        # A user error alone becomes one line on the terminal (dsnet.cli.run).
        raise


def _train(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    validate(cfg)  # settings that would fail late, train nothing or hang: refused before anything is built
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in config.yaml and the summary
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    check_input_size(net, cfg.data.image_size)
    check_resume(cfg, net)  # a damaged checkpoint, or another network's, before load_state_dict
    check_data(datamodule, None if cfg.get("test", True) else "fit")
    module = instantiate(cfg.module, net=net)
    callbacks = instantiate_group(cfg, "callbacks")
    loggers = instantiate_group(cfg, "logger")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    cost = model_cost(net, _input_size(cfg.data))
    cost = {key: cost[key] for key in ("params", "macs")}  # the summary and metrics.json report these two
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info(_summary(cfg, cost))
    for logger in trainer.loggers:
        logger.log_hyperparams({**cost, "cfg": OmegaConf.to_container(cfg, resolve=True)})

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    fit_metrics = dict(trainer.callback_metrics)  # test() replaces callback_metrics
    # A resume of a finished fit (killed while testing) runs no epoch and logs nothing: its state has them.
    fit_metrics.setdefault("epochs", trainer.current_epoch)
    if "val/acc_best" not in fit_metrics and torch.isfinite(best := module.val_acc_best.max_value):
        fit_metrics["val/acc_best"] = best
    if cfg.get("test", True):
        _sync_csv_columns(trainer.loggers)
        load_best_weights(module, _best_checkpoint(trainer))
        trainer.test(module, datamodule=datamodule, ckpt_path=None)

    logged = {**fit_metrics, **trainer.callback_metrics}
    metrics = {key: _number(logged.get(key)) for key in LOGGED_KEYS}
    metrics.update(
        cost,
        epochs=int(_number(logged.get("epochs")) or 0),
        **_fit_seconds(trainer, logged),
        arch=cfg.model.arch,
        conv=cfg.model.conv,
        width=float(cfg.model.width),
        image_size=int(cfg.data.image_size),
        dataset=getattr(datamodule, "name", type(datamodule).__name__),
        seed=cfg.seed,
    )
    if cfg.get("hparams"):  # a recipe's record of how its hyperparameters were chosen (experiment/converged.yaml)
        metrics.update({f"hparams/{k}": v for k, v in OmegaConf.to_container(cfg.hparams, resolve=True).items()})
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir / "metrics.json", metrics)
        log.info("metrics: %s", metrics)
    objects = dict(cfg=cfg, datamodule=datamodule, net=net, module=module, trainer=trainer,
                   callbacks=callbacks, loggers=loggers)
    return metrics, objects


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a finished run of this very config in ``run_dir``, else None.

    This is what lets an interrupted multirun be re-run into the same ``hydra.sweep.dir``: jobs that
    finished are skipped, the others run (and with ``ckpt_path=last`` continue from their last
    checkpoint). "This very config" is the resolved config saved beside the metrics, ``ckpt_path``
    aside; a run directory holding another config's result (say, fewer epochs) trains again.
    """
    metrics_file, config_file = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics_file.is_file() and config_file.is_file()):
        return None
    # ckpt_path says where to resume from, not what is trained; tuned is a lookup table of per-conv
    # settings whose entry in use is resolved into optim and hparams, which are compared.
    ignored = ("ckpt_path", "tuned")
    try:  # empty or garbled (a copy cut short, an editor's crash): not a finished run, so train again
        saved, metrics = yaml.safe_load(config_file.read_text()), json.loads(metrics_file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        log.warning("%s: cannot read its config.yaml/metrics.json (%s); training again", run_dir, first_line(err))
        return None
    current = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(saved, dict) or not isinstance(metrics, dict) or \
            {k: v for k, v in saved.items() if k not in ignored} != {k: v for k, v in current.items() if k not in ignored}:
        return None
    return metrics


def _input_size(data_cfg: DictConfig) -> tuple[int, int, int]:
    return int(data_cfg.in_chans), int(data_cfg.image_size), int(data_cfg.image_size)


def _summary(cfg: DictConfig, cost: dict[str, int]) -> str:
    m, d = cfg.model, cfg.data
    return (
        f"model {m.arch} conv={m.conv} width={m.width} | input {d.in_chans}x{d.image_size}x{d.image_size} "
        f"| {cost['params'] / 1e6:.3f} M params | {cost['macs'] / 1e6:.2f} M MACs per image | seed {cfg.seed}"
    )


def instantiate_group(cfg: DictConfig, group: str) -> list:
    """One object per entry of ``cfg[group]`` (callbacks, logger); an entry set to null is skipped,
    which is how one is switched off: ``callbacks.lr_monitor=null``.

    Raises:
        ValueError: an entry is neither null nor a config with a ``_target_``.
    """
    objects = []
    for key, node in (cfg.get(group) or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{group}.{key} must be a config with a _target_, or null to switch it off; got {node!r}")
        objects.append(instantiate(node))
    return objects


def load_best_weights(module: L.LightningModule, ckpt_path: str | None) -> None:
    """Loads the best checkpoint's ``state_dict`` into ``module`` for the test (nothing when None).

    Not ``trainer.test(ckpt_path=...)``: with weight averaging on (``callbacks=ema``), Lightning's
    ``EMAWeightAveraging`` reacts to that load by putting the raw weights back, so the test would
    measure the raw network while the checkpoint (and ``eval.py``) hold the averaged one.
    """
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=True)


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint, or None (test the weights in memory) when there is none."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    if not path:
        log.warning("no best checkpoint was saved (fast_dev_run or no validation): testing the final weights")
        return None
    return path


def _sync_csv_columns(loggers: list) -> None:
    """Tells each CSVLogger which columns its metrics.csv already has.

    When DDP ran the fit in spawned processes, this process's CSVLogger never saw the columns they
    wrote; Lightning would then rewrite the file under the test columns only and fail on the rows.
    """
    if rank_zero_only.rank != 0:  # other ranks hold no CSV writer
        return
    for logger in loggers:
        if isinstance(logger, CSVLogger) and os.path.isfile(logger.experiment.metrics_file_path):
            with open(logger.experiment.metrics_file_path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            logger.experiment.metrics_keys = sorted(set(logger.experiment.metrics_keys) | set(header))


def _fit_seconds(trainer: L.Trainer, logged: dict[str, Any]) -> dict[str, float | None]:
    """The fit's mean epoch time and its wall and CPU seconds over all its resumed segments
    (:class:`EpochTimer`): the callback's own totals where this process ran the fit (they survive a
    resume of a finished fit, which runs and logs no epoch), else (spawned DDP) the last logged ones."""
    timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
    if timer is not None and timer.fit_wall_s > 0:
        return {"time_per_epoch_s": timer.epoch_s_mean, "wall_s": timer.fit_wall_s, "cpu_s": timer.fit_cpu_s}
    return {"time_per_epoch_s": _number(logged.get("time/epoch_s_mean")),
            "wall_s": _number(logged.get("time/fit_wall_s")), "cpu_s": _number(logged.get("time/fit_cpu_s"))}


def _number(value) -> float | None:
    """A logged metric (tensor or number) as a Python float; None when it was not logged."""
    return None if value is None else float(value)
