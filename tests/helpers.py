"""Shared test helpers: paths of the shipped sample crops and builders of bad-input folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import tifffile
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


def sample_rgb() -> np.ndarray:
    """The first MoNuSeg sample crop, RGB uint8 (256, 256, 3)."""
    return np.asarray(Image.open(first_sample()).convert("RGB"))


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels but holds almost no data (a few hundred bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 3 * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def tiled_tissue(height: int, width: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) tissue everywhere: the sample crop mirrored to any size."""
    rgb = sample_rgb()
    reps = (-(-height // rgb.shape[0]) + 1, -(-width // rgb.shape[1]) + 1, 1)
    big = np.tile(np.concatenate([rgb, rgb[::-1]], 0), (reps[0] // 2 + 1, 1, 1))
    big = np.tile(np.concatenate([big, big[:, ::-1]], 1), (1, reps[1] // 2 + 1, 1))
    return np.ascontiguousarray(big[:height, :width])


def make_pipeline_cases(folder: Path) -> Dict[str, Path]:
    """One file per bad-input case of the pipeline (see tests/test_pipeline.py); returns the paths by case."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = sample_rgb()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    paths = {
        "header_bomb": write_png_header_only(folder / "bomb.png", 60000, 60000),
        "edge_strip": folder / "edge_strip.png",
        "tiny": folder / "tiny.png",
        "gray": folder / "gray.png",
        "two_channel": folder / "two_channel.tif",
        "multipage_gray": folder / "multipage_gray.tif",
    }
    wide = np.full((300, 1030, 3), 245, np.uint8)
    wide[:, 1020:] = tiled_tissue(300, 10)  # tissue only in the last strip (sides of 1024k + 6 px)
    Image.fromarray(wide).save(paths["edge_strip"])
    Image.fromarray(rgb[:40, :60]).save(paths["tiny"])
    Image.fromarray(gray).save(paths["gray"])
    tifffile.imwrite(paths["two_channel"], np.stack([gray, np.full_like(gray, 255)], -1), photometric="minisblack", extrasamples=["unassalpha"])
    tifffile.imwrite(paths["multipage_gray"], np.stack([gray, gray[::-1]]), photometric="minisblack")
    return paths


def write_slide(path: Path, rgb: np.ndarray, mpp: float = 0.25, levels: int = 1, with_mpp: bool = True) -> Path:
    """A tiled (pyramidal when ``levels`` > 1) TIFF that OpenSlide reads as a generic slide."""
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if with_mpp else {}
    with tifffile.TiffWriter(path) as w:
        for lv in range(levels):
            step = 2**lv
            level_res = {k: ((v[0] / step, v[1] / step) if k == "resolution" else v) for k, v in res.items()}
            w.write(np.ascontiguousarray(rgb[::step, ::step]), tile=(128, 128), compression="zlib", photometric="rgb",
                    subfiletype=1 if lv else 0, **level_res)
    return path
