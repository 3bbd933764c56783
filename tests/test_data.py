"""Data lists, splits and bad-input handling of bundle.data.datalists / bundle.io.images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from bundle.data.datalists import group_id, make_split, paired_datalist, scan_images, split_datalist
from bundle.io.images import ImageReadError, inspect_image, read_mask, read_rgb, read_rgb_checked
from tests.helpers import MONUSEG, SHARED_DATA, TNBC, first_sample, make_bad_image_folder

GROUP_CASES = [
    ("TCGA-21-5784-01Z-00-DX1", "TCGA-21-5784"),
    ("TCGA-21-5784-01Z-00-DX1_r300_c300", "TCGA-21-5784"),
    ("03_2", "03"),
    ("01_2_r128_c128", "01"),
    ("tile", "tile"),
]


@pytest.mark.parametrize("stem, expected", GROUP_CASES)
def test_group_id(stem, expected):
    assert group_id(stem) == expected


@pytest.mark.parametrize("folder, n_items, mask_dtype", [(MONUSEG, 4, np.uint16), (TNBC, 2, np.uint8)])
def test_paired_datalist_on_shipped_crops(folder, n_items, mask_dtype):
    scan = paired_datalist(folder)
    assert len(scan.items) == n_items and not scan.skipped
    item = scan.items[0]
    assert set(item) == {"image", "label", "id", "group"}
    assert read_rgb(item["image"]).shape == (256, 256, 3)
    assert read_mask(item["label"]).dtype == mask_dtype


def test_paired_datalist_skips_images_training_would_read_otherwise(tmp_path):
    """Training's loader reads the stored pixels of a file's first page: an EXIF-turned image or a multi-page TIFF
    would be paired with a mask of another orientation or page, so both are skipped with the reason."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _exif_turned_jpeg(tmp_path / "images" / "turned.jpg", RGB8[:, :20])
    _thumbnail_first(tmp_path / "images" / "pages.tif")
    shutil.copy(first_sample(), tmp_path / "images" / "good.png")
    for name, shape in (("turned", (20, 32)), ("pages", (32, 32)), ("good", (256, 256))):
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    scan = paired_datalist(tmp_path)
    assert [i["id"] for i in scan.items] == ["good"]
    assert sorted(Path(s["file"]).name for s in scan.skipped) == ["pages.tif", "turned.jpg"]
    assert all("save the image upright as a single page" in s["reason"] for s in scan.skipped)


def test_paired_datalist_several_folders():
    scan = paired_datalist([MONUSEG, TNBC])
    assert len(scan.items) == 6
    assert {"01", "04"} <= {i["group"] for i in scan.items}


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_dir does not exist: .*nowhere"):
        paired_datalist(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="mask folder"):
        paired_datalist(tmp_path)


def test_image_without_mask_and_bad_files_are_skipped(tmp_path):
    shutil.copytree(MONUSEG, tmp_path / "ds")
    images = sorted((tmp_path / "ds" / "images").glob("*.png"))
    (tmp_path / "ds" / "masks" / images[0].name).unlink()  # image without a mask
    (tmp_path / "ds" / "images" / "readme.txt").write_text("x")  # not an image
    corrupt = tmp_path / "ds" / "images" / images[1].name
    corrupt.write_bytes(corrupt.read_bytes()[:500])  # truncated PNG
    scan = paired_datalist(tmp_path / "ds")
    assert len(scan.items) == 2
    reasons = {s["file"].split("/")[-1]: s["reason"] for s in scan.skipped}
    assert "no mask" in reasons[images[0].name]
    assert "not an image file" in reasons["readme.txt"]
    assert "not a readable image" in reasons[images[1].name] and images[1].name in reasons[images[1].name]


