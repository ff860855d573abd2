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

    # Every dsnet backbone runs one forward code object (dsnet/models/_common.py), and dynamo keeps at
    # most recompile_limit (8) compiled variants per code object: the 9th (network, shape, thread
    # count) of a process, e.g. the third width of bench_runtimes.py, ran eager with only a warning.
    # A higher limit for as many networks as a benchmark builds, and an error, never a silent fallback.
    RECOMPILE_LIMIT = 256

    def __init__(self, model, **settings):
        super().__init__(model, **settings)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, self.RECOMPILE_LIMIT)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self._compiled = torch.compile(model)

    def _runner(self):
        return self._compiled
