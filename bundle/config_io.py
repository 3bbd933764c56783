"""One way to load the bundle's configs, shared by scripts, tests and the integrations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
from monai.bundle import ConfigParser

from bundle.errors import InputError

__all__ = ["BUNDLE_ROOT", "MODEL_VARIANTS", "config_path", "resolve_variant", "variant_overlays", "parse_device", "load_config"]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
PathLike = Union[str, os.PathLike]
# model variant -> the config overlays that select it (network and weight file), merged after the base configs:
# the shipped GRU-Net, the compact one, and the alternative networks of configs/networks
MODEL_VARIANTS = {
    "full": (),
    "compact": ("compact",),
    **{p.stem: (f"networks/{p.name}",) for p in sorted((BUNDLE_ROOT / "configs" / "networks").glob("*.json"))},
}


def resolve_variant(variant: str) -> str:
    """The model variant that ``variant`` names: ``"auto"`` is the full GRU-Net where CUDA is available and the
    compact one on CPU (the full model's validation accuracy at a fraction of the FLOPs, model card); any other
    name is returned as it is."""
    if variant != "auto":
        return variant
    return "full" if torch.cuda.is_available() else "compact"


def variant_overlays(variant: str) -> List[str]:
    """Config names that select a model variant (``"full"``: the shipped network, ``"compact"``: the CPU-sized one,
    ``"auto"``: :func:`resolve_variant`).

    Raises:
        InputError: an unknown variant (the message lists the known ones).
    """
    resolved = resolve_variant(variant)
    if resolved not in MODEL_VARIANTS:
        raise InputError(f"unknown model variant {variant!r}; known: auto, {', '.join(MODEL_VARIANTS)}")
    return list(MODEL_VARIANTS[resolved])


def parse_device(name: str) -> torch.device:
    """The device a user named (``cpu``, ``cuda``, ``cuda:1``), checked against this machine.

    Raises:
        InputError: not a device name, or a CUDA device this machine does not have.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {name!r}: no CUDA GPU is available on this machine; use cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported; expected cpu, cuda or cuda:<index>")
    return device


def config_path(name: str, bundle_root: Optional[PathLike] = None) -> Path:
    """Path of ``configs/<name>`` (``.json`` added when missing) in the bundle."""
    name = name if name.endswith((".json", ".yaml", ".yml")) else f"{name}.json"
    return Path(bundle_root or BUNDLE_ROOT) / "configs" / name


def load_config(
    names: Union[str, Sequence[str]],
    bundle_root: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    variant: str = "full",
) -> ConfigParser:
    """A :class:`ConfigParser` holding the merged configs (later files over earlier), with ``bundle_root`` set.

    Args:
        names: config names or paths, e.g. ``["train", "evaluate"]``; merged in one call, Model Zoo style.
        bundle_root: the bundle folder (this package's parent by default); put on ``sys.path`` so that the
            configs' ``bundle.*`` targets import.
        overrides: ``{id: value}`` applied after loading (``"network_def#features": 8``).
        variant: model variant (:data:`MODEL_VARIANTS`, or ``"auto"``); its overlays are merged after ``names``.
    """
    root = Path(bundle_root or BUNDLE_ROOT).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    files = ([names] if isinstance(names, str) else list(names)) + variant_overlays(variant)
    paths = [str(p if Path(p).is_file() else config_path(p, root)) for p in files]
    parser = ConfigParser()
    parser.read_config(paths)
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser
