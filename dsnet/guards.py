"""Guards against runs that cannot succeed: settings checked before anything is built, and a
callback that stops training at the first non-finite loss.

:func:`validate` catches, in milliseconds and with one line naming the key, the settings that would
otherwise fail late (a crash inside the scheduler after the data was loaded), silently train nothing
(``max_epochs=0``, ``lr=0``: exit 0 and a ``metrics.json`` of an untrained network) or hang (64 DDP
processes on a 2-core machine wait for each other forever).

:class:`NonFiniteLossGuard` raises at the first NaN/inf training loss, before its backward pass,
so the weights in memory and every checkpoint on disk stay finite; the message names the step and
the last checkpoint written before it, the one to resume from with a smaller learning rate.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import re
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException, \
    OverrideParseException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import Tensor

from dsnet.errors import InputError
from dsnet.results import NoSpaceError


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


class TrainInputError(InputError):
    """A training setting or resume checkpoint that cannot work."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says when and where to resume from."""


def validate(cfg: DictConfig) -> None:
    """Checks the training settings that Lightning and torch accept but cannot train with.

    Args:
        cfg: the composed ``configs/train.yaml``.

    Raises:
        TrainInputError: naming the key, the value and what is allowed.
    """
    _check_resolves(cfg)
    trainer = cfg.trainer
    max_epochs = trainer.get("max_epochs")
    if trainer.get("max_steps", -1) in (-1, None) and not _is_int(max_epochs, minimum=1):
        raise TrainInputError(f"trainer.max_epochs={max_epochs!r} must be an integer >= 1 (or set trainer.max_steps)")
    lr = cfg.optim.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise TrainInputError(f"optim.optimizer.lr={lr!r} must be a finite number > 0")
    _check_devices(trainer.get("accelerator", "auto"), trainer.get("devices", 1))
    precision = cfg.get("float32_matmul_precision", "highest")
    if precision not in MATMUL_PRECISIONS:
        raise TrainInputError(f"float32_matmul_precision={precision!r} must be one of {', '.join(MATMUL_PRECISIONS)}")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last", "best", "hpc", "registry"):  # Lightning resolves those names itself
        check_checkpoint(ckpt_path)
    check_loggers(cfg)
    check_writable(cfg)


def first_line(err: BaseException, default: str = "") -> str:
    """The first line of an exception's message (``default`` when it has none): errors from torch's
    unpickler, OmegaConf and file readers run over many lines, and ours are one line."""
    return (str(err).strip().splitlines() or [default])[0]


# A constructor raising one of these while Hydra instantiates its node is refusing the user's
# settings: a bad value (ours name key and value), a missing package for a chosen option
# (trainer.accelerator=tpu needs torch_xla; a _target_ that does not import), or Lightning's own check.
INSTANTIATION_USER_ERRORS = (ValueError, TypeError, ImportError, MisconfigurationException)


# errno values that say the file system refused a write, whatever the code was doing
FILE_SYSTEM_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR)


def user_error(err: BaseException) -> str | None:
    r"""The one-line message of an error that is the user's to fix, or None for anything else (a bug).

    The user's: our :class:`InputError`\s; a constructor refusing its arguments while Hydra
    instantiates a config node (:data:`INSTANTIATION_USER_ERRORS`), reported under the node's key;
    and Hydra's own errors about the command line (an unknown config group option, a key that is
    not in the config, bad override syntax).
    """
    if isinstance(err, (InputError, NoSpaceError)):
        return _worker_message(err) or first_line(err)
    if isinstance(err, OSError) and err.errno in FILE_SYSTEM_ERRNOS and err.filename:
        # The machine's, not the code's: a read-only or full file system, a missing permission, a
        # file where a directory should be. Hydra's own output files hit these before our checks run.
        return f"cannot write {err.filename}: {err.strerror}; give a writable directory (hydra.run.dir, paths.log_dir)"
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, INSTANTIATION_USER_ERRORS):
        return _instantiation_message(err)
    if isinstance(err, MissingConfigException) and err.options:
        # Hydra: "In 'train': Could not find 'data/nope'", then the options one per line.
        return f"{first_line(err)}; the options are {', '.join(sorted(err.options))}"
    if isinstance(err, (ConfigCompositionException, OverrideParseException)):
        return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return None


