"""Load the CUDA 13 runtime library from the ``nvidia-cuda-runtime`` wheel before holoscan is imported.

``holoscan-cu13`` (a dependency of MONAI Deploy App SDK 4.0.0) links ``libcudart.so.13`` when it is imported,
also on machines without a GPU, and its library search path does not include the wheel's folder. Once a library
with that name is loaded into the process, the dynamic linker reuses it, so loading the wheel's copy first makes
``import monai`` / ``import holoscan`` work on a CPU machine without a CUDA installation or ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Optional

__all__ = ["preload_cuda_runtime"]

CUDART = "libcudart.so.13"


def preload_cuda_runtime() -> Optional[Path]:
    """Load ``libcudart.so.13`` from the ``nvidia-cuda-runtime`` wheel if it is installed.

    Returns:
        The loaded library, or ``None`` when the wheel is absent (a system CUDA 13 runtime is then needed).
    """
    spec = importlib.util.find_spec("nvidia.cu13")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        lib = Path(folder) / "lib" / CUDART
        if lib.is_file():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return lib
    return None