def test_mask_size_mismatch_is_skipped(tmp_path):
    shutil.copytree(TNBC, tmp_path / "ds")
    mask = sorted((tmp_path / "ds" / "masks").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    scan = paired_datalist(tmp_path / "ds")
    assert len(scan.items) == 1 and "is 10x10" in scan.skipped[0]["reason"]


def test_class_map_mask_is_kept_with_a_warning(tmp_path, caplog):
    """A 0/128/255 mask (borders 128) is a class map: kept, its nuclei taken as connected components, and said."""
    shutil.copytree(TNBC, tmp_path / "ds")
    mask = sorted((tmp_path / "ds" / "masks").glob("*.png"))[0]
    binary = read_mask(mask) > 0
    classes = np.where(binary, 255, 0).astype(np.uint8)
    classes[binary & ~ndimage.binary_erosion(binary)] = 128
    Image.fromarray(classes).save(mask)
    with caplog.at_level("WARNING", logger="bundle.data.datalists"):
        scan = paired_datalist(tmp_path / "ds")
    assert len(scan.items) == 2 and not scan.skipped
    assert any(mask.name in r.getMessage() and "class map" in r.getMessage() for r in caplog.records)


def test_no_usable_pair(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="no usable image-mask pair"):
        paired_datalist(tmp_path)


def test_scan_images_bad_inputs(tmp_path):
    make_bad_image_folder(tmp_path / "in")
    with pytest.warns(UserWarning) as record:
        scan = scan_images(tmp_path / "in")
    messages = " ".join(str(w.message) for w in record)
    assert "gray.png: grayscale image replicated to RGB" in messages
    assert "rgba.png: RGBA image converted to RGB" in messages
    used = sorted(i["image"].split("/")[-1] for i in scan.items)
    assert used == ["good.png", "gray.png", "rgba.png", "small.png", "tile.jpg", "tile.tif"]
    skipped = {s["file"].split("/")[-1]: s["reason"] for s in scan.skipped}
    assert set(skipped) == {"corrupt.png", "notes.txt", "sixteen.png"}
    assert "not a readable image" in skipped["corrupt.png"]
    assert "16-bit" in skipped["sixteen.png"] and "convert it to 8-bit RGB" in skipped["sixteen.png"]


def test_scan_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder does not exist"):
        scan_images(tmp_path / "missing")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable image"):
        scan_images(tmp_path)


def test_inspect_image_messages_name_the_file(tmp_path):
    paths = make_bad_image_folder(tmp_path)
    with pytest.raises(ImageReadError, match="corrupt.png: not a readable image"):
        inspect_image(paths["corrupt"])
    with pytest.raises(ImageReadError, match="sixteen.png: I;16 image"):
        inspect_image(paths["sixteen"])
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        inspect_image(tmp_path / "missing.png")
    assert read_rgb(paths["gray"]).shape == (256, 256, 3)


def _unknown_photometric(path, data):
    """Write ``data`` as an RGB TIFF, then overwrite its photometric tag with a value no TIFF reader knows."""
    tifffile.imwrite(path, data, photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.tags["PhotometricInterpretation"].offset
    raw = bytearray(path.read_bytes())
    raw[offset + 8 : offset + 10] = (9999).to_bytes(2, "little")  # the tag's value field (classic TIFF, little endian)
    path.write_bytes(bytes(raw))


RGB8 = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)


@pytest.mark.parametrize("write, message", [
    (lambda p: tifffile.imwrite(p, RGB8.astype(np.float32), photometric="rgb"),
     "TIFF of float32 RGB (3 samples per pixel) is not supported; convert it to 8-bit RGB first"),
    (lambda p: tifffile.imwrite(p, np.zeros((32, 32, 5), np.uint8), photometric="minisblack", planarconfig="contig"),
     "TIFF of uint8 MINISBLACK (5 samples per pixel) is not supported; convert it to 8-bit RGB first"),
    (lambda p: tifffile.imwrite(p, RGB8, photometric="rgb", compression="jpeg2000"),
     "TIFF of uint8 RGB (3 samples per pixel) in JPEG2000 compression cannot be decoded; save it with LZW, deflate or JPEG compression"),
    (lambda p: _unknown_photometric(p, RGB8.astype(np.float32)),
     "TIFF of float32 9999 (3 samples per pixel) is not supported; convert it to 8-bit RGB first"),
    (lambda p: p.write_bytes(b"II*\x00not a tiff at all"), "not a readable image (cannot identify image file"),
])
def test_tiffs_pil_cannot_open_are_described(tmp_path, write, message):
    path = tmp_path / "x.tif"
    write(path)
    with pytest.raises(ImageReadError) as err:
        read_rgb(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def _exif_turned_jpeg(path, data, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(data).save(path, exif=exif)


@pytest.mark.parametrize("samples, mode", [(3, "RGB"), (4, "RGBA")])
def test_sixteen_bit_colour_is_refused(tmp_path, samples, mode):
    """PIL opens 16-bit colour as 8-bit by keeping the high byte: 12-bit data would turn near-black."""
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, np.full((32, 32, samples), 4095, np.uint16), photometric="rgb", extrasamples=["unassalpha"] if samples == 4 else None)
    with pytest.raises(ImageReadError, match=f"deep.tif: 16-bit {mode} image is not supported"):
        read_rgb(path)


def _thumbnail_first(path):
    tifffile.imwrite(path, RGB8[:8, :8], photometric="rgb")
    tifffile.imwrite(path, RGB8, photometric="rgb", append=True)


@pytest.mark.parametrize("name, write, shape, note", [
    ("stack.tif", lambda p: tifffile.imwrite(p, np.stack([RGB8, RGB8]), photometric="rgb"), (32, 32, 3), "page 1 of 2 read"),
    ("thumbnail_first.tif", _thumbnail_first, (32, 32, 3), "page 2 of 2 read (the largest, 32 x 32)"),
    ("turned.jpg", lambda p: _exif_turned_jpeg(p, RGB8[:, :20]), (20, 32, 3), "turned upright by its EXIF orientation (6)"),
])
def test_pages_and_orientation_are_read_as_viewers_show_them(tmp_path, name, write, shape, note):
    path = tmp_path / name
    write(path)
    rgb, info = read_rgb_checked(path)
    assert rgb.shape == shape and (info.height, info.width) == shape[:2] and info.conversion.startswith(note)


def _items(n, groups=None):
    return [{"id": f"img{i:02d}", "group": (groups[i] if groups else f"img{i:02d}")} for i in range(n)]


SPLIT_CASES = [
    ({"mode": "random", "val_fraction": 0.2}, 30, 24, 6),
    ({"mode": "random", "val_fraction": 0.5}, 5, 3, 2),
    ({"mode": "kfold", "num_folds": 5, "fold": 1}, 30, 24, 6),
    ({"mode": "none"}, 7, 7, 7),
]


@pytest.mark.parametrize("kwargs, n, n_train, n_val", SPLIT_CASES)
def test_split_sizes(kwargs, n, n_train, n_val):
    train, val = split_datalist(_items(n), **kwargs)
    assert (len(train), len(val)) == (n_train, n_val)
    if kwargs["mode"] != "none":
        assert not {d["id"] for d in train} & {d["id"] for d in val}


def test_kfold_covers_every_image_once():
    items = _items(23)
    seen = []
    for fold in range(5):
        seen += [d["id"] for d in split_datalist(items, "kfold", num_folds=5, fold=fold)[1]]
    assert sorted(seen) == sorted(d["id"] for d in items)


def test_patient_split_keeps_patients_apart():
    groups = ["01"] * 7 + ["02"] * 3 + ["03"] * 5 + ["04"] * 8 + ["05"] * 4 + ["06"] * 3 + ["07"] * 3 + ["08"] * 4
    items = _items(len(groups), groups)
    for fold in range(4):
        train, val = split_datalist(items, "patient", num_folds=4, fold=fold)
        assert val and not {d["group"] for d in train} & {d["group"] for d in val}
        assert len(train) + len(val) == len(items)


SPLIT_ERROR_CASES = [
    ({"mode": "bogus"}, "split mode must be one of"),
    ({"mode": "random", "val_fraction": 1.5}, "val_fraction must be in"),
    ({"mode": "kfold", "fold": 5, "num_folds": 5}, "0 <= fold < num_folds"),
    ({"mode": "patient", "num_folds": 5}, "at least 5 patients"),
]


@pytest.mark.parametrize("kwargs, message", SPLIT_ERROR_CASES)
def test_split_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_datalist(_items(6, ["a", "a", "b", "b", "c", "c"]), **kwargs)


def test_make_split_on_crops():
    split = make_split(TNBC, mode="patient", num_folds=2, fold=0)
    assert len(split["train"]) == 1 and len(split["validation"]) == 1
    assert split["train"][0]["group"] != split["validation"][0]["group"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="full datasets (../shared/data) not present")
def test_full_datasets_pair_and_split_by_patient():
    monuseg = paired_datalist(SHARED_DATA / "monuseg" / "train")
    assert len(monuseg.items) == 30 and not monuseg.skipped
    assert read_mask(monuseg.items[0]["label"]).dtype == np.uint16
    tnbc = paired_datalist(SHARED_DATA / "tnbc")
    assert len(tnbc.items) == 37 and {i["group"] for i in tnbc.items} == {f"{p:02d}" for p in range(1, 9)}
    train, val = split_datalist(tnbc.items, "patient", num_folds=4, fold=0)
    assert not {d["group"] for d in train} & {d["group"] for d in val} and len(train) + len(val) == 37
