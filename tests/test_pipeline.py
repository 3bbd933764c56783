"""The one nucleus pipeline (bundle/pipeline, bundle/io): its stages, and bad input through the bundle command line
and ``scripts/segment_slides.py`` (the Deploy app's cases are in test_deploy.py, MONAI Label's in
test_monailabel.py). The rule: a one-line message naming the file and the problem, the other inputs processed,
``report.json`` always written, exit status 0 (all written), 1 (nothing processed) or 2 (some skipped)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from bundle.config_io import load_config
from bundle.errors import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, InputError, find_input_error
from bundle.io.images import ImageReadError, read_rgb_checked
from bundle.io.slides import check_mpp, open_source, tissue_mask
from bundle.pipeline.check import check_output_dir, list_inputs, output_names
from bundle.pipeline.predict import BACKGROUND_LOGIT, TilePredictor, TissueGatedNetwork
from bundle.pipeline.split import InstanceSplitter
from bundle.pipeline.tiles import TileGrid
from tests.helpers import LIGHT_OVERRIDES, MONUSEG, ROOT, first_sample, make_pipeline_cases, sample_rgb, write_png_header_only

PY = sys.executable
META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
# an untrained light GRU-Net: the pipeline's geometry, fast (the shipped model runs in the batch tests below)
LIGHT = {**LIGHT_OVERRIDES, "checkpoint": None, "progress": False, "bf16": False}  # float32: outputs compared exactly


# -- stages ---------------------------------------------------------------------------------------------------
TILE_CASES = [
    # width, height, size, margin
    (1030, 300, 1024, 64),
    (300, 1030, 1024, 64),
    (1024, 1024, 1024, 64),
    (2049, 1025, 1024, 64),
    (40, 60, 1024, 64),
    (517, 333, 128, 48),
]


@pytest.mark.parametrize("width, height, size, margin", TILE_CASES)
def test_tile_grid_covers_once_with_full_windows(width, height, size, margin):
    cover = np.zeros((height, width), np.int32)
    grid = TileGrid(width, height, size, margin)
    tiles = list(grid)
    assert len(tiles) == len(grid) == math.ceil(width / size) * math.ceil(height / size)
    for (cx0, cy0, cx1, cy1), (rx0, ry0, rx1, ry1) in tiles:
        cover[cy0:cy1, cx0:cx1] += 1
        assert rx0 <= cx0 and ry0 <= cy0 and rx1 >= cx1 and ry1 >= cy1, "the window holds its core"
        assert 0 <= rx0 and 0 <= ry0 and rx1 <= width and ry1 <= height
        assert rx1 - rx0 == min(width, size + 2 * margin) and ry1 - ry0 == min(height, size + 2 * margin), "edge windows reach inward"
    assert (cover == 1).all()


@pytest.mark.parametrize("kwargs", [dict(width=0, height=5, size=4, margin=0), dict(width=5, height=5, size=0, margin=0), dict(width=5, height=5, size=4, margin=-1)])
def test_tile_grid_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        TileGrid(**kwargs)


@pytest.mark.parametrize("names, expected", [
    (["a.png", "b.tif"], ["a", "b"]),
    (["x.png", "x.tif"], ["x_png", "x_tif"]),
    (["x.png", "x.tif", "x_png.jpg"], ["x_png", "x_tif", "x_png_"]),
    (["_cohort.png", "cohort.json.tif", "report.png"], ["_cohort_png", "cohort.json_tif", "report"]),  # the run's own files
])
def test_output_names_never_collide(names, expected):
    assert list(output_names([Path("/in") / n for n in names]).values()) == expected


@pytest.mark.parametrize("mpp, message", [
    (0, "positive"), (-1, "positive"), (float("nan"), "positive"), ("abc", "number"), (1000, "implausible"), (84.7, "implausible"),
    (0.001, "implausible"),
])
def test_check_mpp_refuses_bad_resolutions(mpp, message):
    with pytest.raises(InputError, match=message):
        check_mpp(mpp)


@pytest.mark.parametrize("mpp", [None, 0.25, "0.5", 2.0])
def test_check_mpp_accepts(mpp):
    assert check_mpp(mpp) == (None if mpp is None else float(mpp))


def test_input_checks_name_the_path(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=f"{tmp_path}: no images or slides"):
        list_inputs(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(InputError, match="output folder is not writable"):
        check_output_dir(tmp_path / "a_file" / "out")


def test_broken_links_and_folders_named_like_images_are_reported(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "a").mkdir()  # an earlier run's output folder, when the output folder is the input folder
    (tmp_path / "report.json").write_text("{}")  # and its report
    inputs, ignored = list_inputs(tmp_path)
    assert [p.name for p in inputs] == ["a.png", "link.png"]
    assert ignored == [
        {"input": str(tmp_path / "broken.png"), "reason": f"broken link (its target {tmp_path / 'gone.png'} does not exist)"},
        {"input": str(tmp_path / "folder.png"), "reason": "a folder, not an image or slide"},
    ]
    for name in ("a.png", "link.png"):
        (tmp_path / name).unlink()
    with pytest.raises(InputError, match=r"no images or slides .* in this folder; 1 broken link\(s\): broken.png$"):
        list_inputs(tmp_path)


def test_report_is_saved_when_due_and_at_the_end(tmp_path):
    """A long batch does not rewrite report.json after every input; the end of the batch saves it whole."""
    from bundle.pipeline.report import RunReport

    report = RunReport(tmp_path, save_interval=3600)
    for k in range(3):
        report.add_written({"input": f"{k}.png", "nucleus_count": k})
    assert len(json.loads((tmp_path / "report.json").read_text())["written"]) == 1, "the first change is saved at once"
    report.save()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["written"]) == 3 and saved["nucleus_count"] == 3 and list(tmp_path.iterdir()) == [tmp_path / "report.json"]


@pytest.mark.parametrize("kwargs", [dict(threshold=0.0), dict(threshold=1.0), dict(min_size=-1), dict(marker_height=-0.1)])
def test_instance_splitter_checks_settings(kwargs):
    with pytest.raises(ValueError):
        InstanceSplitter(**kwargs)


def test_header_bomb_is_refused_before_decoding(tmp_path):
    bomb = write_png_header_only(tmp_path / "bomb.png", 60000, 60000)
    assert bomb.stat().st_size < 2000
    with pytest.raises(ImageReadError, match="bomb.png: image too large"):
        open_source(bomb)
    # under PIL's guard but over the bundle's limit: refused from the header too
    Image.fromarray(sample_rgb()).save(tmp_path / "crop.png")
    with pytest.raises(ImageReadError, match="over the limit of 0.01 megapixels"):
        open_source(tmp_path / "crop.png", max_pixels=10_000)


@pytest.mark.parametrize("case, conversion", [
    ("gray", "grayscale image replicated to RGB"),
    ("two_channel", "grayscale+alpha image converted to RGB (alpha dropped)"),
    ("multipage_gray", "grayscale image replicated to RGB; page 1 of 2 read (the largest, 256 x 256); the others are not segmented"),
])
def test_grayscale_inputs_are_converted_and_have_tissue(tmp_path, case, conversion):
    path = make_pipeline_cases(tmp_path)[case]
    rgb, info = read_rgb_checked(path)
    assert rgb.shape == (256, 256, 3) and info.conversion == conversion
    source = open_source(path)
    assert source.conversion == conversion
    assert tissue_mask(source.thumbnail(2048)[0]).mean() > 0.3, "a gray image's tissue is found by its darkness"


def test_white_image_has_no_tissue():
    assert not tissue_mask(np.full((64, 64, 3), 250, np.uint8)).any()


@pytest.fixture(scope="module")
def light_segmenter():
    torch.manual_seed(0)
    return load_config("inference", overrides=LIGHT).get_parsed_content("segmenter")


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (40, 60), (300, 1030), (1030, 300), (129, 300)])
def test_predictor_any_tile_size(light_segmenter, shape):
    predict: TilePredictor = light_segmenter.predictor
    prob, distance = predict(np.full(shape + (3,), 128, np.uint8))
    assert prob.shape == shape and distance.shape == shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0


class CountingNetwork(torch.nn.Module):
    """(B, 3, H, W) -> (B, 2, H, W): the channel means, counting the windows it is called on."""

    def __init__(self):
        super().__init__()
        self.windows = 0

    def forward(self, x):
        self.windows += x.shape[0]
        return x[:, :2] + x[:, 2:3]


GATE_CASES = [
    # tissue per window (B = 4), windows computed
    ([1, 1, 1, 1], 4),
    ([0, 1, 0, 1], 2),
    ([0, 0, 0, 0], 0),
]


@pytest.mark.parametrize("tissue, computed", GATE_CASES)
def test_tissue_gated_network(tissue, computed):
    image = torch.rand(4, 3, 8, 10)
    mask = torch.zeros(4, 1, 8, 10)
    for i, t in enumerate(tissue):
        mask[i, 0, 3, 4] = t  # one tissue pixel is enough
    net = CountingNetwork()
    gate = TissueGatedNetwork(net, out_channels=2)
    out = gate(torch.cat([image, mask], dim=1))
    assert out.shape == (4, 2, 8, 10) and net.windows == computed and gate.skipped == 4 - computed
    for i, t in enumerate(tissue):
        expected = net(image[i : i + 1])[0] if t else torch.full((2, 8, 10), BACKGROUND_LOGIT)
        assert torch.equal(out[i], expected)


def test_predictor_skips_windows_without_tissue_and_keeps_the_rest(light_segmenter):
    """A tile whose right half is glass: the windows there are not computed; where tissue is, the maps are the
    ones of the ungated network (no window of tissue is blended with a skipped one)."""
    predict: TilePredictor = light_segmenter.predictor
    rgb = np.random.default_rng(0).integers(0, 255, (256, 768, 3), dtype=np.uint8)
    tissue = np.zeros((256, 768), bool)
    tissue[:, :384] = True  # the segmenter's mask reaches half a window beyond the tissue
    plain, plain_distance = predict(rgb)
    before = predict.windows_skipped
    gated, gated_distance = predict(rgb, tissue=tissue)
    assert predict.windows_skipped > before
    assert np.array_equal(gated[:, :320], plain[:, :320]) and np.array_equal(gated_distance[:, :320], plain_distance[:, :320])
    assert gated[:, -64:].max() < 1e-6, "skipped windows predict background"
    with pytest.raises(ValueError, match="tissue must be"):
        predict(rgb, tissue=tissue[:, :100])


@pytest.mark.parametrize("height, width", [(300, 1030), (1030, 300), (1025, 20), (16, 2049)])
def test_every_image_size_segments_including_edge_tiles(light_segmenter, tmp_path, height, width):
    """Sides of 1024k + 1..21 px: the edge tiles are read with full context (the 0.2.0 padding error)."""
    from tests.helpers import tiled_tissue

    path = tmp_path / "img.png"
    Image.fromarray(tiled_tissue(height, width)).save(path)
    summary = light_segmenter.segment(path, tmp_path / "out")
    labels = tifffile.imread(tmp_path / "out" / "img" / "img_instances.tif")
    assert labels.shape == (height, width) and summary["tiles"] == math.ceil(width / 1024) * math.ceil(height / 1024)


def test_images_below_the_minimum_side_are_refused(light_segmenter, tmp_path):
    Image.fromarray(sample_rgb()[:10, :60]).save(tmp_path / "strip.png")
    with pytest.raises(InputError, match="strip.png: 60 x 10 pixels .* below the minimum of 16"):
        light_segmenter.segment(tmp_path / "strip.png", tmp_path / "out")


def test_find_input_error_looks_inside_wrapped_errors():
    try:
        try:
            raise InputError("x.png: bad")
        except InputError as inner:
            raise RuntimeError("Failed to instantiate") from inner
    except RuntimeError as outer:
        assert str(find_input_error(outer)) == "x.png: bad"
    assert find_input_error(RuntimeError("other")) is None


@pytest.mark.parametrize(
    "packages, message",
    [
        ({"json": "json"}, None),
        ({"json": "json", "no_such_module_xyz": "no-such-package"}, "training: no-such-package not installed; pip install -r requirements-train.txt"),
    ],
)
def test_require_packages_names_what_is_missing_and_where_it_is(packages, message):
    from bundle.errors import require_packages

    if message is None:
        assert require_packages("training", packages) is None
    else:
        with pytest.raises(InputError, match=re.escape(message)):
            require_packages("training", packages)


# -- bad input through the command lines ------------------------------------------------------------------------
def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def with_peak_rss(cmd: list) -> list:
    """``cmd`` run by a fresh Python that prints its child's peak RSS (MB) on the last line of stdout."""
    code = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(rc)")
    return [PY, "-c", code, *cmd]


