"""The evaluation task: what one network costs and how fast it runs, plus, given a checkpoint, how
accurate it is; all of it into ``results.json``.

``eval.py`` is the Hydra entry point around :func:`evaluate`; tests call :func:`evaluate` directly
with a composed ``configs/eval.yaml``. Two modes:

- **cost only** (``ckpt_path: null``): the network of the eval config's ``model`` group, with random
  weights; the data set is never built, only its shape (``data.num_classes/in_chans/image_size``) is read.
- **checkpoint**: *what* the network is comes from the training run that wrote the checkpoint (its
  ``config.yaml``, else ``.hydra/config.yaml``, in ``<run_dir>``; checkpoints live in
  ``<run_dir>/checkpoints/``), never from the eval command's ``model`` group. *How* it is evaluated
  comes from the eval command: ``data`` (whose shape must match the trained network), ``module``,
  ``trainer`` and ``latency``. The test split runs through ``Trainer.test`` with the same
  ``ClassifierModule`` metrics training used, so top-1 equals the training run's ``test/acc``.

Checkpoints are read with ``torch.load(weights_only=True)``. Their ``state_dict`` holds the
LightningModule's keys, ``net.<layer>``; with ``callbacks=ema`` Lightning's ``EMAWeightAveraging``
puts the averaged weights there (the raw ones go to ``current_model_state``), so ``state_dict`` is
the EMA model whenever there is one: the weights training validated and chose its best checkpoint by.
(``task.train``'s own test after fitting gets the raw weights instead: the still-attached EMA callback
restores ``current_model_state`` when ``Trainer.test`` loads the checkpoint. With EMA on, its
``test/acc`` is the raw model's and differs from this one's.)
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from dsnet.checkpoint_io import check_model_target, ignored_model_overrides
from dsnet.errors import InputError
from dsnet.guards import first_line
from dsnet.latency import time_network
from dsnet.models.cost import model_cost
from dsnet.results import ResultsRecord, write_results

log = logging.getLogger(__name__)

NET_PREFIX = "net."  # ClassifierModule stores the network as self.net
TRAIN_CONFIGS = ("config.yaml", ".hydra/config.yaml")  # resolved (task.train) first, then Hydra's own
SHAPE_KEYS = ("num_classes", "in_chans", "image_size")  # what the data must share with the trained net


class EvalInputError(InputError):
    """A checkpoint or configuration that cannot be evaluated; the message says which and why."""


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Counts, times and (with ``cfg.ckpt_path``) tests one network; writes ``results.json``.

    Args:
        cfg: the composed ``configs/eval.yaml``; ``cfg.paths.output_dir`` is the run directory.

    Returns:
        ``(results, objects)``: the ``results.json`` contents, and the built ``cfg``, ``net``,
        ``model_cfg`` (the config the network was built from) and, with a checkpoint,
        ``train_cfg``, ``datamodule``, ``module`` and ``trainer``.

    Raises:
        EvalInputError: the checkpoint is missing, unreadable, not a Lightning checkpoint, has no
            training config beside it, does not fit the network, or the data's shape differs from
            the trained network's. Nothing is written then.
    """
    torch.manual_seed(cfg.seed)  # the random weights of a cost-only run
    if cfg.get("ckpt_path") is None:
        net, model_cfg, train_cfg, ckpt = instantiate(cfg.model), cfg.model, None, None
    else:
        net, train_cfg, ckpt = load_trained_net(cfg.ckpt_path, cfg.data)
        model_cfg = train_cfg.model
        if note := ignored_model_overrides(model_cfg):  # the user asked for a network; say it was not this one
            log.warning(note)
    objects: dict[str, Any] = dict(cfg=cfg, net=net, model_cfg=model_cfg, train_cfg=train_cfg)
    try:
        net.check_input_size(int(cfg.data.image_size))
    except ValueError as err:
        raise EvalInputError(f"data.{err}") from None

    input_size = (int(cfg.data.in_chans), int(cfg.data.image_size), int(cfg.data.image_size))
    # Latency first: it checks its settings, so a bad one fails before anything slow. On a copy:
    # measure_latency leaves the net on its device and in its memory format, and the counts and the
    # test below must see the weights exactly as loaded.
    try:
        latency = time_network(copy.deepcopy(net), input_size, **OmegaConf.to_container(cfg.latency))
    except ValueError as err:  # the settings' checks (and RuntimeUnavailableError) name the key without its group
        raise EvalInputError(f"latency.{first_line(err)}") from None
    cost = model_cost(net, input_size)
    accuracy = {"top1": None, "top5": None}
    if ckpt is not None:
        accuracy, test_objects = measure_accuracy(cfg, net)
        objects.update(test_objects)

    run_dir = Path(cfg.paths.output_dir)
    record = ResultsRecord(
        **describe(model_cfg, cfg.data),
        # The trained network's seed; a cost-only run has random weights and no seed worth reporting.
        seed=None if train_cfg is None else train_cfg.get("seed"),
        hparams=trained_hparams(train_cfg),
        **cost,
        **accuracy,
        **timing(latency),
        ckpt_path=None if ckpt is None else str(ckpt),
        run_dir=str(run_dir.resolve()),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_results(run_dir / "results.json", record)
    log.info("results: %s", run_dir / "results.json")
    print_summary(record, latency)
    return record.to_dict(), objects


def trained_hparams(train_cfg: DictConfig | None) -> dict[str, Any] | None:
    """The training config's ``hparams`` node (experiment=converged: lr, trial count, grid), resolved."""
    if train_cfg is None or not train_cfg.get("hparams"):
        return None
    return OmegaConf.to_container(train_cfg.hparams, resolve=True)


def load_trained_net(ckpt_path: str, data_cfg: DictConfig) -> tuple[nn.Module, DictConfig, Path]:
    """The network of a training checkpoint, rebuilt from its run's config, with its weights.

    Returns:
        ``(net, train_cfg, ckpt)``: the loaded network, the training config and the absolute path.
    """
    ckpt = resolve_checkpoint(ckpt_path)
    state = read_net_state(ckpt)  # before anything is built: a bad file fails fast
    train_cfg, source = load_train_config(ckpt)
    check_data_shape(data_cfg, train_cfg, source)
    net = instantiate(train_cfg.model)
    load_net_state(net, state, ckpt)
    log.info("network rebuilt from %s, weights from %s", source, ckpt)
    return net, train_cfg, ckpt


def describe(model_cfg: DictConfig, data_cfg: DictConfig) -> dict[str, Any]:
    """The results keys that say which network on which data."""
    return dict(
        arch=model_cfg.arch,
        conv=model_cfg.conv,
        width=float(model_cfg.width),
        groups=model_cfg.get("groups") if model_cfg.conv == "group" else None,
        image_size=int(data_cfg.image_size),
        in_chans=int(data_cfg.in_chans),
        num_classes=int(data_cfg.num_classes),
        dataset=get_class(data_cfg._target_).name,  # a class attribute: no data set is built for it
    )


def timing(latency: dict[str, Any]) -> dict[str, Any]:
    """The results keys of a :func:`dsnet.latency.measure_latency` measurement."""
    keys = ("latency_ms_p50", "latency_ms_p90", "latency_ms_iqr", "throughput_img_s", "device",
            "device_name", "precision", "channels_last", "deploy", "num_threads", "torch", "git_rev", "runtime",
            "runtime_version", "allocator", "contention_flagged", "latency_ms_p50_median", "latency_ms_p50_low",
            "latency_ms_p50_high", "latency_ms_p50_coverage")
    return dict(
        {key: latency[key] for key in keys},
        batch_size=latency["throughput_batch_size"],  # results.json: batch_size is throughput's
        latency_batch_size=latency["batch_size"],
        cpu_contention=latency["cpu_busy_other"],
    )


# --- checkpoint -----------------------------------------------------------------------------------

def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` made absolute (relative to the working directory, which Hydra leaves unchanged)."""
    ckpt = Path(str(path)).expanduser().resolve()
    if not ckpt.exists():
        raise EvalInputError(f"ckpt_path={str(path)!r}: no such file ({ckpt})")
    if not ckpt.is_file():
        raise EvalInputError(
            f"ckpt_path={str(path)!r}: not a file ({ckpt}); give a .ckpt inside <run_dir>/checkpoints/"
        )
    return ckpt


def read_net_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The network's weights in a Lightning checkpoint: its ``net.*`` keys, prefix removed."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        # Any exception: on a garbage file the weights-only unpickler fails with whatever its stack
        # machine hits (IndexError, KeyError, UnpicklingError, ...), a truncated zip with RuntimeError.
        # Its messages run over many lines; the first one says it.
        raise EvalInputError(
            f"{ckpt}: not a readable PyTorch checkpoint (truncated or another format?): "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise EvalInputError(f"{ckpt}: not a Lightning checkpoint: expected a dict with a 'state_dict', found {found}")
    state = checkpoint["state_dict"]
    # Other keys are the LightningModule's own state (e.g. the persistent val_acc_best metric).
    net_state = {key.removeprefix(NET_PREFIX): v for key, v in state.items() if key.startswith(NET_PREFIX)}
    if not net_state:
        raise EvalInputError(
            f"{ckpt}: no network weights (keys {NET_PREFIX}*) in its state_dict; found "
            f"{_first_few(sorted(map(str, state)))}; was it written by dsnet's ClassifierModule?"
        )
    return net_state


def load_net_state(net: nn.Module, state: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Loads ``state`` into ``net`` strictly; any missing, unexpected or misshapen key is an error."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(v.shape)}"
                 for k, v in own.items() if k in state and getattr(state[k], "shape", None) != v.shape]
    problems = [f"{name} {_first_few(keys)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch (checkpoint vs model)", misshapen))
                if keys]
    if problems:
        raise EvalInputError(
            f"{ckpt}: does not fit the {type(net).__name__} of its training config: " + "; ".join(problems)
        )
    net.load_state_dict(state, strict=True)


def _first_few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
    return f"({len(keys)}): {shown}"


def load_train_config(ckpt: Path) -> tuple[DictConfig, Path]:
    """The config of the training run that wrote ``ckpt``, and the file it was read from."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    candidates = [run_dir / name for name in TRAIN_CONFIGS]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        raise EvalInputError(
            f"{ckpt}: no training config found to rebuild its network; looked for "
            + " and ".join(map(str, candidates))
        )
    try:
        train_cfg = OmegaConf.load(source)
    except Exception as err:  # noqa: BLE001  (yaml's and OmegaConf's errors on a garbled file)
        raise EvalInputError(f"{source}: not readable YAML ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(train_cfg, DictConfig) or "model" not in train_cfg or "data" not in train_cfg:
        raise EvalInputError(f"{source}: not a dsnet training config (needs 'model' and 'data' sections)")
    check_model_target(train_cfg.model, source)
    return train_cfg, source


def check_data_shape(data_cfg: DictConfig, train_cfg: DictConfig, source: Path) -> None:
    """The eval data must give the trained network the images and classes it was built for."""
    given = {key: data_cfg[key] for key in SHAPE_KEYS}
    trained = {key: train_cfg.data[key] for key in SHAPE_KEYS}
    if given == trained:
        return
    fmt = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
    ours, theirs = (cfg._target_.rsplit(".", 1)[-1] for cfg in (data_cfg, train_cfg.data))
    if ours == theirs:
        fix = "e.g. " + " ".join(f"data.{k}={trained[k]}" for k in SHAPE_KEYS if given[k] != trained[k])
    else:
        fix = f"the training run used {theirs}: pass its data group and overrides"
    raise EvalInputError(
        f"data ({ours}) has {fmt(given)}, but the checkpoint's network was trained with "
        f"{fmt(trained)} ({source}); evaluate with matching data: {fix}"
    )


# --- measurements ----------------------------------------------------------------------------------

def measure_accuracy(cfg: DictConfig, net: nn.Module) -> tuple[dict[str, float], dict[str, Any]]:
    """Top-1 and top-5 on the test split via ``Trainer.test``: training's own metric code path."""
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, net=net)
    # Nothing to save or log: the numbers go to results.json.
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = trainer.callback_metrics
    # float(tensor), as task.train writes metrics.json: the two numbers compare exactly.
    objects = dict(datamodule=datamodule, module=module, trainer=trainer)
    return {"top1": float(metrics["test/acc"]), "top5": float(metrics["test/acc5"])}, objects


# --- summary ---------------------------------------------------------------------------------------

def print_summary(record: ResultsRecord, latency: dict[str, Any]) -> None:
    """A short table of what was measured, for people (``results.json`` is for programs).

    Args:
        record: what goes to results.json.
        latency: :func:`time_network`'s result, for the per-round medians.
    """
    r = record
    table = Table(title=f"{r.arch} conv={r.conv} width={r.width:g} on {r.dataset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    pct = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    rows = [
        ("input", f"{r.in_chans}x{r.image_size}x{r.image_size}, {r.num_classes} classes"),
        ("params", f"{r.params / 1e6:.3f} M"),
        ("MACs (forward / train step)", f"{r.macs / 1e6:.2f} M / {r.train_macs / 1e6:.2f} M"),
        ("top-1 / top-5", f"{pct(r.top1)} / {pct(r.top5)}"),
        (f"latency p50 / p90 (batch {r.latency_batch_size})",
         f"{r.latency_ms_p50:.3f} / {r.latency_ms_p90:.3f} ms (IQR {r.latency_ms_iqr:.3f})"),
        ("latency p50 per round", " ".join(f"{t:.2f}" for t in latency["round_p50s_ms"]) + " ms"),
        ("p50 median of rounds [CI]", f"{r.latency_ms_p50_median:.2f} [{r.latency_ms_p50_low:.2f}, "
         f"{r.latency_ms_p50_high:.2f}] ms ({100 * r.latency_ms_p50_coverage:.1f} %)"),
        ("other load while timing", "-" if r.cpu_contention is None
         else f"{100 * r.cpu_contention:.0f} % of {os.cpu_count()} CPUs" + (" (flagged)" * r.contention_flagged)),
        (f"throughput (batch {r.batch_size})", f"{r.throughput_img_s:.1f} img/s"),
        ("runtime", f"{r.runtime} {r.runtime_version}, allocator {r.allocator}"),
        ("device", f"{r.device_name}, threads={r.num_threads}, {r.precision}"
         + (", channels_last" if r.channels_last else "")),
        ("network timed", "deploy form (batch norm folded)" if r.deploy else "training graph"),
        ("results", f"{r.run_dir}/results.json"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
