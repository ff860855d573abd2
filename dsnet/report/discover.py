"""Finds run directories and reads them into :class:`Run` s: train runs, eval runs, and the two joined.

A *run directory* is any directory holding ``.hydra/config.yaml``, ``metrics.json`` or
``results.json``:

* a **train run** has ``metrics.json`` (:mod:`dsnet.task`): accuracy (``test/acc``), params, MACs,
  the model and data it trained, epochs and time per epoch; its ``config.yaml`` (the resolved
  config) adds the group count, input channels, classes and the optimiser's settings. A train run
  is a result of its own: a sweep reports without an eval step.
* an **eval run** has ``results.json`` (:mod:`dsnet.results`): cost, speed and, given a checkpoint,
  accuracy. When its ``ckpt_path`` lies inside a train run, the two are one :class:`Run` (the eval's
  values win; top-1 falls back to training's ``test/acc`` when the eval has none); so are an eval of
  a checkpoint and the train run the eval's directory lies inside, when the checkpoint's is not read.

Every run directory that yields no :class:`Run` is listed with the reason (never dropped silently).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dsnet.results import RESULT_KEYS, ResultsRecord


class ReportInputError(ValueError):
    """The directories given to the report hold nothing it can report."""


_VERSION = re.compile(r"version_(\d+)$")
_NOT_CURVES = {"epoch", "step"}  # the index columns of Lightning's CSV, not metrics
# The per-epoch metrics the report reads: validation top-1 (learning curves) and the mean training
# loss (divergence).
CURVE_METRICS = ("val/acc", "train/loss_epoch")
_SKIP_DIRS = {"checkpoints", "wandb", "tensorboard", "csv", "__pycache__"}
# metrics.json keys a train run needs to stand on its own (written by dsnet.task since the report
# learnt to read train runs); older files without them only serve as an eval run's accuracy.
TRAIN_REQUIRED = {"arch": str, "conv": str, "dataset": str, "width": (int, float),
                  "image_size": int, "params": int, "macs": int}
TRAIN_OPTIONAL = ("seed", "epochs", "time_per_epoch_s", "wall_s", "cpu_s", "val/acc_best")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained or evaluated network: everything known about it as one flat mapping.

    ``values`` holds the results keys of :mod:`dsnet.results` (None or absent: unknown) plus, from
    a train run, ``epochs``, ``time_per_epoch_s``, ``val_acc_best``, ``lr``, ``weight_decay``,
    ``depthwise_weight_decay``, ``label_smoothing``, ``train_size`` (None: the whole split), ``train_batch_size`` and
    any ``hparams/*`` keys of its metrics.json. ``run_dir`` is the eval run's directory when
    there is one, else the train run's; ``train_dir`` the train run's, when known.
    """

    run_dir: Path
    values: dict[str, Any]
    record: ResultsRecord | None = None
    train_dir: Path | None = None
    top1_source: str = ""  # "results.json", "metrics.json" or "" when unknown
    # {metric: {epoch: value}} of CURVE_METRICS, from a tidy table; {} reads the train run's CSV logs
    curves: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def top1(self) -> float | None:
        return self.values.get("top1")

    @property
    def top5(self) -> float | None:
        return self.values.get("top5")

    @property
    def identity(self) -> Path:
        """The trained network this run stands for: seeds are counted once per identity."""
        return self.train_dir or self.run_dir

    def curve(self, metric: str = "val/acc") -> dict[int, float]:
        """``{epoch: value}`` of one of :data:`CURVE_METRICS`: the tidy table's, else read from
        the train run's CSV logs; {} without either."""
        if metric in self.curves:
            return self.curves[metric]
        return read_curve(self.train_dir, metric) if self.train_dir is not None and not self.curves else {}


def read_curves(train_dir: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {metric: value}}`` from a train run's CSV logs: per epoch (completed, from 1) the
    last value each metric logged in it; a resumed run's later ``version_N`` replaces what it repeats."""
    versions = sorted((int(m.group(1)), p) for p in (train_dir / "csv").glob("version_*")
                      if (m := _VERSION.search(p.name)) and (p / "metrics.csv").is_file())
    epochs: dict[int, dict[str, float]] = {}
    for _, path in versions:
        with (path / "metrics.csv").open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                logged = {k: float(v) for k, v in row.items() if v and k not in _NOT_CURVES}
                if not row.get("epoch") or not logged:
                    continue  # logged before the first epoch (the lr monitor at step 0)
                number = int(float(row["epoch"])) + 1
                if epochs and all(k.startswith("test/") for k in logged):
                    number = max(epochs)  # the test after fitting counts on past the last epoch
                epochs.setdefault(number, {}).update(logged)
    return epochs


def read_curve(run_dir: Path, metric: str = "val/acc") -> dict[int, float]:
    """``{epoch: value}`` of one end-of-epoch ``metric`` (:func:`read_curves`); {} without logs."""
    return {e: m[metric] for e, m in read_curves(run_dir).items() if metric in m}