def bundle_cli(*args) -> list:
    return [PY, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *META, *map(str, args), "--progress", "False"]


def segment_slides(*args) -> list:
    return [PY, "scripts/segment_slides.py", *map(str, args), "--no_progress"]


def run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)


TRAINING_ONLY = ("ignite", "mlflow", "transformers", "matplotlib")  # requirements-train.txt, not requirements.txt


def test_inference_runs_without_the_training_packages(tmp_path):
    """Inference by the bundle CLI in a process where requirements-train.txt's packages cannot be imported (as in an
    environment made from requirements.txt alone); the workflows that need them stop with one line."""
    block = f"import runpy, sys; sys.modules.update(dict.fromkeys({TRAINING_ONLY!r}));"
    out = tmp_path / "out"
    main = block + " sys.argv = ['monai.bundle', *sys.argv[1:]]; runpy.run_module('monai.bundle', run_name='__main__')"
    cmd = [PY, "-c", main, "run", "--config_file", "['configs/inference.json','configs/compact.json']", *META,
           "--dataset_dir", MONUSEG / "images", "--output_dir", out, "--progress", "False", "--runtime", "torch"]
    proc = run([str(c) for c in cmd])
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert len(json.loads((out / "report.json").read_text())["written"]) == len(list((MONUSEG / "images").glob("*.png")))
    train = [PY, "-c", main, "run", "training", "--config_file", "configs/train.json", *META, "--dataset_dir", MONUSEG]
    proc = run([str(c) for c in train])
    assert proc.returncode == EXIT_ERROR and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: training and evaluation: pytorch-ignite not installed; pip install -r requirements-train.txt")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A folder of ordinary inputs that broke a 0.2.0 batch, next to good ones."""
    folder = tmp_path_factory.mktemp("batch")
    paths = make_pipeline_cases(folder)
    paths["edge_strip"].unlink()  # 73 s with the shipped model on 2 cores: tested above with the light network
    rgb = sample_rgb()
    Image.fromarray(rgb).save(folder / "x.png")
    tifffile.imwrite(folder / "x.tif", rgb[::-1].copy(), photometric="rgb")  # same stem, other pixels
    Image.fromarray(rgb[40:100, 10:90]).save(folder / "small.png")  # 80 x 60: under the 86 px of 0.2.0
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.mark.parametrize("door", ["bundle_cli", "segment_slides"])
def test_batch_of_bad_inputs(batch, tmp_path, door):
    out = tmp_path / "out"
    cmd = bundle_cli("--dataset_dir", batch, "--output_dir", out) if door == "bundle_cli" else segment_slides(batch, "-o", out)
    proc = run(with_peak_rss(cmd))
    assert proc.returncode == EXIT_SKIPPED, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    written = {Path(s["input"]).name: s for s in report["written"]}
    assert set(written) == {"tiny.png", "gray.png", "two_channel.tif", "multipage_gray.tif", "x.png", "x.tif", "small.png"}
    (skipped,) = report["skipped"]
    assert skipped["input"].endswith("bomb.png") and "bomb.png: image too large" in skipped["reason"]
    assert [Path(s["input"]).name for s in report["ignored"]] == ["notes.txt"]
    assert {Path(c["input"]).name for c in report["conversions"]} == {"gray.png", "two_channel.tif", "multipage_gray.tif"}
    assert report["exit_status"] == EXIT_SKIPPED and report["nucleus_count"] == sum(s["nucleus_count"] for s in written.values())
    for name in ("gray.png", "two_channel.tif", "multipage_gray.tif", "x.png", "small.png"):
        assert written[name]["nucleus_count"] >= (1 if name == "small.png" else 10) and "message" not in written[name], name
    assert written["x.png"]["name"] == "x_png" and written["x.tif"]["name"] == "x_tif"
    x_png = tifffile.imread(out / "x_png" / "x_png_instances.tif")
    x_tif = tifffile.imread(out / "x_tif" / "x_tif_instances.tif")
    assert (x_png > 0).mean() > 0.05 and not np.array_equal(x_png > 0, x_tif > 0), "two inputs, two results"
    peak = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert peak < 2500, f"peak RSS {peak:.0f} MB: memory is bounded by the tile, not what a header claims"


