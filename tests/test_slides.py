"""Whole-slide and large-image nucleus instance inference: measurements, slide reading, tiling, outputs, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import tifffile
import torch
from parameterized import parameterized
from PIL import Image
from skimage.draw import disk

from bundle.config_io import load_config
from bundle.io.images import read_rgb
from bundle.io.writers import CSV_COLUMNS, nucleus_feature
from bundle.pipeline.measure import measure_nuclei
from bundle.io.slides import ImageSource, SlideReadError, SlideSource, open_source, tissue_mask
from bundle.pipeline.segmenter import NucleusSegmenter
from tests.helpers import ROOT, SHARED_DATA, first_sample, write_slide

SAMPLE_RGB = read_rgb(first_sample())
WHITE = 244


def mosaic() -> np.ndarray:
    """512 x 768 slide: a real 256 x 256 H&E crop in the middle of white glass."""
    img = np.full((512, 768, 3), WHITE, np.uint8)
    img[128:384, 256:512] = SAMPLE_RGB
    return img


@pytest.fixture(scope="module")
def segmenter() -> NucleusSegmenter:
    return load_config("inference", overrides={"tile_size": 256, "tile_margin": 64, "progress": False}).get_parsed_content("segmenter")


# -- measurements ------------------------------------------------------------------------------------------------
TWO_DISCS = np.zeros((64, 96), np.int32)
TWO_DISCS[disk((20, 20), 8)] = 1
TWO_DISCS[disk((40, 70), 12)] = 2


@parameterized.expand([
    # model_mpp, level0_mpp, origin, keep, expected count
    (0.25, 0.25, (0, 0), None, 2),
    (0.25, 0.5, (100, 200), None, 2),
    (0.25, 0.25, (0, 0), (0, 0, 32, 48), 1),
])
def test_measure_nuclei(model_mpp, level0_mpp, origin, keep, expected):
    rgb = np.full(TWO_DISCS.shape + (3,), 200, np.uint8)
    nuclei = measure_nuclei(TWO_DISCS, rgb, model_mpp, level0_mpp, origin=origin, keep=keep)
    assert len(nuclei) == expected
    scale = model_mpp / level0_mpp
    first = nuclei[0]
    assert first.area_um2 == pytest.approx(np.pi * 8**2 * model_mpp**2, rel=0.1)
    assert first.area_px == pytest.approx(first.area_um2 / level0_mpp**2)
    assert first.centroid[0] == pytest.approx(origin[0] + 20.5 * scale, abs=0.5)
    assert first.centroid[1] == pytest.approx(origin[1] + 20.5 * scale, abs=0.5)
    x, y = first.polygon[:, 0].astype(np.float64), first.polygon[:, 1].astype(np.float64)
    shoelace = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    assert shoelace == pytest.approx(first.area_px, rel=0.15)
    assert 0 <= first.eccentricity < 0.3 and 0.9 < first.solidity <= 1.0


@pytest.mark.parametrize("sample", ["monuseg", "tnbc"])
def test_haematoxylin_is_rgb2hed_first_channel(sample):
    from tests.helpers import MONUSEG, TNBC

    from skimage.color import rgb2hed

    from bundle.pipeline.measure import haematoxylin

    rgb = read_rgb(sorted(((MONUSEG if sample == "monuseg" else TNBC) / "images").glob("*.png"))[0]).copy()
    rgb[:2, :2] = [[0, 0, 0], [255, 255, 255]]  # the clipped ends of the optical density
    expected = rgb2hed(rgb)[..., 0]
    got = haematoxylin(rgb)
    assert got.shape == rgb.shape[:2] and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height, width", [(64, 96), (600, 1100)])  # one label tile; several, with partial ones
def test_instance_tiff_and_mask_png_come_from_the_same_raster(tmp_path, height, width):
    from PIL import Image

    from bundle.io.writers import LABEL_TILE, write_instances, write_mask_png

    labels = np.zeros((height, width), np.int32)
    for k, (r, c) in enumerate([(20, 20), (40, 70), (height - 10, width - 12), (LABEL_TILE - 3, LABEL_TILE + 2)], start=1):
        if r < height and c < width:
            labels[disk((r, c), 8, shape=labels.shape)] = k
    nuclei = measure_nuclei(labels, np.full((height, width, 3), 128, np.uint8), 0.25, 0.25)
    for i, n in enumerate(nuclei, start=1):
        n.id = i
    mask = np.zeros((height, width), np.uint8)
    write_instances(tmp_path / "i.tif", nuclei, width, height, 0.25, mask)
    write_mask_png(tmp_path / "m.png", mask)
    instances = tifffile.imread(tmp_path / "i.tif")
    assert instances.shape == (height, width) and len(np.unique(instances)) == len(nuclei) + 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), np.where(instances > 0, 255, 0))


def test_geojson_feature_is_a_closed_qupath_detection():
    nucleus = measure_nuclei(TWO_DISCS, np.full(TWO_DISCS.shape + (3,), 128, np.uint8), 0.25, 0.25)[1]
    nucleus.id = 7
    feature = json.loads(json.dumps(nucleus_feature(nucleus)))
    ring = feature["geometry"]["coordinates"][0]
    assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 5
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"]["name"] == "Nucleus"
    assert set(feature["properties"]["measurements"]) == set(CSV_COLUMNS) - {"id", "centroid_x", "centroid_y"}


def _on_black_filler(rgb: np.ndarray, border: int = 64) -> np.ndarray:
    """``rgb`` framed by ``border`` pixels of a scanner's black filler (values 0-11: noise with a random hue)."""
    h, w, _ = rgb.shape
    canvas = np.random.default_rng(0).integers(0, 12, (h + 2 * border, w + 2 * border, 3)).astype(np.uint8)
    canvas[border:-border, border:-border] = rgb
    return canvas


