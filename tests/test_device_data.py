"""The data a device (GPU) run carries: packed small (WebP images, masks as they are), unpacked into the layout
``configs/monuseg_tnbc.json`` reads, with the same pairs and pixels close to the originals."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from bundle.data.datalists import paired_datalist
from scripts.device import pack_data
from tests.helpers import MONUSEG, TNBC


def _data_root(tmp_path):
    root = tmp_path / "data"
    for src, dst in ((MONUSEG, root / "monuseg" / "train"), (TNBC, root / "tnbc")):
        shutil.copytree(src / "images", dst / "images")
        shutil.copytree(src / "masks", dst / "masks")
    (root / "monuseg" / "manifest.csv").write_text("image,organ\n")
    (root / "tnbc" / "manifest.csv").write_text("image\n")
    return root


def test_pack_then_unpack_gives_the_same_pairs_and_close_pixels(tmp_path):
    root = _data_root(tmp_path)
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    written = pack_data.pack(root, packed)
    originals = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert 0 < written < originals
    assert not list(packed.rglob("images/*.png")) and list(packed.rglob("images/*.webp"))
    assert pack_data.unpack(packed, unpacked) == len(list(root.rglob("images/*.png")))
    for folder in ("monuseg/train", "tnbc"):
        before, after = paired_datalist(root / folder).items, paired_datalist(unpacked / folder).items
        assert len(after) == len(before) > 0
        assert [(a["image"].rsplit("/", 1)[-1], a["label"].rsplit("/", 1)[-1]) for a in after] == [
            (b["image"].rsplit("/", 1)[-1], b["label"].rsplit("/", 1)[-1]) for b in before
        ]
        for a, b in zip(after, before):
            assert open(a["label"], "rb").read() == open(b["label"], "rb").read()  # masks byte for byte
            x, y = np.asarray(Image.open(a["image"])), np.asarray(Image.open(b["image"]).convert("RGB"))
            assert x.shape == y.shape and x.dtype == np.uint8
            assert np.abs(x.astype(int) - y).mean() < 4.0  # lossy, but close
    assert (unpacked / "monuseg" / "manifest.csv").is_file() and (unpacked / "tnbc" / "manifest.csv").is_file()


def test_pack_without_images_is_one_line(tmp_path, capsys):
    assert pack_data.main(["pack", str(tmp_path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no images" in err and "\n" not in err


def test_tracked_files_leave_room_for_a_device_training_call():
    """A device call carries 64 MiB in all; a training call's runs/device (wheels + packed data) takes 14.2 MiB
    (scripts/device/prepare.sh training), so the tracked files must stay under 49.8 MiB (new weights, images)."""
    import subprocess

    from tests.helpers import ROOT

    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        import pytest

        pytest.skip("not a git checkout")
    size = sum((ROOT / name).stat().st_size for name in listed.decode().split("\0") if name and (ROOT / name).is_file())
    assert size < 49.8 * 2**20, f"tracked files {size / 2**20:.1f} MiB: a device training call would not fit"