@pytest.mark.parametrize("door", ["bundle_cli", "segment_slides"])
def test_header_bomb_alone_keeps_memory_low(tmp_path, door):
    bomb = write_png_header_only(tmp_path / "bomb.png", 60000, 60000)
    out = tmp_path / "out"
    cmd = bundle_cli("--input_path", bomb, "--output_dir", out) if door == "bundle_cli" else segment_slides(bomb, "-o", out)
    proc = run(with_peak_rss(cmd))
    assert proc.returncode == EXIT_SKIPPED and "bomb.png: image too large" in proc.stdout + proc.stderr  # the log goes to stdout
    peak = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert peak < 2000, f"peak RSS {peak:.0f} MB"  # 0.2.0: 23 GB and an out-of-memory kill
    assert json.loads((out / "report.json").read_text())["skipped"]


FATAL = [
    # case, CLI arguments (in, out, extra) as built in the test, expected message
    ("missing_input", "no such file or folder"),
    ("empty_folder", "no images or slides"),
    ("text_checkpoint", "not a readable model checkpoint"),
    ("zero_mpp", "must be a positive number"),
    ("negative_mpp", "must be a positive number"),
    ("unwritable_output", "output folder is not writable"),
]


@pytest.mark.parametrize("door", ["bundle_cli", "segment_slides"])
@pytest.mark.parametrize("case, message", FATAL)
def test_fatal_input_errors_are_one_line(tmp_path, door, case, message):
    folder = tmp_path / "in"
    folder.mkdir()
    if case != "empty_folder":
        (folder / "crop.png").write_bytes(first_sample().read_bytes())
    src, out, opts = (tmp_path / "missing" if case == "missing_input" else folder), tmp_path / "out", {}
    if case == "text_checkpoint":
        (tmp_path / "model.pt").write_text("not a checkpoint\n")
        opts = {"--checkpoint" if door == "bundle_cli" else "--model": tmp_path / "model.pt"}
    elif case in ("zero_mpp", "negative_mpp"):
        opts = {"--mpp": 0 if case == "zero_mpp" else -0.5}
    elif case == "unwritable_output":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"
    extra = [str(v) for kv in opts.items() for v in kv]
    cmd = bundle_cli("--input_path", src, "--output_dir", out, *extra) if door == "bundle_cli" else segment_slides(src, "-o", out, *extra)
    proc = run(cmd)
    assert proc.returncode == EXIT_ERROR, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if case != "unwritable_output" and case != "text_checkpoint" and "mpp" not in case:
        assert json.loads((out / "report.json").read_text())["written"] == [], "report.json is written"


