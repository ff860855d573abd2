"""OpenVINO, CPU plugin, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

import tempfile

import torch

from dsnet.runtimes.base import Runtime
from dsnet.runtimes.onnx_export import export_onnx


class OpenVino(Runtime):
    """A compiled model per batch size (the ONNX graph reshaped to it), f32 inference, one stream."""

    name = "openvino"
    package = "openvino"
    devices = ("cpu",)
    precisions = ("fp32",)
    takes_channels_last = False

    def __init__(self, model, **settings):
        super().__init__(model, **settings)
        self._path = None  # exported at the first input, whose (C, H, W) it needs
        self._requests = {}  # input shape -> infer request: rounds of the same shape reuse it

    def _prepare(self, x: torch.Tensor):
        import openvino as ov

        if self._path is None:
            self._dir = tempfile.TemporaryDirectory(prefix="dsnet-onnx-")  # removed with the runtime
            self._path = export_onnx(self.model, tuple(x.shape[1:]), self._dir.name)
        if tuple(x.shape) not in self._requests:
            self._requests[tuple(x.shape)] = self._request(ov, list(x.shape))
        request = self._requests[tuple(x.shape)]
        data = x.cpu().contiguous().numpy()

        def call():
            request.infer([data])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return call

    def _request(self, ov, shape: list[int]):
        core = ov.Core()
        graph = core.read_model(str(self._path))
        graph.reshape(shape)
        compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_NUM_THREADS": self.num_threads,
            "INFERENCE_PRECISION_HINT": "f32",  # else OpenVINO picks bf16 on CPUs that have it
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        })
        return compiled.create_infer_request()
