"""The results record: what one evaluation run measured, as written to ``results.json``.

``eval.py`` builds a :class:`ResultsRecord` and writes it with :func:`write_results` into its
Hydra run directory; ``dsnet.report`` reads it back with :func:`load_results`. This module is the
one definition of that file, so both sides agree on every key and unit.

Units and conventions (they are in the key names where a unit applies):

* ``top1`` / ``top5``: accuracy as a **fraction in [0, 1]** (what torchmetrics returns and what
  training logs as ``test/acc``); ``None`` when no checkpoint was evaluated. The report shows
  percent, but files always hold fractions.
* ``params``: parameter count. ``macs``: multiply-adds for one image, forward pass.
  ``train_macs``: the same for forward + backward.
* ``latency_ms_*``: milliseconds per forward pass at batch size ``latency_batch_size`` (1 unless
  set otherwise); ``latency_ms_iqr`` is the interquartile range (p75 - p25), the spread beside the
  median ``latency_ms_p50``. ``latency_ms_p50_median`` is the median of the timing rounds' p50s and
  [``latency_ms_p50_low``, ``latency_ms_p50_high``] its distribution-free interval, holding the
  true median with probability ``latency_ms_p50_coverage`` (``dsnet.intervals``); None in older files.
* ``throughput_img_s``: images per second at batch size ``batch_size``.
* ``cpu_contention``: the fraction in [0, 1] of all CPUs that *other* processes (and VM neighbours,
  as steal time) used while latency was timed; ``None`` when unknown. Above a few percent the
  latency and throughput of a CPU run are inflated, often by several times.
* ``macs_breakdown``: per layer type (``pointwise``, ``depthwise``, ``standard``, ``grouped``,
  ``linear``, ...) a ``{"params": int, "macs": int}`` dict; it partitions the counted layers, so
  its sums never exceed ``params`` / ``macs`` (the remainder is e.g. normalisation parameters).
* ``runtime``: what ran the timed forward passes: ``eager``, ``compile`` (``torch.compile``, inductor),
  ``onnxruntime`` (CPU execution provider) or ``openvino`` (CPU); ``runtime_version`` its package's
  version (torch's for eager and compile). Files written before these keys timed eager PyTorch
  (or compiled it, with ``latency.compile=true``, which they did not record): absent means ``eager``.
* ``allocator``: the CPU allocator policy of the timing process (``keep_freed`` or ``system``, see
  ``dsnet.allocator``); ``None`` when unknown (older files).
* ``contention_flagged``: True when other processes used more than the threshold share of the CPUs
  while (or just before) latency was timed, after the bounded retries of ``dsnet.contention``;
  the report leaves flagged runs out of its ratio tables unless asked. Absent means False.
* ``activations``: output elements of every counted layer (conv and linear) for one image, the
  activation count of pycls (Radosavovic et al. 2020). ``memory_traffic_bytes``: bytes read and
  written by those layers for one image in fp32: input + weights + output of each. ``None`` in older files.
* ``groups``: the group count of ``conv="group"`` models, ``None`` otherwise.

Files are JSON only (never pickle) and are replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")  # dsnet.runtimes.RUNTIMES; not imported: no torch here


@dataclasses.dataclass(frozen=True)
class ResultsRecord:
    """One evaluation run: model, data, cost, accuracy, speed and the environment it ran in."""

    # what was measured
    arch: str
    conv: str
    width: float
    groups: int | None
    image_size: int
    in_chans: int
    num_classes: int
    dataset: str
    seed: int | None
    # cost, counted (not timed)
    params: int
    macs: int
    train_macs: int
    macs_breakdown: dict[str, dict[str, int]]
    # accuracy on the test split, fractions in [0, 1]; None without a checkpoint
    top1: float | None
    top5: float | None
    # speed, timed
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_iqr: float
    throughput_img_s: float
    batch_size: int
    # environment beside every number
    device: str
    device_name: str
    precision: str
    channels_last: bool
    num_threads: int
    torch: str
    git_rev: str | None
    ckpt_path: str | None
    run_dir: str
    schema_version: int = SCHEMA_VERSION
    # Added after version 1 files were first written: optional on read, absent means its default.
    latency_batch_size: int = 1
    cpu_contention: float | None = None
    # Added later still (runtimes, allocator, contention): optional on read as well.
    runtime: str = "eager"
    runtime_version: str | None = None
    allocator: str | None = None
    contention_flagged: bool = False
    activations: int | None = None
    memory_traffic_bytes: int | None = None
    # Added with the converged study: how the checkpoint's hyperparameters were chosen (its training config's
    # ``hparams`` node: the lr, the search's trial count and grid), None for a run without one.
    hparams: dict[str, float | str | None] | None = None
    # The rounds' median p50 and its interval (dsnet.intervals): optional on read.
    latency_ms_p50_median: float | None = None
    latency_ms_p50_low: float | None = None
    latency_ms_p50_high: float | None = None
    latency_ms_p50_coverage: float | None = None
    # Whether latency timed the deploy form (batch norm folded, branches fused): optional on read.
    deploy: bool | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not _has_type(value, hints[field.name]):
                raise TypeError(
                    f"key {field.name!r}: expected {_type_name(hints[field.name])}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"key {field.name!r}: expected a finite number, got {value!r}")
            if field.name in _FLOAT_KEYS and isinstance(value, int):
                # JSON writes 1.0 as 1; store floats as floats so equality and CSVs are stable.
                object.__setattr__(self, field.name, float(value))
        _check_values(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "results") -> ResultsRecord:
        """Builds a record from a mapping, e.g. parsed JSON.

        Args:
            data: one value per key of the schema, no more, no less (keys added since version 1,
                ``latency_batch_size`` and ``cpu_contention``, may be absent: they take their default).
            source: where ``data`` came from (a file path), named in every error.

        Raises:
            ValueError: a key is missing or unknown, the schema version differs, or a value is
                out of range. TypeError: a value has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in data and k not in _OPTIONAL_KEYS]
        extra = sorted(k for k in data if k not in names)
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        if extra:
            raise ValueError(f"{source}: unknown key(s) {extra}; allowed keys: {names}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise ValueError(
                f"{source}: key 'schema_version' is {data['schema_version']!r}, "
                f"this dsnet reads version {SCHEMA_VERSION}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values, keys in schema order."""
        return dataclasses.asdict(self)


def _args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if _is_union(hint) else (hint,)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _has_type(value: Any, hint: Any) -> bool:
    if _is_union(hint):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int subclass; True is not a parameter count
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _has_type(k, key_hint) and _has_type(v, value_hint) for k, v in value.items()
        )
    raise AssertionError(f"unsupported annotation {hint!r}")  # a schema bug, not bad input