@pytest.mark.parametrize("args, message", [
    (["--sw_overlap", "1.5"], "error: --sw_overlap must be in [0, 0.9], got 1.5"),
    (["--sw_overlap", "-0.1"], "error: --sw_overlap must be in [0, 0.9], got -0.1"),
    (["--sw_overlap", "0.99"], "error: --sw_overlap must be in [0, 0.9], got 0.99"),  # 10,000 windows a window's area
    (["--device", "bogus"], "error: unknown device 'bogus'; expected cpu, cuda or cuda:<index>"),
    (["--device", "cpu' if print('evaluated') else 'cpu"], "error: unknown device"),
    (["--mpp", "abc"], "error: argument --mpp: invalid float value: 'abc' (see segment_slides.py --help)"),  # not argparse's 2
])
def test_segment_slides_refuses_bad_options_in_one_line(tmp_path, args, message):
    proc = run(segment_slides(first_sample(), "-o", tmp_path, *args))
    assert proc.returncode == EXIT_ERROR and "Traceback" not in proc.stderr and "evaluated" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(message)


def test_organ_option_is_a_name_never_evaluated(tmp_path):
    """The organ goes to the segmenter as text: the config parser would evaluate ``$...`` and resolve ``@...``."""
    marker = tmp_path / "evaluated"
    proc = run(segment_slides(first_sample(), "-o", tmp_path / "out", "--organ", f"$open('{marker}', 'w') and 'breast'"))
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert not marker.exists()
    summary = json.loads((tmp_path / "out" / "report.json").read_text())["written"][0]
    assert summary["organ"] == f"$open('{marker}', 'w') and 'breast'"


def test_main_job_exits_zero_when_all_written(tmp_path):
    proc = run(bundle_cli("--output_dir", tmp_path))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["written"]) == 4 and report["skipped"] == [] and report["nucleus_count"] > 100
    for s in report["written"]:
        assert s["nuclei_per_mm2_tissue"] > 0 and set(s["files"]) == {"instances", "mask", "geojson", "csv", "overlay"}


def test_stain_normalisation_and_tta_apply_in_the_pipeline(tmp_path):
    """Switched on in configs/inference.json, both reach every entry point through the segmenter's predictor."""
    from bundle.data.transforms import MacenkoNormalize

    plain = load_config("inference", overrides=LIGHT).get_parsed_content("segmenter")
    assert plain.predictor.stain_normalizer is None and plain.predictor.inferer.flips == [()]
    segmenter = load_config("inference", overrides={**LIGHT, "stain_normalization": True, "tta": True}).get_parsed_content("segmenter")
    assert isinstance(segmenter.predictor.stain_normalizer, MacenkoNormalize) and len(segmenter.predictor.inferer.flips) == 4
    segmenter.network.load_state_dict(plain.network.state_dict())
    rgb = sample_rgb()
    prob_plain, _ = plain.predictor(rgb)
    prob, _ = segmenter.predictor(rgb)
    assert prob.shape == prob_plain.shape and not np.allclose(prob, prob_plain), "normalised and flipped input changes the maps"
    summary = segmenter.segment(first_sample(), tmp_path)
    assert Path(summary["files"]["instances"]).is_file()