def show_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it, for readable reports."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_run_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every run directory at or below ``dirs``, resolved, sorted, without duplicates."""
    found: set[Path] = set()
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            raise ReportInputError(f"not a directory: {root}")
        for here, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS)
            here = Path(here)
            if "results.json" in files or "metrics.json" in files or (
                    here / ".hydra" / "config.yaml").is_file():
                found.add(here.resolve())
    return sorted(found)


def read_train_accuracy(path: Path) -> tuple[float | None, float | None]:
    """``(test/acc, test/acc5)`` as fractions from a training ``metrics.json``; None: not logged."""
    metrics = _read_metrics(path)
    return metrics.get("test/acc"), metrics.get("test/acc5")


def _read_metrics(path: Path) -> dict[str, Any]:
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    for key in ("test/acc", "test/acc5"):
        acc = metrics.get(key)
        if acc is not None and not (isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0):
            raise ValueError(f"{path}: {key!r} must be a fraction in [0, 1], got {acc!r}")
    return metrics


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` (Hydra's unresolved ``.hydra/config.yaml`` if that is all)."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                raise ValueError(f"{path.name}: not valid YAML ({str(err).splitlines()[0]})") from None
            return config if isinstance(config, dict) else {}
    return {}


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def train_values(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The :class:`Run` values of a train run: its metrics.json, completed from its config.yaml.

    Raises:
        ValueError: metrics.json lacks a key of :data:`TRAIN_REQUIRED` or has one of another type,
            or config.yaml is not YAML.
    """
    for key, kind in TRAIN_REQUIRED.items():
        value = metrics.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"metrics.json: {key!r} must be {getattr(kind, '__name__', 'a number')}, "
                             f"got {value!r} (a metrics.json written before dsnet recorded the run's "
                             "identity; evaluate its checkpoint with eval.py)")
    config = _read_config(run_dir)
    conv = metrics["conv"]
    groups = _get(config, "model.groups") if conv == "group" else None
    values = {k: metrics[k] for k in TRAIN_REQUIRED} | {k: metrics.get(k) for k in TRAIN_OPTIONAL}
    values.update(
        width=float(metrics["width"]), groups=groups,
        in_chans=_get(config, "data.in_chans"), num_classes=_get(config, "data.num_classes"),
        top1=metrics.get("test/acc"), top5=metrics.get("test/acc5"),
        lr=_get(config, "optim.optimizer.lr"), weight_decay=_get(config, "optim.optimizer.weight_decay"),
        depthwise_weight_decay=_get(config, "module.depthwise_weight_decay"),
        label_smoothing=_get(config, "module.label_smoothing"),
        train_size=_get(config, "data.train_size"), train_batch_size=_get(config, "data.batch_size"),
        val_acc_best=metrics.get("val/acc_best"),
        **{k: v for k, v in metrics.items() if k.startswith("hparams/")},
    )
    return values


# Keys newer eval.py versions write (runtimes, contention) that this dsnet's ResultsRecord may not know yet:
# read here, with their types, so the report works before and after the schema gains them.
FORWARD_KEYS = {"runtime": (str, type(None)), "runtime_version": (str, type(None)),
                "contention_flagged": (bool, type(None))}


def load_eval(path: Path) -> tuple[ResultsRecord, dict[str, Any]]:
    """A ``results.json`` as its record and the :data:`FORWARD_KEYS` the record does not hold.

    Raises:
        ValueError, TypeError: what :meth:`ResultsRecord.from_dict` raises, or a forward key of
            the wrong type (the message names the file and the key).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    extra = {}
    if isinstance(data, dict):
        for key, kinds in FORWARD_KEYS.items():
            if key in data and key not in RESULT_KEYS:
                extra[key] = data.pop(key)
                if not isinstance(extra[key], kinds):
                    raise TypeError(f"{path}: key {key!r}: expected "
                                    f"{' | '.join(k.__name__ for k in kinds)}, got {extra[key]!r}")
    return ResultsRecord.from_dict(data, source=str(path)), extra


def _eval_run(run_dir: Path, trains: dict[Path, dict[str, Any]]) -> Run:
    """The eval run in ``run_dir``, joined to the train run its checkpoint lies in, if found.

    A relative ``ckpt_path`` is taken relative to the working directory, as eval.py would have.
    An eval of a checkpoint that lies in none of the train runs read (its run's small files were
    copied elsewhere, say into a results tree) belongs to the train run it lies in itself, as
    a study's evaluation puts it (``<run>/eval``); so does a cost-only eval (no checkpoint) put
    there, as for a GPU run whose checkpoint stayed on the GPU machine.
    """
    record, extra = load_eval(run_dir / "results.json")
    parents = Path(record.ckpt_path).resolve().parents if record.ckpt_path is not None else ()
    train_dir = next((p for p in (*parents, *run_dir.parents) if p in trains), None)
    train = trains.get(train_dir, {})
    # What the eval leaves unset (a cost-only eval of a run's network: no seed, epochs or top-1)
    # is the train run's; what it measured is its own.
    values = {**{f"hparams/{k}": v for k, v in (record.hparams or {}).items()}, **train,
              **{k: v for k, v in record.to_dict().items()
                 if k not in ("macs_breakdown", "hparams") and (v is not None or k not in train)}, **extra}
    if values.get("runtime") is None:
        values["runtime"] = "eager"  # results.json before runtimes were recorded: eager
    source = "results.json"
    if record.top1 is None:
        values["top1"], values["top5"] = train.get("top1"), train.get("top5")
        source = "metrics.json" if values["top1"] is not None else ""
    return Run(run_dir, values, record, train_dir, source)


def _no_results_reason(run_dir: Path) -> str:
    """Why a run directory without readable metrics.json or results.json gave nothing."""
    if (run_dir / "error.txt").is_file():  # train.py leaves its traceback there when a run fails
        return "failed run, see error.txt"
    return "no results.json or metrics.json (unfinished run?)"


def collect_runs(dirs: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Reads every run directory under ``dirs``.

    Returns:
        The runs (eval runs, with their train runs joined in, then train runs no eval run
        covers), and ``(run_dir, reason)`` for every run directory that gave no run (bad files
        included, with the error as the reason).

    Raises:
        ReportInputError: a directory does not exist or holds no run directory.
    """
    run_dirs = find_run_dirs(dirs)
    if not run_dirs:
        raise ReportInputError(f"no run directories under {', '.join(map(str, dirs))}")
    metrics: dict[Path, dict[str, Any]] = {}  # every readable metrics.json, as eval fallbacks
    trains: dict[Path, dict[str, Any]] = {}   # those that stand on their own as train runs
    missing: dict[Path, str] = {}
    for d in (d for d in run_dirs if (d / "metrics.json").is_file()):
        try:
            metrics[d] = _read_metrics(d / "metrics.json")
        except ValueError as err:  # JSONDecodeError is a ValueError
            missing[d] = f"unreadable metrics.json: {err}"
            continue
        try:
            trains[d] = train_values(d, metrics[d])
        except ValueError as err:
            missing[d] = str(err)
    fallbacks = {d: trains.get(d) or {"top1": m.get("test/acc"), "top5": m.get("test/acc5")}
                 for d, m in metrics.items()}
    runs, covered = [], set()
    for d in (d for d in run_dirs if (d / "results.json").is_file()):
        try:
            run = _eval_run(d, fallbacks)
        except (ValueError, TypeError) as err:
            missing[d] = f"invalid: {err}"
            continue
        runs.append(run)
        covered |= {d, run.train_dir}
        missing.pop(d, None)  # its own metrics.json is only a fallback; the results are valid
    for d, values in trains.items():
        if d not in covered:
            runs.append(Run(d, values, None, d, "metrics.json" if values["top1"] is not None else ""))
            covered.add(d)
    for d in run_dirs:
        if d in covered:
            missing.pop(d, None)  # an old-style metrics.json is fine when an eval run covers it
        elif d not in missing:
            missing[d] = _no_results_reason(d)
    return runs, sorted(missing.items())


# What a latency-match record (``python -m dsnet.study match STUDY --cost latency``) must hold: the two
# networks, their latencies timed in one process, the input they were built for, and where.
LATENCY_MATCH_KEYS = ("conv", "width", "cost", "target_conv", "target_width", "target", "arch",
                      "image_size", "in_chans", "num_classes", "environment")


def read_latency_match(path: str | os.PathLike) -> dict[str, Any]:
    """A latency-match record from ``path`` (JSON, never a pickle).

    Raises:
        ReportInputError: the file is missing, not a JSON object, not a latency match, or lacks a key.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportInputError(f"--latency-match {path}: cannot read it as JSON "
                               f"({type(err).__name__}: {err})") from None
    if not isinstance(record, dict):
        raise ReportInputError(f"--latency-match {path}: expected a JSON object, got {type(record).__name__}")
    if record.get("cost_name") != "latency":
        raise ReportInputError(f"--latency-match {path}: cost_name is {record.get('cost_name')!r}, not "
                               "'latency' (a record of python -m dsnet.study match STUDY --cost latency)")
    absent = [k for k in LATENCY_MATCH_KEYS if record.get(k) is None]
    if absent:
        raise ReportInputError(f"--latency-match {path}: missing {', '.join(absent)}")
    for key in ("width", "cost", "target_width", "target"):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ReportInputError(f"--latency-match {path}: {key} must be a number > 0, got {value!r}")
    if not isinstance(record["environment"], dict):
        raise ReportInputError(f"--latency-match {path}: environment must be a JSON object, "
                               f"got {record['environment']!r}")
    return record
