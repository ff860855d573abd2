"""One ONNX export for the runtimes that read ONNX (onnxruntime, openvino)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

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
