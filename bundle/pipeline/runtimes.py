"""Where the network runs: PyTorch itself (eager, or compiled by ``torch.compile``), or the same network
converted to OpenVINO or ONNX Runtime for CPU inference.

:func:`network_for_runtime` returns a callable with the network's signature, (B, 3, H, W) float32 in [0, 1] ->
(B, C, H, W) logits, that the sliding-window inferer calls like the network. OpenVINO (``pip install openvino``)
converts the PyTorch module (``openvino.convert_model``, about 10 s for GRU-Net) for windows of ``patch_size`` with
any batch size and compiles it for the CPU in float32, or in bfloat16 (``bf16``) on CPUs where bfloat16 runs at
about twice the float32 rate (AMX, or AVX-512 BF16 on AMD; :func:`cpu_bf16_is_fast`); ONNX Runtime (``pip install onnxruntime``) runs the
network exported by ``torch.onnx.export`` the same way. Converted models are cached (OpenVINO IR, ONNX; float32)
under ``$XDG_CACHE_HOME/grunet_nuclei/<runtime>`` (``~/.cache`` when unset), keyed by a hash of the weights and the
window size, so later runs start in a fraction of a second. ``torch_compile`` compiles the eager network with
inductor for the window shape on first use (minutes on 2 cores, not cached across runs).

A text-conditioned network (GRU-Net's GdAM prompts) is converted once with the prompts as a second input,
``text_shape`` (P, D): every organ's prompts then run through the same converted network (one compiled model in
memory, not one per organ), called as ``runner(x, text)``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "RUNTIMES", "CONVERTING_RUNTIMES", "OpenVINONetwork", "ONNXRuntimeNetwork", "cpu_bf16_is_fast", "network_for_runtime",
    "resolve_bf16", "resolve_runtime",
]

RUNTIMES = ("torch", "torch_compile", "openvino", "onnxruntime")
CONVERTING_RUNTIMES = ("openvino", "onnxruntime")  # CPU only; they hold their own copy of the weights
logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """The CPU's vendor string as Linux reports it (``GenuineIntel``, ``AuthenticAMD``), or ``""`` elsewhere; read
    once per process (``resolve_bf16`` asks on every training forward)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_bf16_is_fast() -> bool:
    """Whether bfloat16 convolutions run at about twice the float32 rate on this CPU: with AMX tiles, or with
    AVX-512 BF16 on AMD (Zen 4 and later: the full GRU-Net 2.1x its float32 ``channels_last`` rate). Intel's
    AVX-512 BF16 without AMX (Cooper Lake, or a virtual machine that hides AMX) gains nothing: measured on an
    Emerald Rapids VM, a 64-channel 3x3 convolution ran at 0.52-0.59x and the full GRU-Net's network at 0.79x
    their float32 ``channels_last`` rates; emulated bfloat16, on CPUs with neither, is slower still."""
    if torch.cpu._is_amx_tile_supported():
        return True
    return bool(torch.cpu._is_avx512_bf16_supported()) and cpu_vendor() == "AuthenticAMD"