def test_runtimes(light_segmenter):
    from bundle.pipeline.runtimes import network_for_runtime

    net = light_segmenter.network
    assert network_for_runtime(net, "torch", (128, 128)) is net
    with pytest.raises(ValueError, match="runtime must be one of"):
        network_for_runtime(net, "tensorrt", (128, 128))
    with pytest.raises(ValueError, match="eager networks"):
        network_for_runtime(torch.jit.script(net), "openvino", (128, 128))


@pytest.mark.parametrize("bf16, device, expected", [(True, "cpu", True), (False, "cpu", False), (False, "cuda", False)])
def test_resolve_bf16(bf16, device, expected):
    from bundle.pipeline.runtimes import resolve_bf16

    assert resolve_bf16(bf16, device) is expected


def test_bf16_auto_follows_the_hardware():
    from bundle.pipeline.runtimes import cpu_bf16_is_fast, cpu_vendor, resolve_bf16

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    if flags:
        amd = "AuthenticAMD" in flags
        assert cpu_vendor() == ("AuthenticAMD" if amd else "GenuineIntel" if "GenuineIntel" in flags else cpu_vendor())
        assert cpu_bf16_is_fast() == ("amx_bf16" in flags or ("avx512_bf16" in flags and amd))
    assert resolve_bf16("auto", "cpu") == cpu_bf16_is_fast()
    assert resolve_bf16("auto", "cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto', got 'yes'"):
        resolve_bf16("yes", "cpu")
    default = {**LIGHT_OVERRIDES, "checkpoint": None, "progress": False, "device": "$torch.device('cpu')"}
    segmenter = load_config("inference", overrides=default).get_parsed_content("segmenter")  # bf16 and runtime "auto"
    assert segmenter.bf16 == cpu_bf16_is_fast() and segmenter.predictor.amp == segmenter.bf16
    assert segmenter.runtime == ("torch" if segmenter.bf16 else "openvino")
    compact = load_config("inference", overrides=default, variant="compact").get_parsed_content("segmenter")
    assert (compact.bf16, compact.runtime) == (False, "openvino"), "the compact model's masks change in bfloat16"


