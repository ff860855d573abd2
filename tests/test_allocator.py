"""The allocator policy: with freed memory kept, repeated forward passes stop page-faulting."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsnet import allocator

REPO = Path(__file__).resolve().parent.parent
PASSES = 4

# One process per mode: mallopt is process-wide. Page faults are counted by the kernel, exactly:
# every 4 KiB page of a freshly mapped block faults once when it is first written.
CHILD = f"""
import json, resource, sys, torch
from dsnet import allocator
torch.set_num_threads(1)
mode = allocator.configure(sys.argv[1])
from dsnet.models import create_model
net = create_model("mobilenet_v1", width=0.25).eval()
x = torch.randn(64, 3, 64, 64)
with torch.inference_mode():
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({PASSES}):
        net(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"mode": mode, "faults": faults}}))
"""


def page_faults(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and the thresholds are glibc's")
def test_keep_freed_removes_the_page_faults_of_repeated_forward_passes():
    system, kept = page_faults("system"), page_faults("keep_freed")
    assert (system["mode"], kept["mode"]) == ("system", "keep_freed")
    # glibc's defaults: about 5,000 faults per pass here (20 MB of activations mapped in again).
    assert system["faults"] >= 1000 * PASSES, system
    # Freed memory kept: the passes after warm-up reuse the heap (0 to 128 faults per pass measured,
    # on a machine under memory pressure from other jobs).
    assert kept["faults"] <= min(300 * PASSES, system["faults"] / 10), (kept, system)


def test_unknown_mode_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"allocator='jemalloc'; expected one of keep_freed, system"):
        allocator.configure("jemalloc")