def resolve_bf16(bf16: Union[bool, str], device: Union[str, torch.device]) -> bool:
    """``bf16`` as a bool: ``"auto"`` is True where bfloat16 pays on ``device`` (a CUDA GPU that supports it,
    or a CPU where :func:`cpu_bf16_is_fast`).

    Raises:
        ValueError: neither a bool nor ``"auto"``.
    """
    if isinstance(bf16, bool):
        return bf16
    if bf16 != "auto":
        raise ValueError(f"bf16 must be true, false or 'auto', got {bf16!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_is_fast()


def resolve_runtime(runtime: str, device: Union[str, torch.device], bf16: bool) -> str:
    """``runtime``, or for ``"auto"`` the fastest runtime whose masks agree with float32 eager PyTorch (Dice between
    the masks >= 0.995 on the MoNuSeg validation images, ``scripts/benchmark_speed.py``): PyTorch on a GPU and, with
    ``bf16``, on the CPU (its bfloat16 autocast kept the full model's masks, Dice 0.996; OpenVINO's bfloat16 did not,
    0.994); OpenVINO in float32 on a CPU otherwise.

    Raises:
        ValueError: an unknown runtime.
    """
    if runtime == "auto":
        return "torch" if torch.device(device).type != "cpu" or bf16 else "openvino"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be 'auto' or one of {RUNTIMES}, got {runtime!r}")
    return runtime


def default_cache_dir(runtime: str = "openvino") -> Path:
    """``$XDG_CACHE_HOME/grunet_nuclei/<runtime>`` (``~/.cache`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grunet_nuclei" / runtime


def weights_key(network: torch.nn.Module, patch_size: Sequence[int], text_shape: Optional[Sequence[int]] = None) -> str:
    """A hash of the network's class, parameters and buffers, the window size and the text input's shape."""
    text = "" if text_shape is None else f":text{tuple(int(v) for v in text_shape)}"
    digest = hashlib.sha256(f"{type(network).__name__}:{tuple(int(v) for v in patch_size)}{text}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def input_channels(network: torch.nn.Module) -> int:
    """Channels of the tensor the network is fed: ``input_channels`` (DA-RefineNet: window and context view), else
    ``in_channels``, else 3."""
    return int(getattr(network, "input_channels", getattr(network, "in_channels", 3)))


def _example_inputs(h: int, w: int, text_shape: Optional[Tuple[int, int]], channels: int = 3) -> Tuple[tuple, list]:
    """Example inputs for conversion and their shapes (batch dynamic): the window, and the text when there is one."""
    if text_shape is None:
        return (torch.zeros(1, channels, h, w),), [(-1, channels, h, w)]
    p, d = (int(v) for v in text_shape)
    return (torch.zeros(1, channels, h, w), torch.zeros(p, d)), [(-1, channels, h, w), (p, d)]


def _numpy_inputs(x: torch.Tensor, text: Optional[torch.Tensor]) -> list:
    inputs = [x.detach().cpu().float().contiguous().numpy()]
    return inputs if text is None else inputs + [text.detach().cpu().float().contiguous().numpy()]


class OpenVINONetwork(torch.nn.Module):
    """A PyTorch network converted to and compiled by OpenVINO for the CPU (float32 or bfloat16 arithmetic).

    Args:
        network: the eager PyTorch network, with its weights loaded, in eval mode (OpenVINO cannot convert the
            scripted GRU-Net).
        patch_size: (height, width) of the windows it will be called on (the batch size may vary).
        threads: CPU threads OpenVINO may use (0: its default).
        cache_dir: where converted models are kept (None: :func:`default_cache_dir`); an unwritable one only
            costs the conversion next time.
        text_shape: (P, D) of the network's text input (None: an image-only network).
        bf16: compute in bfloat16 (inputs and outputs stay float32; the cached model is float32 either way).

    Raises:
        ImportError: OpenVINO is not installed.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        patch_size: Sequence[int],
        threads: int = 0,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        text_shape: Optional[Tuple[int, int]] = None,
        bf16: bool = False,
    ):
        super().__init__()
        import openvino

        h, w = int(patch_size[0]), int(patch_size[1])
        cached = Path(cache_dir or default_cache_dir()) / f"{weights_key(network, (h, w), text_shape)}.xml"
        if cached.is_file():
            model = openvino.Core().read_model(str(cached))
        else:
            example, shapes = _example_inputs(h, w, text_shape, input_channels(network))
            model = openvino.convert_model(network.eval(), example_input=example, input=shapes)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.xml")  # ranks of a cohort may convert at once
                openvino.save_model(model, str(tmp), compress_to_fp16=False)
                os.replace(tmp.with_suffix(".bin"), cached.with_suffix(".bin"))
                os.replace(tmp, cached)  # the .xml last: once it is there, its .bin is complete
            except (OSError, RuntimeError) as e:
                logger.warning("could not cache the OpenVINO model in %s (%s); it is converted again next time", cached.parent, e)
        self.source = cached
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        self.compiled = openvino.Core().compile_model(model, "CPU", config)

    def forward(self, x: torch.Tensor, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, 3, h, w) as converted; text: (P, D) when converted with a text input. Returns logits (B, C, h, w)
        float32 on the CPU."""
        return torch.from_numpy(self.compiled(_numpy_inputs(x, text))[0])


class ONNXRuntimeNetwork(torch.nn.Module):
    """A PyTorch network exported to ONNX and run by ONNX Runtime on the CPU (float32).

    Args:
        network: the eager PyTorch network, with its weights loaded, in eval mode.
        patch_size: (height, width) of the windows it will be called on (the batch size may vary).
        threads: intra-op threads (0: ONNX Runtime's default).
        cache_dir: where exported models are kept (None: :func:`default_cache_dir`).
        text_shape: (P, D) of the network's text input (None: an image-only network).

    Raises:
        ImportError: ONNX Runtime is not installed.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        patch_size: Sequence[int],
        threads: int = 0,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        text_shape: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        import onnxruntime

        h, w = int(patch_size[0]), int(patch_size[1])
        cached = Path(cache_dir or default_cache_dir("onnxruntime")) / f"{weights_key(network, (h, w), text_shape)}.onnx"
        self.input_names = ["image"] + ([] if text_shape is None else ["text"])
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp")
            example, _ = _example_inputs(h, w, text_shape, input_channels(network))
            torch.onnx.export(
                network.eval(), example, str(tmp), input_names=self.input_names, output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
            )
            os.replace(tmp, cached)
        self.source = cached
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, 3, h, w) as exported; text: (P, D) when exported with a text input. Returns logits (B, C, h, w)
        float32 on the CPU."""
        return torch.from_numpy(self.session.run(None, dict(zip(self.input_names, _numpy_inputs(x, text))))[0])


def network_for_runtime(
    network: torch.nn.Module,
    runtime: str,
    patch_size: Sequence[int],
    text_shape: Optional[Tuple[int, int]] = None,
    bf16: bool = False,
) -> Callable[..., torch.Tensor]:
    """``network`` itself (``"torch"``), compiled (``"torch_compile"``), or converted (``"openvino"``, ``"onnxruntime"``).

    With ``text_shape`` (P, D), the converted network takes the prompts as a second input: ``runner(x, text)``.
    ``bf16`` makes OpenVINO compute in bfloat16 (PyTorch runtimes get it from the caller's autocast; ONNX Runtime
    has no bfloat16 on the CPU and stays float32).

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
        return ONNXRuntimeNetwork(network, patch_size, torch.get_num_threads(), text_shape=text_shape)
    return OpenVINONetwork(network, patch_size, torch.get_num_threads(), text_shape=text_shape, bf16=bf16)
