"""Where the network runs: PyTorch itself (eager, or compiled by ``torch.compile``), or the same network
converted to OpenVINO or ONNX Runtime for CPU inference.

:func:`network_for_runtime` returns a callable with the network's signature, (B, 3, H, W) float32 in [0, 1] ->
(B, C, H, W) logits, that the sliding-window inferer calls like the network. OpenVINO (``pip install openvino``)
converts the PyTorch module (``openvino.convert_model``, about 10 s for GRU-Net) for windows of ``patch_size`` with
any batch size and compiles it for the CPU in float32; ONNX Runtime (``pip install onnxruntime``) runs the
network exported by ``torch.onnx.export`` the same way. Converted models are cached (OpenVINO IR, ONNX; float32)
under ``$XDG_CACHE_HOME/grunet_nuclei/<runtime>`` (``~/.cache`` when unset), keyed by a hash of the weights and the
window size, so later runs start in a fraction of a second. ``torch_compile`` compiles the eager network with
inductor for the window shape on first use (minutes on 2 cores, not cached across runs).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

__all__ = ["RUNTIMES", "CONVERTING_RUNTIMES", "OpenVINONetwork", "ONNXRuntimeNetwork", "network_for_runtime"]

RUNTIMES = ("torch", "torch_compile", "openvino", "onnxruntime")
CONVERTING_RUNTIMES = ("openvino", "onnxruntime")  # CPU only; they hold their own copy of the weights
logger = logging.getLogger(__name__)


def default_cache_dir(runtime: str = "openvino") -> Path:
    """``$XDG_CACHE_HOME/grunet_nuclei/<runtime>`` (``~/.cache`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grunet_nuclei" / runtime


def weights_key(network: torch.nn.Module, patch_size: Sequence[int]) -> str:
    """A hash of the network's class, parameters and buffers, and the window size."""
    digest = hashlib.sha256(f"{type(network).__name__}:{tuple(int(v) for v in patch_size)}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class OpenVINONetwork(torch.nn.Module):
    """A PyTorch network converted to and compiled by OpenVINO for the CPU (float32).

    Args:
        network: the eager PyTorch network, with its weights loaded, in eval mode (OpenVINO cannot convert the
            scripted GRU-Net).
        patch_size: (height, width) of the windows it will be called on (the batch size may vary).
        threads: CPU threads OpenVINO may use (0: its default).
        cache_dir: where converted models are kept (None: :func:`default_cache_dir`); an unwritable one only
            costs the conversion next time.

    Raises:
        ImportError: OpenVINO is not installed.
    """

    def __init__(
        self, network: torch.nn.Module, patch_size: Sequence[int], threads: int = 0, cache_dir: Optional[Union[str, os.PathLike]] = None
    ):
        super().__init__()
        import openvino

        h, w = int(patch_size[0]), int(patch_size[1])
        cached = Path(cache_dir or default_cache_dir()) / f"{weights_key(network, (h, w))}.xml"
        if cached.is_file():
            model = openvino.Core().read_model(str(cached))
        else:
            example = torch.zeros(1, 3, h, w)
            model = openvino.convert_model(network.eval(), example_input=example, input=[(-1, 3, h, w)])
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.xml")  # ranks of a cohort may convert at once
                openvino.save_model(model, str(tmp), compress_to_fp16=False)
                os.replace(tmp.with_suffix(".bin"), cached.with_suffix(".bin"))
                os.replace(tmp, cached)  # the .xml last: once it is there, its .bin is complete
            except (OSError, RuntimeError) as e:
                logger.warning("could not cache the OpenVINO model in %s (%s); it is converted again next time", cached.parent, e)
        self.source = cached
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        self.compiled = openvino.Core().compile_model(model, "CPU", config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, h, w) as converted. Returns logits (B, C, h, w) float32 on the CPU."""
        return torch.from_numpy(self.compiled(x.detach().cpu().float().contiguous().numpy())[0])


class ONNXRuntimeNetwork(torch.nn.Module):
    """A PyTorch network exported to ONNX and run by ONNX Runtime on the CPU (float32).

    Args:
        network: the eager PyTorch network, with its weights loaded, in eval mode.
        patch_size: (height, width) of the windows it will be called on (the batch size may vary).
        threads: intra-op threads (0: ONNX Runtime's default).
        cache_dir: where exported models are kept (None: :func:`default_cache_dir`).

    Raises:
        ImportError: ONNX Runtime is not installed.
    """

    def __init__(
        self, network: torch.nn.Module, patch_size: Sequence[int], threads: int = 0, cache_dir: Optional[Union[str, os.PathLike]] = None
    ):
        super().__init__()
        import onnxruntime

        h, w = int(patch_size[0]), int(patch_size[1])
        cached = Path(cache_dir or default_cache_dir("onnxruntime")) / f"{weights_key(network, (h, w))}.onnx"
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp")
            torch.onnx.export(
                network.eval(), (torch.zeros(1, 3, h, w),), str(tmp), input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
            )
            os.replace(tmp, cached)
        self.source = cached
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, h, w) as exported. Returns logits (B, C, h, w) float32 on the CPU."""
        return torch.from_numpy(self.session.run(None, {"image": x.detach().cpu().float().contiguous().numpy()})[0])


def network_for_runtime(network: torch.nn.Module, runtime: str, patch_size: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``network`` itself (``"torch"``), compiled (``"torch_compile"``), or converted (``"openvino"``, ``"onnxruntime"``).

    Raises:
        ValueError: an unknown runtime, or a converting runtime for a TorchScript network.
        ImportError: ``"openvino"`` / ``"onnxruntime"`` without the package installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return network
    if isinstance(network, torch.jit.ScriptModule):
        raise ValueError(f"the {runtime} runtime converts eager networks; run a TorchScript model with runtime 'torch'")
    if runtime == "torch_compile":
        return torch.compile(network, dynamic=False)
    if runtime == "onnxruntime":
        return ONNXRuntimeNetwork(network, patch_size, torch.get_num_threads())
    return OpenVINONetwork(network, patch_size, torch.get_num_threads())
