"""The interface every runtime adapter implements, and the check against eager PyTorch."""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, ClassVar

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Largest allowed max|output - eager output|, as a fraction of max|eager output| (the logits' scale).
# fp32: reordered sums and fused kernels differ by ~1e-6 relative (measured: 1e-6 to 1e-5 for
# onnxruntime and openvino on MobileNetV1); 1e-4 leaves room and still catches a wrong layer.
# bf16/fp16: 8 and 11 mantissa bits, rounded at every layer.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


class RuntimeUnavailableError(ValueError):
    """A runtime whose package is not installed, or settings it cannot run."""


class RuntimeMismatchError(RuntimeError):
    """A runtime whose output differs from eager PyTorch's beyond :data:`TOLERANCE`."""


class Runtime:
    """A network prepared for one runtime; :meth:`forward_for` gives the call to time for one input.

    Args:
        model: the network, already in ``eval()`` on ``device``.
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        channels_last: the input (and model) in channels-last memory format.
        num_threads: CPU threads the runtime may use.
    """

    name: ClassVar[str]
    package: ClassVar[str | None] = None  # the pip package behind it; None: torch itself
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    precisions: ClassVar[tuple[str, ...]] = tuple(PRECISIONS)
    takes_channels_last: ClassVar[bool] = True  # False: the runtime chooses its own layouts
    deploy: bool = False  # whether ``model`` is a deploy form (dsnet.latency.prepare_runtime sets it)

    def __init__(self, model: nn.Module, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, num_threads: int = 1):
        self.check_settings(device=device, precision=precision, channels_last=channels_last)
        self.model, self.device, self.precision = model, device, precision
        self.channels_last, self.num_threads = channels_last, num_threads
        self._checked: set[tuple[int, ...]] = set()

    @classmethod
    def check_settings(cls, *, device: str = "cpu", precision: str = "fp32", channels_last: bool = False,
                       **_) -> None:
        """Raises RuntimeUnavailableError for a setting this runtime cannot time. Needs no package:
        a bad setting is reported as such whether or not the runtime is installed."""
        if device.split(":")[0] not in cls.devices:
            raise RuntimeUnavailableError(f"runtime={cls.name} runs on {', '.join(cls.devices)}, not device={device}")
        if precision not in cls.precisions:
            raise RuntimeUnavailableError(
                f"runtime={cls.name} times precision {', '.join(cls.precisions)}, not precision={precision}")
        if channels_last and not cls.takes_channels_last:
            raise RuntimeUnavailableError(
                f"runtime={cls.name} chooses its own memory layout; channels_last=true is for eager and compile")

    @classmethod
    def version(cls) -> str:
        """The runtime package's version. Raises RuntimeUnavailableError when it is not installed."""
        if cls.package is None:
            return torch.__version__
        try:
            return importlib.import_module(cls.package).__version__
        except ImportError:
            raise RuntimeUnavailableError(
                f"runtime={cls.name} needs the {cls.package} package: pip install {cls.package}") from None

    def forward_for(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The zero-argument call that runs the network on ``x``, checked once per shape against eager."""
        call = self._prepare(x)
        if self.name != "eager" and tuple(x.shape) not in self._checked:
            check_against_eager(self.name, call(), eager_output(self.model, x, self.precision), self.precision)
            self._checked.add(tuple(x.shape))
        return call

    def _prepare(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        raise NotImplementedError


def autocast(device: str, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()


def eager_output(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``model(x)`` in eager PyTorch, in ``inference_mode`` and ``precision``'s autocast."""
    with torch.inference_mode(), autocast(x.device.type, precision):
        return model(x)


def check_against_eager(name: str, output: torch.Tensor, reference: torch.Tensor, precision: str) -> float:
    """The largest difference from eager, relative to the logits' scale; raises above :data:`TOLERANCE`."""
    output, reference = torch.as_tensor(output).float().cpu(), reference.float().cpu()
    if output.shape != reference.shape:
        raise RuntimeMismatchError(f"runtime={name}: output shape {tuple(output.shape)}, eager {tuple(reference.shape)}")
    scale = reference.abs().max().item() or 1.0
    error = (output - reference).abs().max().item() / scale
    if not error <= TOLERANCE[precision]:  # NaN fails too
        raise RuntimeMismatchError(
            f"runtime={name}: output differs from eager PyTorch by {error:.2e} of the logits' scale "
            f"({scale:.3g}) on the timing input; allowed at {precision}: {TOLERANCE[precision]:g}")
    return error
