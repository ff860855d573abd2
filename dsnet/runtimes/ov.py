"""OpenVINO, CPU plugin, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

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
        self._path = None

    def _prepare(self, x: torch.Tensor):
        import openvino as ov

        if self._path is None:
            self._path = export_onnx(self.model, tuple(x.shape[1:]))
        core = ov.Core()
        graph = core.read_model(str(self._path))
        graph.reshape(list(x.shape))
        compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_NUM_THREADS": self.num_threads,
            "INFERENCE_PRECISION_HINT": "f32",  # else OpenVINO picks bf16 on CPUs that have it
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        })
        request = compiled.create_infer_request()
        data = x.cpu().contiguous().numpy()

        def call():
            request.infer([data])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return call