@parameterized.expand([
    ("blank", np.full((128, 128, 3), WHITE, np.uint8), 0.0, 0.0),
    ("black", np.zeros((128, 128, 3), np.uint8), 0.0, 0.0),
    ("black_filler_alone", _on_black_filler(np.zeros((0, 0, 3), np.uint8)), 0.0, 0.0),
    ("tissue", SAMPLE_RGB, 0.9, 1.0),
])
def test_tissue_mask(_, rgb, low, high):
    assert low <= tissue_mask(rgb).mean() <= high


SAMPLE_GRAY = np.repeat(SAMPLE_RGB.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)


@parameterized.expand([("colour", SAMPLE_RGB), ("grayscale", SAMPLE_GRAY)])
def test_black_filler_around_tissue_is_not_tissue(_, rgb):
    mask = tissue_mask(_on_black_filler(rgb))
    inner = mask[64:-64, 64:-64]
    assert inner.mean() >= 0.9 * tissue_mask(rgb).mean() >= 0.8
    assert mask.sum() == inner.sum(), "no tissue in the black frame"


# -- reading -----------------------------------------------------------------------------------------------------
def test_slide_source_reads_regions_at_the_model_resolution(tmp_path):
    slide = SlideSource(write_slide(tmp_path / "s.tif", mosaic(), mpp=0.5, levels=2))
    assert (slide.width, slide.height, slide.mpp, slide.mpp_source) == (768, 512, 0.5, "file")
    region = slide.read_region(256, 128, 256, 256, (512, 512))  # 0.5 -> 0.25 um/px
    assert region.shape == (512, 512, 3) and region.dtype == np.uint8
    assert np.abs(region[::2, ::2].astype(int) - SAMPLE_RGB.astype(int)).mean() < 12
    thumb, down = slide.thumbnail(192)
    assert thumb.shape == (128, 192, 3) and down == 4.0


def make_bad_path(kind: str, folder: Path) -> Path:
    contents = {"empty.svs": b"", "notes.svs": b"not a slide", "notes.txt": b"x"}
    if kind == "folder":
        return folder
    path = folder / kind
    if kind in contents:
        path.write_bytes(contents[kind])
    return path


@parameterized.expand([
    ("nope.svs", "no such file"),
    ("empty.svs", "empty"),
    ("notes.svs", "not a whole-slide image"),
    ("notes.txt", "unsupported file type"),
    ("folder", "not a file"),
])
def test_open_source_rejects_bad_paths(kind, message):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = make_bad_path(kind, Path(tmp))
        with pytest.raises(SlideReadError, match=message):
            open_source(path)


def test_slide_without_mpp_is_refused_unless_given(tmp_path):
    path = write_slide(tmp_path / "nompp.tif", mosaic(), with_mpp=False)
    with pytest.raises(SlideReadError, match="no microns-per-pixel metadata.*--mpp"):
        open_source(path)
    assert open_source(path, mpp=0.25).mpp_source == "user"
    assert isinstance(open_source(first_sample()), ImageSource)


