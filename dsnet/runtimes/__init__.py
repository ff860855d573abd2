"""Inference runtimes: one small adapter per runtime behind one interface, :class:`Runtime`.

``dsnet.latency.measure_latency(runtime=...)`` times any of them the same way:

- ``eager``: PyTorch as written (``inference_mode``, autocast for bf16/fp16).
- ``compile``: ``torch.compile`` with its default backend, inductor (compilation kept out of the timing).
- ``onnxruntime``: ONNX Runtime's CPU execution provider on a ``torch.onnx`` export.
- ``openvino``: OpenVINO's CPU plugin on the same ONNX export.

Before anything is timed, a runtime's output on the timing input is checked against eager PyTorch
on the same input (:data:`TOLERANCE`), so a fast but wrong conversion is an error, not a number.
"""

from __future__ import annotations

import importlib

from torch import nn

from dsnet.runtimes.base import Runtime, RuntimeMismatchError, RuntimeUnavailableError, TOLERANCE

__all__ = ["RUNTIMES", "Runtime", "RuntimeMismatchError", "RuntimeUnavailableError", "TOLERANCE", "create_runtime",
           "runtime_devices", "runtime_version"]

# name -> "module:class"; imported on demand so that a missing package only matters when it is asked for
RUNTIMES = {
    "eager": "dsnet.runtimes.eager:Eager",
    "compile": "dsnet.runtimes.eager:Compiled",
    "onnxruntime": "dsnet.runtimes.ort:OnnxRuntime",
    "openvino": "dsnet.runtimes.ov:OpenVino",
}


def _runtime_class(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise RuntimeUnavailableError(f"runtime={name!r}; expected one of {', '.join(RUNTIMES)}")
    module, cls = RUNTIMES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def runtime_devices(name: str) -> tuple[str, ...]:
    """The device types runtime ``name`` runs on (``cpu``, ``cuda``)."""
    return _runtime_class(name).devices


def runtime_version(name: str) -> str:
    """The version of the package behind runtime ``name`` (torch's for eager and compile).

    Raises:
        RuntimeUnavailableError: the package is not installed (the message says how to install it).
    """
    return _runtime_class(name).version()


def create_runtime(name: str, model: nn.Module, **settings) -> Runtime:
    """Runtime ``name`` around ``model`` (put in ``eval()``); ``settings``: see :class:`Runtime`."""
    cls = _runtime_class(name)
    cls.check_settings(**settings)  # a bad setting is named first, installed or not
    cls.version()  # a missing package fails here, before any export or compilation
    return cls(model, **settings)