def _type_name(hint: Any) -> str:
    if _is_union(hint):
        return " | ".join(_type_name(arg) for arg in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


RESULT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultsRecord))
_OPTIONAL_KEYS = frozenset({  # see the fields: older files lack them
    "latency_batch_size", "cpu_contention", "runtime", "runtime_version", "allocator", "contention_flagged",
    "activations", "memory_traffic_bytes", "hparams", "latency_ms_p50_median", "latency_ms_p50_low",
    "latency_ms_p50_high", "latency_ms_p50_coverage", "deploy",
})
_FLOAT_KEYS = frozenset(  # keys whose values are stored as float even when JSON wrote an int
    name for name, hint in typing.get_type_hints(ResultsRecord).items() if float in _args(hint)
)


def _check_values(record: ResultsRecord) -> None:
    """Range checks the types alone cannot express."""
    for key in ("width", "image_size", "in_chans", "num_classes", "batch_size", "latency_batch_size",
                "num_threads"):
        if getattr(record, key) <= 0:
            raise ValueError(f"key {key!r}: expected > 0, got {getattr(record, key)!r}")
    if record.groups is not None and record.groups < 1:
        raise ValueError(f"key 'groups': expected >= 1 or null, got {record.groups!r}")
    for key in ("params", "macs", "train_macs", "latency_ms_p50", "latency_ms_p90",
                "latency_ms_iqr", "throughput_img_s"):
        if getattr(record, key) < 0:
            raise ValueError(f"key {key!r}: expected >= 0, got {getattr(record, key)!r}")
    for key in ("activations", "memory_traffic_bytes"):
        if getattr(record, key) is not None and getattr(record, key) < 0:
            raise ValueError(f"key {key!r}: expected >= 0 or null, got {getattr(record, key)!r}")
    if record.runtime not in RUNTIMES:
        raise ValueError(f"key 'runtime': expected one of {', '.join(RUNTIMES)}, got {record.runtime!r}")
    for key in ("top1", "top5", "cpu_contention"):
        value = getattr(record, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"key {key!r}: expected a fraction in [0, 1] or null, got {value!r}")
    for layer, counts in record.macs_breakdown.items():
        if set(counts) != {"params", "macs"} or min(counts.values()) < 0:
            raise ValueError(
                f"key 'macs_breakdown': entry {layer!r} must be "
                f"{{'params': int >= 0, 'macs': int >= 0}}, got {counts!r}"
            )
    for total in ("params", "macs"):
        parts = sum(counts[total] for counts in record.macs_breakdown.values())
        if parts > getattr(record, total):
            raise ValueError(
                f"key 'macs_breakdown': its {total} add up to {parts}, "
                f"more than the model's {total}={getattr(record, total)}"
            )


# ----------------------------------------------------------------------------- files


class NoSpaceError(OSError):
    """A file could not be written because its file system is full (or the user's quota is spent).

    The message is one line, ``no space left on <dir> while writing <file>``; the file was not
    written at all (its previous version, if any, is still in place).
    """


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def raise_if_no_space(err: BaseException, path: str | os.PathLike) -> None:
    """Raises :class:`NoSpaceError` for ``path`` when ``err`` (or an error it arose from) is a full disk.

    torch's archive writer reports a failed write as a ``RuntimeError`` whose context is the
    ``OSError``, so the whole chain is searched.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            path = Path(path)
            raise NoSpaceError(f"no space left on {path.parent} while writing {path.name}") from err
        err = err.__cause__ or err.__context__


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` so that ``path`` holds either the old file or the whole new one.

    The text goes to a temporary file in the same directory, is synced, and is moved over
    ``path`` with ``os.replace`` (atomic within one filesystem).

    Raises:
        NoSpaceError: the file system is full; no temporary file is left and ``path`` is unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise_if_no_space(err, path)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (see :func:`write_text_atomic`).

    The text is serialised before any file is touched (``allow_nan=False``: NaN is not JSON).
    """
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_results(path: str | os.PathLike, record: ResultsRecord | Mapping[str, Any]) -> None:
    """Validates ``record`` and writes it atomically as JSON to ``path``."""
    if not isinstance(record, ResultsRecord):
        record = ResultsRecord.from_dict(record, source=str(path))
    write_json_atomic(path, record.to_dict())


def load_results(path: str | os.PathLike) -> ResultsRecord:
    """Reads and validates a ``results.json``.

    Raises:
        ValueError: the file is not JSON, or a key is missing, unknown or out of range (the
            message names the file and the key). TypeError: a value has the wrong type.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return ResultsRecord.from_dict(data, source=str(path))