def _worker_message(err: BaseException) -> str | None:
    """The message of an error raised in a DataLoader worker: torch re-raises it in the main process as
    ``Caught <Error> in DataLoader worker process 0.`` + the worker's traceback, whose last line is
    ``<module>.<Error>: <message>``."""
    text = str(err).strip()
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    return re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])


def _instantiation_message(err: InstantiationException) -> str:
    """``model.width=-1 must be a positive number``: the constructor's message under its config key.

    Hydra's message ends with ``full_key: <key>``, the node it was instantiating. A message that
    starts with an argument (``width=-1 ...``) gets the key as a prefix, any other as a label
    (``model: features.0 (16 -> 32 channels): groups=3 must divide ...``).
    """
    cause = first_line(err.__cause__, type(err.__cause__).__name__)
    match = re.search(r"^full_key: (\S+)$", str(err), flags=re.MULTILINE)
    if match is None:
        return cause
    key = match.group(1)
    return f"{key}.{cause}" if re.match(r"[A-Za-z_]\w*=", cause) else f"{key}: {cause}"


def _check_resolves(cfg: DictConfig) -> None:
    """Every ``${...}`` of the config resolves; our resolvers check user input (e.g. an ImageNet class
    list naming classes that are not there) and their errors are the user's, not a traceback."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        # OmegaConf prefixes the resolver's own message with "ValueError raised while resolving ...".
        message = re.sub(r"^\w+ raised while resolving interpolation: ", "", first_line(err, type(err).__name__))
        raise TrainInputError(f"{err.full_key}: {message}") from None


def check_checkpoint(path, label: str | None = None) -> dict:
    """Refuses a checkpoint that is missing, damaged or holds more than tensors and plain values.

    Read as ``Trainer.fit`` will read it, ``torch.load(weights_only=True)``, but memory-mapped, so
    checking a large file costs little; a pickle that would run code is refused before anything runs.
    A file that does not load (cut short by a copy or a node that died mid-transfer, or not a
    checkpoint at all) is named with what to do: resume from the run's best checkpoint, or start again.

    Args:
        path: the checkpoint file.
        label: how the message names the setting (default ``ckpt_path='<path>'``).

    Returns:
        The loaded checkpoint (its tensors memory-mapped).

    Raises:
        TrainInputError: ``path`` is not a file, refused by the weights-only unpickler, or damaged.
    """
    file = Path(str(path)).expanduser()
    label = label or f"ckpt_path={str(path)!r}"
    if not file.is_file():
        raise TrainInputError(f"{label}: no such file")
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise _damaged(label, file, err) from None
        raise TrainInputError(
            f"{label}: refused by torch.load(weights_only=True), not loaded: "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001  (a damaged archive fails with RuntimeError, EOFError, ...)
        raise _damaged(label, file, err) from None


def _damaged(label: str, file: Path, err: BaseException) -> TrainInputError:
    """``<file> is damaged (...)``, and what to resume from instead: a best checkpoint beside it, if any."""
    others = sorted((p for p in file.parent.glob("best*.ckpt") if p != file), key=lambda p: p.stat().st_mtime_ns)
    instead = f"resume from ckpt_path={others[-1]}, or start again without ckpt_path" if others else \
        "start again without ckpt_path (no best checkpoint beside it)"
    reason = f"{type(err).__name__}: {first_line(err).split('. ')[0]}"  # torch's first sentence says it
    if file.stat().st_size == 0:
        reason = "an empty file"
    elif "mmap can only be used" in reason:  # torch's words for "not a zip archive", which checkpoints are
        reason = "not a zip archive"
    return TrainInputError(f"{label}: {file} is damaged, truncated or not a PyTorch checkpoint ({reason}); {instead}")


def check_writable(cfg: DictConfig) -> None:
    """The run directory, the checkpoint directories and every logger's directory can be written.

    Probed by creating (and removing) a temporary file in each, before anything is built: a read-only
    run directory, a missing permission or a file where a directory should be would otherwise fail
    at the end of the first epoch, or inside a logger, with a traceback.
    """
    if rank_zero_only.rank != 0:
        return
    dirs = {"paths.output_dir": cfg.paths.output_dir}
    for group, key in (("callbacks", "dirpath"), ("logger", "save_dir")):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and node.get(key):
                dirs[f"{group}.{name}.{key}"] = node[key]
    for key, directory in dirs.items():
        try:
            Path(directory).expanduser().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=Path(directory).expanduser()):
                pass
        except OSError as err:
            raise TrainInputError(f"{key}={str(directory)!r} cannot be written: {err.strerror or err}; "
                                  f"give a writable directory") from None


def check_loggers(cfg: DictConfig) -> None:
    """A Weights & Biases logger has credentials, or logs offline: found out before the run starts.

    Without either, ``wandb.init`` stops the run inside ``Trainer.fit`` with a ``UsageError`` (and
    waits for a key on a terminal). The credentials looked for are wandb's own: ``WANDB_API_KEY``,
    ``WANDB_IDENTITY_TOKEN_FILE``, or the ``.netrc`` entry ``wandb login`` writes for ``WANDB_BASE_URL``.
    """
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        if node.get("offline") or node.get("mode") in ("offline", "disabled") or \
                os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
            continue
        if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _wandb_netrc_key():
            continue
        raise TrainInputError(
            f"logger.{key}: no Weights & Biases credentials (WANDB_API_KEY is not set and `wandb login` has not "
            f"been run); run `wandb login`, or log locally with WANDB_MODE=offline (sync later with `wandb sync`)"
        )


def _wandb_netrc_key() -> str | None:
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:  # no wandb: Hydra's instantiate says so in one line
        return "no wandb"
    try:
        return read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    except Exception:  # noqa: BLE001  (a malformed .netrc: wandb.init will say what is wrong with it)
        return "unreadable .netrc"


def check_input_size(net, image_size: int) -> None:
    """``data.image_size`` must be at least the network's total stride (``Backbone.reduction``).

    Padding lets any input through (even 2 px ends as a 1x1 map), so a too-small input would train,
    just on feature maps that are mostly padding: refused instead, with the smallest size that works.
    """
    try:
        net.check_input_size(int(image_size))
    except ValueError as err:
        raise TrainInputError(f"data.{err}") from None


def check_data(datamodule: L.LightningDataModule, stage: str | None) -> None:
    """Reads the data a run needs before anything trains: a missing, empty or malformed data
    directory, or a class list naming classes that are not there, fails here in one line instead of
    inside ``Trainer.fit``. The splits stay loaded, so fit does not read them twice.

    Args:
        datamodule: the run's data module.
        stage: the splits to read, as ``LightningDataModule.setup`` takes them (None: all three).
    """
    try:
        if rank_zero_only.rank == 0:  # as Lightning does: one process downloads, the others wait for fit
            datamodule.prepare_data()
        datamodule.setup(stage)
    except (OSError, ValueError) as err:
        raise TrainInputError(f"data ({type(datamodule).__name__}): {first_line(err, type(err).__name__)}") from err


def _check_devices(accelerator: str, devices) -> None:
    """``trainer.devices`` must not ask for more devices than this machine has."""
    if not _is_int(devices, minimum=1):
        return  # "auto", -1 and lists are Lightning's to check
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        available, what = torch.cuda.device_count(), "GPUs"
    elif accelerator in ("cpu", "auto"):
        # One process per device: more processes than cores only time-share them, and far more
        # wait on each other's start-up until the DDP rendezvous times out.
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        what = "CPU cores"
    else:
        return
    if devices > available:
        raise TrainInputError(
            f"trainer.devices={devices} but this machine has {available} {what} "
            f"(trainer.accelerator={accelerator}); use at most {available}"
        )


def _is_int(value, *, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


class NonFiniteLossGuard(L.Callback):
    """Stops training with :class:`NonFiniteLossError` when the training loss is NaN or infinite.

    Checked before the backward pass, so the bad step never reaches the weights. Reading the loss
    waits for the device (one sync per check): ``every_n_steps`` trades detection delay for that.

    Args:
        every_n_steps: check the loss of every n-th optimizer step (1 = every step).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if not _is_int(every_n_steps, minimum=1):
            raise ValueError(f"every_n_steps={every_n_steps!r} must be a positive integer")
        self.every_n_steps = every_n_steps

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or bool(torch.isfinite(loss.detach()).all()):
            return
        value = loss.detach().float().cpu()
        ckpt = last_checkpoint(trainer)
        resume = f"last good checkpoint: {ckpt} (resume with ckpt_path={ckpt} and a smaller lr)" if ckpt else \
            "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss is {value.item() if value.numel() == 1 else value.tolist()} at global step {step} "
            f"(epoch {trainer.current_epoch}); "
            f"stopped before the update; {resume}"
        )


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written checkpoint file of the trainer's ``ModelCheckpoint`` callbacks."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        paths += [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime_ns)) if existing else None
