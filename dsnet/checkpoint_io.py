"""Checkpoint files written atomically (a kill or a failure mid-save never leaves half a file), and
checked before a run resumes from or evaluates one (damaged, another network, a foreign run config).

Lightning's ``TorchCheckpointIO`` writes the serialised bytes straight into the target path (an
fsspec "transaction" is a no-op on local files), so a process killed mid-write leaves a truncated
``last.ckpt`` in place of the good one. Here the bytes go to a temporary file in the same directory,
are fsync'ed, and only then ``os.replace`` puts them in place: readers see the old file or the new
one, never a mix. Same directory because ``os.replace`` is atomic only within one file system.
A full disk ends the save with :class:`dsnet.results.NoSpaceError` (one line naming the directory and
the file), the temporary file removed and the previous checkpoint in place.

Wiring: ``trainer.plugins`` (``configs/trainer/default.yaml``)::

    plugins:
      - _target_: dsnet.checkpoint_io.AtomicCheckpointIO
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dsnet.errors import InputError
from dsnet.guards import TrainInputError, check_checkpoint
from dsnet.results import raise_if_no_space


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is temp file + fsync + ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r}: not supported by {type(self).__name__}")
        target = Path(path)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, target)
        except BaseException as err:  # KeyboardInterrupt/SIGTERM too: never leave the temp file behind
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise_if_no_space(err, target)
            raise
        _fsync_dir(target.parent)  # the rename itself survives a power cut
        # A writer killed mid-save (SIGKILL, a node lost) left its temporary file: one checkpoint's
        # worth of disk each time. Only one process writes a given target, so any other is stale.
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- resuming and evaluating someone's checkpoint --------------------------------------------------

NET_PREFIX = "net."  # ClassifierModule stores the network as self.net
MODEL_TARGET_PREFIX = "dsnet."  # what a run's saved config may build: dsnet's own model factories


def resume_path(cfg: DictConfig) -> Path | None:
    """The file ``Trainer.fit`` will resume from, when it is one we can check before the run.

    ``last`` is the last-epoch checkpoint of this run directory (``callbacks.last_checkpoint``'s
    directory, else ``<run_dir>/checkpoints``); absent, Lightning starts from scratch, which is what
    ``ckpt_path=last`` on a new run directory means. ``best``, ``hpc`` and ``registry`` are Lightning's.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "best", "hpc", "registry"):
        return None
    if ckpt_path != "last":
        return Path(str(ckpt_path)).expanduser()
    last_cb = (cfg.get("callbacks") or {}).get("last_checkpoint")
    directory = last_cb.dirpath if isinstance(last_cb, DictConfig) and last_cb.get("dirpath") else \
        Path(cfg.paths.output_dir) / "checkpoints"
    last = Path(str(directory)) / "last.ckpt"
    return last if last.exists() else None


def check_resume(cfg: DictConfig, net: nn.Module) -> None:
    """The resume checkpoint loads (not damaged, not code) and holds this run's network.

    Checked after the network is built and before ``Trainer.fit``, so ``load_state_dict`` never sees
    a checkpoint of another network: the message names the settings that differ, from the
    checkpoint's run config (``<run_dir>/config.yaml``), else the first weights that do not fit.

    Raises:
        TrainInputError: one line naming the file and what is wrong with it.
    """
    path = resume_path(cfg)
    if path is None:
        return
    label = f"ckpt_path={cfg.ckpt_path}"
    checkpoint = check_checkpoint(path, label)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise TrainInputError(f"{label}: {path} is not a Lightning checkpoint (no state_dict); start again without it")
    theirs = {k.removeprefix(NET_PREFIX): v for k, v in state.items() if k.startswith(NET_PREFIX)}
    own = net.state_dict()
    if theirs.keys() == own.keys() and all(theirs[k].shape == v.shape for k, v in own.items()):
        return
    settings = differing_settings(cfg, run_config(path))
    what = "; ".join(settings) if settings else weight_mismatch(theirs, own)
    raise TrainInputError(f"{label}: {path} holds another network than this run's: {what}; "
                          f"resume with the checkpoint's settings, or start a new run directory")


def run_config(ckpt: Path) -> dict | None:
    """The resolved config saved by the run that wrote ``ckpt`` (``<run_dir>/config.yaml``), if readable."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def differing_settings(cfg: DictConfig, saved: dict | None) -> list[str]:
    """``model.width: checkpoint 0.25, this run 0.5`` for each model (and data shape) setting that differs."""
    if saved is None:
        return []
    current = OmegaConf.to_container(cfg, resolve=True)
    keys = [("model", k) for k in sorted(set(current.get("model", {})) | set(saved.get("model") or {}))]
    keys += [("data", k) for k in ("num_classes", "in_chans")]
    lines = []
    for group, key in keys:
        theirs, ours = (saved.get(group) or {}).get(key), (current.get(group) or {}).get(key)
        if theirs != ours and key != "_target_":
            lines.append(f"{group}.{key}: checkpoint {theirs}, this run {ours}")
    return lines


def weight_mismatch(theirs: dict, own: dict) -> str:
    """The first weights that differ in name or shape, when no saved config says why."""
    missing = [k for k in own if k not in theirs]
    misshapen = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in theirs and theirs[k].shape != v.shape]
    parts = [f"{len(missing)} weights missing ({', '.join(missing[:2])})"] if missing else []
    parts += [f"shapes differ (checkpoint vs this run): {', '.join(misshapen[:2])}"] if misshapen else []
    return "; ".join(parts) or "its weights do not fit this network"


def check_model_target(model_cfg: DictConfig, source: Path) -> None:
    """A saved run config builds one of dsnet's networks: its ``model._target_`` must be a ``dsnet.`` name.

    ``eval.py`` instantiates the model node of the ``config.yaml`` beside a checkpoint; a file from
    elsewhere naming ``os.system`` (or any other callable) there would be run.
    """
    target = str(model_cfg.get("_target_", ""))
    if not target.startswith(MODEL_TARGET_PREFIX):
        raise InputError(f"{source}: model._target_={target!r} is not a dsnet network; refused, nothing built "
                              f"(a run config may only name {MODEL_TARGET_PREFIX}* factories)")


def ignored_model_overrides(train_model_cfg: DictConfig) -> str | None:
    """One line naming the ``model`` settings given to ``eval.py`` that the checkpoint overrules.

    Read from Hydra's record of the command line; None when there were none (or no Hydra, in tests).
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig is not set: called without Hydra's entry point
        return None
    given = [o for o in overrides if re.match(r"[+~]*model([.=]|$)", o)]
    if not given:
        return None
    shown = ", ".join(f"model.{k}={v}" for k, v in train_model_cfg.items() if k != "_target_")
    return f"ignored {' '.join(given)}: the checkpoint decides the network ({shown})"