def _tiled(path: Path, data: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, data, tile=(128, 128), resolution=(4e4, 4e4), resolutionunit="CENTIMETER", **kwargs)
    return path


@parameterized.expand([
    ("uint16", lambda p: _tiled(p, (mosaic()[:256, :256].astype(np.uint16) * 16), photometric="rgb"),
     r"TIFF of uint16 RGB \(3 samples per pixel\) is not supported; convert it to 8-bit RGB first"),
    ("print_resolution", lambda p: write_slide(p, mosaic(), mpp=25400 / 300),
     r"the file's resolution \(84.7 um/px = 300 dpi\) is not a microscope's .* pass the slide's resolution with --mpp"),
])
def test_tiled_tiffs_that_would_give_garbage_are_refused(kind, write, message):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / f"{kind}.tif")
        with pytest.raises(SlideReadError, match=message):
            open_source(path)


@parameterized.expand([
    ("grayscale", lambda p: _tiled(p, mosaic()[:256, :256, 0], photometric="minisblack"), "grayscale TIFF replicated to RGB"),
    ("rgba", lambda p: _tiled(p, np.dstack([mosaic()[:256, :256], np.full((256, 256), 255, np.uint8)]), photometric="rgb",
                             extrasamples=["unassalpha"]), "RGBA TIFF converted to RGB (transparent pixels are read as black"),
])
def test_tiled_tiff_conversions_are_recorded(kind, write, conversion):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        slide = open_source(write(Path(tmp) / f"{kind}.tif"))
        assert isinstance(slide, SlideSource) and slide.conversion.startswith(conversion)
        assert slide.read_region(0, 0, 64, 64, (64, 64)).shape == (64, 64, 3)


@parameterized.expand([
    ("20x_in_cm", {"resolution": (2e4, 2e4), "resolutionunit": "CENTIMETER"}, 0.5, "file"),
    ("40x_in_inch", {"resolution": (101600, 101600), "resolutionunit": "INCH"}, 0.25, "file"),
    ("72_dpi", {"resolution": (72, 72), "resolutionunit": "INCH"}, 0.25, "assumed"),
    ("none", {}, 0.25, "assumed"),
])
def test_plain_tiff_resolution_tags_are_read_like_a_slides(kind, tags, mpp, source):
    """A striped (not tiled) TIFF gets its microns per pixel from the same tags as a tiled one; a print resolution
    (72 dpi) is no microscope's: the model's resolution is assumed, with a warning that names the tag."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.tif"
        tifffile.imwrite(path, SAMPLE_RGB, photometric="rgb", **tags)
        image = open_source(path)
        assert isinstance(image, ImageSource) and image.mpp == pytest.approx(mpp) and image.mpp_source == source


# -- segmenting --------------------------------------------------------------------------------------------------
def read_outputs(folder: Path, stem: str):
    summary = json.loads((folder / stem / f"{stem}_summary.json").read_text())
    geo = json.loads((folder / stem / f"{stem}.geojson").read_text())
    with open(folder / stem / f"{stem}_nuclei.csv") as f:
        rows = list(csv.DictReader(f))
    labels = tifffile.imread(folder / stem / f"{stem}_instances.tif")
    return summary, geo, rows, labels


def test_slide_outputs_agree(segmenter, tmp_path):
    glass = np.full((512, 256, 3), WHITE, np.uint8)
    path = write_slide(tmp_path / "slide.tif", np.concatenate([mosaic(), glass], axis=1), mpp=0.25, levels=2)
    segmenter.segment(path, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slide"], "the nuclei's working folder is gone"
    summary, geo, rows, labels = read_outputs(tmp_path / "out", "slide")
    n = summary["nucleus_count"]
    assert n > 15, "the crop holds dozens of nuclei"
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(rows) == n
    assert labels.shape == (512, 1024) and labels.dtype == np.uint32
    assert len(np.unique(labels[labels > 0])) >= n - 2  # tiny polygons may rasterise to nothing
    assert summary["tiles_skipped_background"] > 0, "tiles of white glass are skipped"
    xs = np.array([float(r["centroid_x"]) for r in rows])
    ys = np.array([float(r["centroid_y"]) for r in rows])
    assert xs.min() >= 250 and xs.max() <= 518 and ys.min() >= 122 and ys.max() <= 390, "nuclei lie on the tissue"
    assert summary["mpp_source"] == "file" and summary["nuclei_per_mm2_tissue"] > 0
    assert (tmp_path / "out" / "slide" / "slide_overlay.png").is_file()


def test_tiles_merge_without_duplicates(segmenter, tmp_path):
    """The same image in one tile and in 64-pixel tiles: the same nuclei, none twice."""
    path = tmp_path / "crop.png"
    path.write_bytes(first_sample().read_bytes())
    whole = segmenter.segment(path, tmp_path / "whole")
    segmenter.tile_size, segmenter.margin = 64, 48
    try:
        tiled = segmenter.segment(path, tmp_path / "tiled")
    finally:
        segmenter.tile_size, segmenter.margin = 256, 64
    assert tiled["tiles"] == 16
    _, _, rows, _ = read_outputs(tmp_path / "tiled", "crop")
    centres = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in rows])
    dist = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(len(centres)) * 1e9
    assert dist.min() > 2.0, "no nucleus reported twice"
    assert abs(tiled["nucleus_count"] - whole["nucleus_count"]) <= max(2, 0.1 * whole["nucleus_count"])


class DarkIsNucleus(torch.nn.Module):
    """A stand-in network: nucleus logit high where the image is dark (synthetic discs on a pink background)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 30.0 * (0.45 - x[:, :3].mean(1, keepdim=True))


