"""One ONNX export for the runtimes that read ONNX (onnxruntime, openvino)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from dsnet.runtimes.base import Runtime

INPUT_NAME, OUTPUT_NAME = "x", "logits"
BATCH_DIM = "batch"  # the one free dimension: one export serves every batch size


def export_onnx(model: nn.Module, input_size: tuple[int, ...], directory: str | Path | None = None) -> Path:
    """Exports ``model`` (fp32, ``eval()``) with ``torch.onnx.export`` (the torch.export-based exporter).

    The batch dimension is left free; the runtimes fix it per timing input. Returns the ``.onnx`` path
    (in ``directory``, default a new temporary directory).
    """
    directory = Path(directory or tempfile.mkdtemp(prefix="dsnet-onnx-"))
    path = directory / "model.onnx"
    example = torch.zeros(2, *input_size)  # 2, not 1: a batch of 1 would be specialised away
    # The exporter reports its passes at INFO level and prints progress; it is not what the user asked for.
    for name in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(model.float().cpu(), (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      # positional, not keyed by name: forward's argument is x in some networks, input in nn.Sequential
                      dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), dynamo=True, verbose=False)
    return path


class OnnxFileRuntime(Runtime):
    """A runtime that reads the ONNX file of :func:`export_onnx`, on the CPU in fp32, with one compiled
    graph per input shape (its free batch dimension fixed): the part ONNX Runtime and OpenVINO share.

    Subclasses give :meth:`_compile` (shape -> what runs it) and :meth:`_call` (that, input -> call).
    """

    devices = ("cpu",)
    precisions = ("fp32",)
    takes_channels_last = False

    def __init__(self, model, **settings):
        super().__init__(model, **settings)
        self._path: Path | None = None  # exported at the first input, whose (C, H, W) it needs
        self._compiled = {}  # input shape -> compiled graph: rounds of the same shape reuse it

    def _prepare(self, x: torch.Tensor):
        if self._path is None:
            self._dir = tempfile.TemporaryDirectory(prefix="dsnet-onnx-")  # removed with the runtime
            self._path = export_onnx(self.model, tuple(x.shape[1:]), self._dir.name)
        shape = tuple(x.shape)
        if shape not in self._compiled:
            self._compiled[shape] = self._compile(shape)
        return self._call(self._compiled[shape], x.cpu().contiguous().numpy())

    def _compile(self, shape: tuple[int, ...]):
        raise NotImplementedError

    def _call(self, compiled, data):
        raise NotImplementedError
