"""OpenVINO, CPU plugin, on :func:`dsnet.runtimes.onnx_export.export_onnx`'s file."""

from __future__ import annotations

import torch

from dsnet.runtimes.onnx_export import OnnxFileRuntime


class OpenVino(OnnxFileRuntime):
    """A compiled model per batch size (the ONNX graph reshaped to it), f32 inference, one stream."""

    name = "openvino"
    package = "openvino"

    def _compile(self, shape: tuple[int, ...]):
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(str(self._path))
        graph.reshape(list(shape))
        compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_NUM_THREADS": self.num_threads,
            "INFERENCE_PRECISION_HINT": "f32",  # else OpenVINO picks bf16 on CPUs that have it
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        })
        return compiled.create_infer_request()

    def _call(self, request, data):
        def call():
            request.infer([data])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return call
