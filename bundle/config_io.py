"""One way to load the bundle's configs, shared by scripts, tests and the integrations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from monai.bundle import ConfigParser

__all__ = ["BUNDLE_ROOT", "config_path", "load_config"]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
PathLike = Union[str, os.PathLike]


def config_path(name: str, bundle_root: Optional[PathLike] = None) -> Path:
    """Path of ``configs/<name>`` (``.json`` added when missing) in the bundle."""
    name = name if name.endswith((".json", ".yaml", ".yml")) else f"{name}.json"
    return Path(bundle_root or BUNDLE_ROOT) / "configs" / name


def load_config(
    names: Union[str, Sequence[str]],
    bundle_root: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> ConfigParser:
    """A :class:`ConfigParser` holding the merged configs (later files over earlier), with ``bundle_root`` set.

    Args:
        names: config names or paths, e.g. ``["train", "evaluate"]``; merged in one call, Model Zoo style.
        bundle_root: the bundle folder (this package's parent by default); put on ``sys.path`` so that the
            configs' ``bundle.*`` targets import.
        overrides: ``{id: value}`` applied after loading (``"network_def#features": 8``).
    """
    root = Path(bundle_root or BUNDLE_ROOT).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    files = [names] if isinstance(names, str) else list(names)
    paths = [str(p if Path(p).is_file() else config_path(p, root)) for p in files]
    parser = ConfigParser()
    parser.read_config(paths)
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser
