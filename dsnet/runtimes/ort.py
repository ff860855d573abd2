"""ONNX Runtime, CPU execution provider, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

import tempfile

import torch

from dsnet.runtimes.base import Runtime
from dsnet.runtimes.onnx_export import BATCH_DIM, INPUT_NAME, export_onnx


class OnnxRuntime(Runtime):
    """An ``InferenceSession`` per batch size (the free batch dimension fixed, full graph optimisation)."""

    name = "onnxruntime"
    package = "onnxruntime"
    devices = ("cpu",)
    precisions = ("fp32",)
    takes_channels_last = False

    def __init__(self, model, **settings):
        super().__init__(model, **settings)
        self._path = None  # exported at the first input, whose (C, H, W) it needs
        self._sessions = {}  # input shape -> InferenceSession: rounds of the same shape reuse it

    def _prepare(self, x: torch.Tensor):
        import onnxruntime as ort

        if self._path is None:
            self._dir = tempfile.TemporaryDirectory(prefix="dsnet-onnx-")  # removed with the runtime
            self._path = export_onnx(self.model, tuple(x.shape[1:]), self._dir.name)
        if tuple(x.shape) not in self._sessions:
            self._sessions[tuple(x.shape)] = self._session(ort, x.shape[0])
        session = self._sessions[tuple(x.shape)]
        feed = {INPUT_NAME: x.cpu().contiguous().numpy()}
        return lambda: torch.from_numpy(session.run(None, feed)[0])

    def _session(self, ort, batch_size: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_free_dimension_override_by_name(BATCH_DIM, batch_size)
        return ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])
