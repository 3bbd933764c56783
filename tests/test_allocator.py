"""bundle.allocator: glibc keeps freed memory, so that large tensors stop page-faulting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

# faults per 64 MiB tensor (over glibc's default mmap limit of 32 MiB), after two rounds have grown the heap
PROBE = """
import resource, sys
import torch
from bundle.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(64 << 20, dtype=torch.uint8)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5
faults()
faults()
print(applied, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("mode, applied, low, high", [("default", "False", 8000, 1e9), ("keep", "True", 0, 1000)])
def test_large_tensors_reuse_freed_memory(mode, applied, low, high):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == applied
    assert low <= float(out[1]) < high  # default: 16384 fresh 4 KiB pages per tensor
