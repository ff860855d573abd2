"""What a measurement depends on: device, library versions, threads, allocator, code revision.

Printed and saved beside every latency number (:func:`dsnet.latency.measure_latency`, the benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from dsnet import allocator


def git_revision() -> str:
    """Short git revision of the dsnet checkout, ``+dirty`` when it has local changes; 'unknown' outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str = "cpu", num_threads: int | None = None) -> dict:
    """What a latency number depends on: device, library versions, threads, code revision.

    ``num_threads``: the threads the measurement ran at, where it set its own (a
    ``torch.utils.benchmark.Timer`` does); None: the process's.
    """
    import torchvision

    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
    return {
        "device": device,
        "device_name": device_name,
        "num_threads": num_threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_rev": git_revision(),
        "allocator": allocator.current(),
    }