@pytest.mark.parametrize(
    "runtime, device, bf16, expected",
    [("auto", "cpu", True, "torch"), ("auto", "cpu", False, "openvino"), ("auto", "cuda", True, "torch"),
     ("auto", "cuda", False, "torch"), ("onnxruntime", "cpu", True, "onnxruntime"), ("torch", "cpu", False, "torch")],
)
def test_resolve_runtime(runtime, device, bf16, expected):
    from bundle.pipeline.runtimes import resolve_runtime

    assert resolve_runtime(runtime, device, bf16) == expected


def test_unknown_runtime_is_refused():
    from bundle.pipeline.runtimes import resolve_runtime

    with pytest.raises(ValueError, match="runtime must be 'auto' or one of"):
        resolve_runtime("tensorrt", "cpu", False)


@pytest.mark.parametrize(
    "runtime, package, batch, bf16, atol",
    [
        ("OpenVINONetwork", "openvino", 1, False, 2e-3),
        ("OpenVINONetwork", "openvino", 2, False, 2e-3),
        ("OpenVINONetwork", "openvino", 2, True, 5e-2),  # bfloat16 arithmetic (float32 where the CPU has none)
        ("ONNXRuntimeNetwork", "onnxruntime", 2, False, 2e-3),
    ],
)
def test_converted_runtime_gives_the_network_output(light_segmenter, tmp_path, runtime, package, batch, bf16, atol):
    pytest.importorskip(package)
    from bundle.pipeline import runtimes

    net = light_segmenter.network.eval()
    x = torch.rand(batch, 3, 128, 128)
    with torch.no_grad():
        expected = net(x.contiguous())
    extra = {"bf16": True} if bf16 else {}
    converted = getattr(runtimes, runtime)(net, (128, 128), threads=2, cache_dir=tmp_path, **extra)
    actual = converted(x)
    assert actual.shape == expected.shape and torch.allclose(torch.sigmoid(actual), torch.sigmoid(expected), atol=atol)
    assert converted.source.parent == tmp_path and converted.source.is_file()  # cached for the next run


@pytest.mark.parametrize("door", ["bundle_cli", "segment_slides"])
def test_compact_variant_is_one_option_away(tmp_path, door):
    """The compact model through the bundle command line (its overlay merged last) and segment_slides (--variant)."""
    out = tmp_path / "out"
    if door == "bundle_cli":
        cmd = [PY, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/compact.json']", *META,
               "--dataset_dir", str(first_sample()), "--output_dir", str(out), "--progress", "False"]
    else:
        cmd = segment_slides(first_sample(), "-o", out, "--variant", "compact")
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = json.loads((out / "report.json").read_text())["written"]
    assert summary["nucleus_count"] >= 10 and summary["weights"].endswith("models/model_compact.pt")


def test_unknown_variant_is_one_line(tmp_path):
    proc = run(segment_slides(first_sample(), "-o", tmp_path, "--variant", "tiny"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == "error: unknown model variant 'tiny'; known: auto, full, compact, da_refinenet, eunet3plus, eunet3plus_fusion, unet_sharp"


@pytest.mark.parametrize("runtime, package", [("openvino", "openvino"), ("onnxruntime", "onnxruntime")])
def test_converted_runtime_takes_the_organ_prompts_as_an_input(tmp_path, monkeypatch, runtime, package):
    """One conversion with the prompts as an input serves every organ (memory does not grow with organs), and
    gives each organ's output of the eager network."""
    pytest.importorskip(package)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    converted = load_config("inference", overrides={**LIGHT, "runtime": runtime}).get_parsed_content("segmenter")
    eager = load_config("inference", overrides={**LIGHT, "runtime": "torch"}).get_parsed_content("segmenter")
    eager.network.load_state_dict(converted.network.state_dict())
    rgb = sample_rgb()[:128, :128]
    for organ in (None, "breast", "colon", "kidney"):
        (prob, distance), (expected, expected_distance) = converted.predict(rgb, organ), eager.predict(rgb, organ)
        assert np.abs(prob - expected).max() < 1e-3 and np.abs(distance - expected_distance).max() < 1e-3, organ
    networks = {id(runner.network) for runner in converted._runners.values()}
    assert len(converted._runners) == 4 and networks == {id(converted._converted)}, "one converted network for every organ"
    assert len(list((tmp_path / "grunet_nuclei" / runtime).glob("*.xml" if runtime == "openvino" else "*.onnx"))) == 1
