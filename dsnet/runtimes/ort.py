"""ONNX Runtime, CPU execution provider, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

import torch

from dsnet.runtimes.onnx_export import BATCH_DIM, INPUT_NAME, OnnxFileRuntime


class OnnxRuntime(OnnxFileRuntime):
    """An ``InferenceSession`` per batch size (the free batch dimension fixed, full graph optimisation)."""

    name = "onnxruntime"
    package = "onnxruntime"

    def _compile(self, shape: tuple[int, ...]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_free_dimension_override_by_name(BATCH_DIM, shape[0])
        return ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])

    def _call(self, session, data):
        feed = {INPUT_NAME: data}
        return lambda: torch.from_numpy(session.run(None, feed)[0])
