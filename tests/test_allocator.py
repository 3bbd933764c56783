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


# malloc arenas after four threads have each allocated, counted in glibc's malloc_info report
ARENAS = """
import ctypes, sys, tempfile, threading
import numpy as np
from bundle.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory(arenas=1)
def allocate():
    for _ in range(20):
        np.ones(1 << 16)
threads = [threading.Thread(target=allocate) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(f.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("mode, low, high", [("default", 2, 100), ("keep", 1, 1)])
def test_threads_share_one_arena(mode, low, high):
    out = subprocess.run([sys.executable, "-c", ARENAS, mode], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert low <= int(out) <= high  # default: an arena per allocating thread (glibc allows 8 per core)
