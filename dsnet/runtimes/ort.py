"""ONNX Runtime, CPU execution provider, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

import torch

from dsnet.runtimes.onnx_export import BATCH_DIM, INPUT_NAME, OnnxFileRuntime


def session(path, num_threads: int, batch_size: int, **options):
    """An ``InferenceSession`` of the ONNX file at ``path`` as dsnet times it: CPU provider, full graph
    optimisation, ``num_threads`` intra-op threads, sequential, the free batch dimension fixed to
    ``batch_size``; ``options``: further ``SessionOptions`` attributes (``enable_profiling=True``, ...)."""
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = num_threads
    settings.inter_op_num_threads = 1
    settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    settings.add_free_dimension_override_by_name(BATCH_DIM, batch_size)
    for name, value in options.items():
        setattr(settings, name, value)
    return ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])


class OnnxRuntime(OnnxFileRuntime):
    """An ``InferenceSession`` per batch size (the free batch dimension fixed, full graph optimisation)."""

    name = "onnxruntime"
    package = "onnxruntime"

    def _compile(self, shape: tuple[int, ...]):
        return session(self._path, self.num_threads, shape[0])

    def _call(self, inference, data):
        feed = {INPUT_NAME: data}
        return lambda: torch.from_numpy(inference.run(None, feed)[0])