def _dark_segmenter(tile_size: int = 512) -> NucleusSegmenter:
    """The pipeline with :class:`DarkIsNucleus` in tiles of ``tile_size`` model pixels (windows of 272, margin 64)."""
    from monai.inferers import SlidingWindowInferer
    from bundle.pipeline.split import InstanceSplitter

    return NucleusSegmenter(DarkIsNucleus(), SlidingWindowInferer((272, 272), 2, 0.1, mode="gaussian"), InstanceSplitter(min_size=10),
                            patch_size=(272, 272), tile_size=tile_size, margin=64, progress=False, tile_workers=0)


def _found_discs(centres: np.ndarray, radius: float, side: int, mpp: float, tmp: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Dark discs at ``centres`` (x, y; pixel indices) on a ``side``-pixel pink image at ``mpp``, segmented in tiles
    of 512 model pixels by :class:`DarkIsNucleus`: (found centroids, index of the nearest true centre of each)."""
    image = np.empty((side, side, 3), np.uint8)
    image[:] = (230, 170, 200)
    for cx, cy in centres:
        image[disk((cy, cx), radius + 1e-6, shape=image.shape[:2])] = (70, 30, 110)
    segmenter = _dark_segmenter()
    Image.fromarray(image).save(tmp / "discs.png")
    summary = segmenter.segment(tmp / "discs.png", tmp / "out", mpp=mpp)
    assert summary["tiles"] >= 9
    _, _, rows, _ = read_outputs(tmp / "out", "discs")
    found = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in rows])
    truth = centres + 0.5  # pixel centres
    return found, np.sqrt(((found[:, None] - truth[None]) ** 2).sum(-1)).argmin(1)


@pytest.mark.parametrize("mpp", [0.3, 0.2527])  # resampled tiles: 1.2x, and an Aperio-like 1.0108x
def test_resampled_tiles_keep_nucleus_positions(mpp, tmp_path):
    """Discs on a grid through tiles read at a scale that is not a whole number of pixels: every disc is found
    once, where it is, with no drift across a tile (0.7.3: up to 0.24 px, duplicating or losing nuclei at tile edges)."""
    rng = np.random.default_rng(0)
    side, step, radius = 1400, round(30 * 0.25 / mpp), 8 * 0.25 / mpp
    grid = range(int(radius) + 4, side - int(radius) - 4, step)  # whole discs only: a cut one has another centroid
    centres = np.array([(cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2)) for cy in grid for cx in grid])
    found, nearest = _found_discs(centres, radius, side, mpp, tmp_path)
    error = found - (centres + 0.5)[nearest]
    assert np.abs(error).max() < 0.7 and np.abs(error.mean(0)).max() < 0.05, "no drift across tiles"
    assert len(nearest) == len(set(nearest)) == len(centres), "every disc once"


@pytest.mark.parametrize("mpp", [0.3, 0.2527])
def test_nuclei_on_tile_borders_are_kept_once(mpp, tmp_path):
    """Discs whose centres lie within 0.6 px of the borders between tiles, where two resampled tiles disagree on
    which side a centroid falls: each is kept by exactly one tile (0.7.4: some by both)."""
    side, radius = 1400, 8 * 0.25 / mpp
    borders = [k * 512 * 0.25 / mpp for k in (1, 2)]  # level-0 positions of the tiles' core edges
    along = np.arange(24.0, side - 24.0, 3 * radius)
    offsets = np.linspace(-0.6, 0.6, len(along))
    centres = [(b + o - 0.5, a) for b in borders for a, o in zip(along, offsets) if min(abs(a - c) for c in borders) > 3 * radius]
    centres += [(a, b + o - 0.5) for b in borders for a, o in zip(along, offsets[::-1]) if min(abs(a - c) for c in borders) > 3 * radius]
    found, nearest = _found_discs(np.array(centres), radius, side, mpp, tmp_path)
    assert len(nearest) == len(set(nearest)) == len(centres), f"{len(found)} found for {len(centres)} discs"


@pytest.mark.parametrize("centre_x", [514.0, 520.0, 530.0])  # 2, 8 and 18 px into the tile without tissue
def test_nucleus_beside_tissue_in_a_tile_without_tissue_is_kept(centre_x, tmp_path):
    """Two tiles of 512 model pixels, tissue (on the thumbnail) only in the left one, ending 12 px before their
    common edge; a nucleus whose centroid lies in the right tile, near that tissue, is found once, as an untiled
    run finds it (0.7.6 skipped the right tile and lost it: the left tile measured it but could not own it)."""
    image = np.empty((512, 1024, 3), np.uint8)
    image[:] = (230, 170, 200)
    image[disk((256, centre_x), 8, shape=image.shape[:2])] = (70, 30, 110)
    Image.fromarray(image).save(tmp_path / "edge.png")
    tissue = np.zeros((512, 1024), bool)
    tissue[:, :500] = True
    found = {}
    for tile_size in (512, 1024):
        segmenter = _dark_segmenter(tile_size)
        source = open_source(tmp_path / "edge.png", mpp=0.25)
        region = segmenter.segment_region(source, tissue=tissue, tissue_down=1.0)
        found[tile_size] = [tuple(n.centroid) for n in region.nuclei]
        assert region.processed == (2 if tile_size == 512 else 1) and region.skipped == 0
        region.nuclei.close()
    assert len(found[512]) == len(found[1024]) == 1
    assert np.allclose(found[512][0], (centre_x + 0.5, 256.5), atol=0.5) and np.allclose(found[512], found[1024], atol=0.5)


def test_tile_far_from_tissue_is_skipped(tmp_path):
    """Tiles whose cores lie further than ``BORDER_REACH`` (32 model px) from the thumbnail's tissue are not computed."""
    Image.fromarray(np.full((512, 1536, 3), 230, np.uint8)).save(tmp_path / "glass.png")
    tissue = np.zeros((512, 1536), bool)
    tissue[:, :470] = True
    segmenter = _dark_segmenter()
    region = segmenter.segment_region(open_source(tmp_path / "glass.png", mpp=0.25), tissue=tissue, tissue_down=1.0)
    assert (region.processed, region.skipped) == (1, 2)
    region.nuclei.close()


def test_windows_without_tissue_are_skipped_with_the_same_nuclei(segmenter, tmp_path):
    """One 1024-pixel tile, tissue in its top-left corner: most windows are glass and are not computed; the
    nuclei are exactly those of computing every window."""
    plane = np.full((1024, 1024, 3), WHITE, np.uint8)
    plane[:256, :256] = SAMPLE_RGB[:256, :256]
    path = write_slide(tmp_path / "corner.tif", plane, mpp=0.25, levels=2)
    segmenter.tile_size = 1024
    try:
        gated = segmenter.segment(path, tmp_path / "gated")
        segmenter.skip_background_windows = False
        plain = segmenter.segment(path, tmp_path / "plain")
    finally:
        segmenter.tile_size, segmenter.skip_background_windows = 256, True
    assert gated["windows_skipped_background"] >= 8 and plain["windows_skipped_background"] == 0
    assert gated["nucleus_count"] == plain["nucleus_count"] > 15
    _, _, gated_rows, gated_labels = read_outputs(tmp_path / "gated", "corner")
    _, _, plain_rows, plain_labels = read_outputs(tmp_path / "plain", "corner")
    assert gated_rows == plain_rows and np.array_equal(gated_labels, plain_labels)


def test_blank_slide_gives_empty_outputs_and_a_clear_summary(segmenter, tmp_path):
    path = write_slide(tmp_path / "blank.tif", np.full((300, 400, 3), WHITE, np.uint8))
    report = segmenter.run(path, tmp_path / "out")
    summary, geo, rows, labels = read_outputs(tmp_path / "out", "blank")
    assert report.skipped == [] and summary["nucleus_count"] == 0 and summary["message"] == "no tissue detected"
    assert summary["tiles_processed"] == 0 and geo["features"] == [] and rows == [] and not labels.any()


def test_batch_skips_bad_slides_and_keeps_the_good(segmenter, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_slide(folder / "good.tif", mosaic()[96:416, 224:544])
    data = good.read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "fake.svs").write_text("not a slide")
    write_slide(folder / "nompp.tif", mosaic()[:64, :64], with_mpp=False)
    report = segmenter.run(folder, tmp_path / "out")
    assert [Path(s["input"]).name for s in report.written] == ["good.tif"]
    reasons = {Path(s["input"]).name: s["reason"] for s in report.skipped}
    assert set(reasons) == {"truncated.tif", "fake.svs", "nompp.tif"}
    assert all(name in reason for name, reason in reasons.items()), "each reason names its file"
    assert "microns-per-pixel" in reasons["nompp.tif"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "scripts/segment_slides.py", *map(str, args), "--no_progress"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli(tmp_path):
    missing = run_cli(tmp_path / "missing.svs", "-o", tmp_path / "o")
    assert missing.returncode == 1 and "missing.svs: no such file" in missing.stderr and "Traceback" not in missing.stderr
    folder = tmp_path / "in"
    folder.mkdir()
    write_slide(folder / "nompp.tif", mosaic()[128:384, 256:512], with_mpp=False)
    refused = run_cli(folder, "-o", tmp_path / "o")
    assert refused.returncode == 2 and "microns-per-pixel" in refused.stderr
    Image.fromarray(np.full((64, 64, 3), WHITE, np.uint8)).save(folder / "blank.png")
    (folder / "notes.txt").write_text("not an image\n")
    done = run_cli(folder, "-o", tmp_path / "o", "--mpp", "0.25")
    assert done.returncode == 0, done.stderr
    assert "nuclei" in done.stdout and (tmp_path / "o" / "nompp" / "nompp.geojson").is_file()
    assert f"{folder / 'blank.png'}: 0 nuclei, no tissue detected," in done.stdout
    assert f"ignored: {folder / 'notes.txt'}: not an image or slide" in done.stderr


@pytest.mark.skipif(not (SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs").is_file(), reason="needs ../shared/data/wsi")
def test_real_svs_region(segmenter, tmp_path):
    """The Aperio SVS (0.499 um/px): MPP read from the file, a 20x region resampled to the model's 40x."""
    slide = open_source(SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs")
    assert slide.mpp_source == "file" and slide.mpp == pytest.approx(0.499)
    rgb = slide.read_region(1000, 1000, 128, 128, (256, 256))
    path = tmp_path / "region.png"
    from PIL import Image

    Image.fromarray(rgb).save(path)
    segmenter.segment(path, tmp_path / "out", mpp=0.2495)
    summary, geo, rows, _ = read_outputs(tmp_path / "out", "region")
    assert summary["nucleus_count"] > 5 and len(geo["features"]) == len(rows)


def test_bundle_config_runs_on_a_given_input(tmp_path):
    """``python -m monai.bundle run`` with ``configs/inference.json`` on one file and a given resolution."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--meta_file", "configs/metadata.json", "--input_path", str(first_sample()), "--output_dir", str(tmp_path),
           "--mpp", "0.25", "--progress", "False"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = first_sample().stem
    summary = json.loads((tmp_path / stem / f"{stem}_summary.json").read_text())
    assert summary["mpp_source"] == "user" and summary["nucleus_count"] > 10
    assert json.loads((tmp_path / "report.json").read_text())["skipped"] == []
