"""PyTorch itself: eager, and ``torch.compile`` (inductor)."""

from __future__ import annotations

import torch

from dsnet.runtimes.base import Runtime, autocast


class Eager(Runtime):
    """The network as written, in ``inference_mode`` with ``precision``'s autocast."""

    name = "eager"

    def _runner(self):
        return self.model

    def _prepare(self, x: torch.Tensor):
        runner = self._runner()
        if self.channels_last:
            x = x.to(memory_format=torch.channels_last)

        def call():
            with torch.inference_mode(), autocast(self.device, self.precision):
                return runner(x)
        return call


class Compiled(Eager):
    """``torch.compile(model)`` with the default (inductor) backend; each new shape compiles once,
    in :meth:`forward_for`'s check, so compilation never falls in the timing."""

    name = "compile"

    def __init__(self, model, **settings):
        super().__init__(model, **settings)
        self._compiled = torch.compile(model)

    def _runner(self):
        return self._compiled
