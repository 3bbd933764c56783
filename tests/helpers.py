"""Shared test helpers: paths of the shipped sample crops and builders of bad-input folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"
MONUSEG = SAMPLES / "monuseg"
TNBC = SAMPLES / "tnbc"
SHARED_DATA = ROOT.parent / "shared" / "data"
# a light GRU-Net that trains in seconds on CPU (the default design, narrower and with fewer CDRB units)
LIGHT_OVERRIDES = {"network_def#features": 8, "network_def#cdrb_units": 2, "patch_size": [128, 128]}


def cli_overrides(overrides: Dict) -> list:
    """``{"a#b": 1}`` -> ``["--a#b", "1"]`` for ``python -m monai.bundle run``."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def first_sample() -> Path:
    return sorted((MONUSEG / "images").glob("*.png"))[0]


def make_bad_image_folder(folder: Path) -> Dict[str, Path]:
    """A folder mixing good images with every kind of bad input; returns the paths by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    src = first_sample()
    rgb = np.asarray(Image.open(src).convert("RGB"))
    paths = {
        "good": folder / "good.png",
        "small": folder / "small.png",
        "gray": folder / "gray.png",
        "rgba": folder / "rgba.png",
        "sixteen": folder / "sixteen.png",
        "corrupt": folder / "corrupt.png",
        "text": folder / "notes.txt",
        "tiff": folder / "tile.tif",
        "jpeg": folder / "tile.jpg",
    }
    shutil.copy(src, paths["good"])
    Image.fromarray(rgb[:90, :60]).save(paths["small"])
    Image.fromarray(rgb).convert("L").save(paths["gray"])
    Image.fromarray(rgb).convert("RGBA").save(paths["rgba"])
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(paths["sixteen"])
    paths["corrupt"].write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    paths["text"].write_text("not an image\n")
    Image.fromarray(rgb[:100, :130]).save(paths["tiff"])
    Image.fromarray(rgb[:70, :70]).save(paths["jpeg"], quality=95)
    return paths
