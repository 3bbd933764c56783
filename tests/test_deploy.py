"""The MONAI Deploy application (``deploy/``): the TorchScript export, the app on real crops, its MAP config, bad input.

The app runs as a subprocess in its own environment, ``.venv-deploy`` (``scripts/setup_deploy_env.sh``); those
tests skip when it is missing. The export test runs in the bundle's environment.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from bundle.networks.text_prior import embed_text_prior, embedded_text_prior
from bundle.training.checkpoints import load_state_dict
from bundle.config_io import config_path, load_config
from tests.helpers import MONUSEG, ROOT, make_bad_image_folder, write_png_header_only, write_slide

DEPLOY_PYTHON = ROOT / ".venv-deploy" / "bin" / "python"
APP = ROOT / "deploy" / "app.py"
APP_YAML = ROOT / "deploy" / "app.yaml"
MODEL_TS = ROOT / "models" / "model.ts"
SAMPLES = sorted((MONUSEG / "images").glob("*.png"))
# one file set for images and slides (bundle.io.writers); the mask PNG for inputs up to max_mask_megapixels
FILES = ("_instances.tif", "_seg.png", "_overlay.png", ".geojson", "_nuclei.csv", "_summary.json")
APP_TIMEOUT = 300

needs_deploy_env = pytest.mark.skipif(
    not DEPLOY_PYTHON.exists(), reason=f"{DEPLOY_PYTHON} missing: run scripts/setup_deploy_env.sh to test the Deploy app"
)


def _requirements(path: Path) -> Dict[str, str]:
    """``{package: line}`` of a requirements file (comments and blank lines left out)."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {re.split(r"[=<>\[ ]", line)[0].lower(): line for line in lines if line}


def test_the_packaged_app_installs_what_the_tested_app_has():
    """``deploy/requirements.txt`` (what ``monai-deploy package`` installs in the MAP) holds every package of the
    tested environment (requirements-deploy.txt), with the same pin, but the SDK's own holoscan wheels and the
    packaging tool; 0.7.3's lacked shapely, which the pipeline imports: the MAP would not have started."""
    packaged, tested = _requirements(ROOT / "deploy" / "requirements.txt"), _requirements(ROOT / "requirements-deploy.txt")
    expected = {name: line for name, line in tested.items() if name not in ("holoscan-cu13", "holoscan-cli")}
    assert packaged == expected


def export_model(path: Path) -> Path:
    """``monai.bundle ckpt_export`` of the shipped checkpoint, the command scripts/export_model_ts.sh runs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(path),
           "--ckpt_file", str(ROOT / "models" / "model.pt"), "--meta_file", str(config_path("metadata")),
           "--config_file", str(config_path("inference")), "--bundle_root", str(ROOT)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=APP_TIMEOUT)
    embed_text_prior(path, ROOT / "models" / "text_prior.pt")
    return path


@pytest.fixture(scope="module")
def model_ts(tmp_path_factory) -> Path:
    """``models/model.ts`` when exported already with its organ prompts (scripts/export_model_ts.sh), else a fresh
    export in a tmp dir."""
    if MODEL_TS.is_file() and embedded_text_prior(MODEL_TS) == (ROOT / "models" / "text_prior.pt").read_bytes():
        return MODEL_TS
    return export_model(tmp_path_factory.mktemp("model") / "model.ts")


def run_app(input_path: Path, output: Path, model: Path, extra_env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    cmd = [str(DEPLOY_PYTHON), str(APP), "-i", str(input_path), "-o", str(output), "-m", str(model)]
    cwd = next(p for p in output.parents if p.is_dir())  # the SDK may create .monai_workdir there
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=APP_TIMEOUT)


def check_image_outputs(folder: Path, source: Path) -> Dict:
    """The files of one image are there and agree with each other; returns its summary."""
    stem = source.stem
    for suffix in FILES:
        assert (folder / stem / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
    height, width = np.asarray(Image.open(source)).shape[:2]
    mask = np.asarray(Image.open(folder / stem / f"{stem}_seg.png"))
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert 0.02 < (mask > 0).mean() < 0.8  # H&E crops: some nuclei, mostly not nuclei
    over = np.asarray(Image.open(folder / stem / f"{stem}_overlay.png"))
    assert over.shape == (height, width, 3)
    geo = json.loads((folder / stem / f"{stem}.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) > 0
    ring = np.asarray(geo["features"][0]["geometry"]["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist()
    assert (ring >= 0).all() and (ring[:, 0] <= width).all() and (ring[:, 1] <= height).all()
    with open(folder / stem / f"{stem}_nuclei.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(geo["features"])
    summary = json.loads((folder / stem / f"{stem}_summary.json").read_text())
    assert summary["nucleus_count"] == len(rows)
    labels = tifffile.imread(folder / stem / f"{stem}_instances.tif")
    assert labels.shape == (height, width) and labels.max() == len(rows)
    return summary


def test_exported_torchscript_matches_the_checkpoint(model_ts):
    """model.ts from ckpt_export embeds metadata and the inference config and gives the checkpoint's logits."""
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(model_ts), map_location="cpu", _extra_files=extra).eval()
    assert json.loads(extra["metadata.json"])["name"] == "pathology_nuclei_segmentation_grunet"
    assert json.loads(extra["inference.json"])["postprocessing"] == load_config("inference")["postprocessing"]
    net = load_config("inference").get_parsed_content("network_def").eval()
    net.load_state_dict(load_state_dict(ROOT / "models" / "model.pt"))
    rgb = np.asarray(Image.open(SAMPLES[0]).convert("RGB"))[:128, :96]
    x = torch.as_tensor(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        expected, actual = net(x), scripted(x)
    assert actual.shape == (1, 2, 128, 96)  # nucleus and distance logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_app_yaml_is_a_valid_map_configuration():
    config = yaml.safe_load(APP_YAML.read_text())
    application, resources = config["application"], config["resources"]
    assert application["title"] and str(application["version"]) == json.loads(config_path("metadata").read_text())["version"]
    assert application["input-formats"] == ["file"] and application["output-formats"] == ["file"]
    for key in ("cpu", "gpu", "memory"):
        assert key in resources, key


@needs_deploy_env
def test_app_yaml_passes_holoscan_cli_reader():
    """holoscan-cli's own reader (what ``monai-deploy package`` runs) accepts the file."""
    code = ("import sys; from pathlib import Path; from holoscan_cli.packager.config_reader import ApplicationConfiguration as C;"
            "c = C(); c.read(Path(sys.argv[1])); print(c.title())")
    out = subprocess.run([str(DEPLOY_PYTHON), "-c", code, str(APP_YAML)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GRU-Net" in out.stdout


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, model_ts):
    """The app on the four MoNuSeg crops, given their organ as breast: (output folder, completed process)."""
    if not DEPLOY_PYTHON.exists():
        pytest.skip(f"{DEPLOY_PYTHON} missing: run scripts/setup_deploy_env.sh")
    out = tmp_path_factory.mktemp("deploy") / "out"
    return out, run_app(MONUSEG / "images", out, model_ts, {"GRUNET_ORGAN": "breast"})


@needs_deploy_env
def test_app_on_sample_images_writes_every_output(sample_run):
    out, proc = sample_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for source in SAMPLES:
        summary = check_image_outputs(out, source)
        assert summary["kind"] == "image" and summary["prompts"] == "breast"  # the prompts travel inside model.ts
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(s["input"]).name for s in report["written"]) == [p.name for p in SAMPLES]
    assert report["skipped"] == []


def mosaic(size: int = 384) -> np.ndarray:
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in SAMPLES]
    grid = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    return np.ascontiguousarray(grid[:size, :size])


@needs_deploy_env
def test_app_mixed_folder_skips_the_corrupt_image_and_segments_a_slide(tmp_path, model_ts):
    """Good image, slide, corrupt image, text file: the good ones are written, the corrupt one is reported."""
    bad = make_bad_image_folder(tmp_path / "all")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(bad["good"], folder / "good.png")
    shutil.copy(bad["corrupt"], folder / "corrupt.png")
    shutil.copy(bad["text"], folder / "notes.txt")
    write_slide(folder / "slide.tif", mosaic())
    out = tmp_path / "out"
    proc = run_app(folder, out, model_ts)
    assert proc.returncode == 2, proc.stderr[-3000:]  # bundle.errors.EXIT_SKIPPED
    assert "1 of 3 inputs skipped" in proc.stderr
    check_image_outputs(out, folder / "good.png")
    for suffix in FILES:
        assert (out / "slide" / f"slide{suffix}").is_file(), suffix
    labels = tifffile.imread(out / "slide" / "slide_instances.tif")
    geo = json.loads((out / "slide" / "slide.geojson").read_text())
    assert labels.shape == (384, 384) and labels.max() == len(geo["features"]) > 0
    assert not (out / "corrupt").exists()
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(s["input"]).name for s in report["written"]) == ["good.png", "slide.tif"]
    (skipped,) = report["skipped"]
    assert skipped["input"].endswith("corrupt.png") and "corrupt.png" in skipped["reason"]
    assert [Path(s["input"]).name for s in report["ignored"]] == ["notes.txt"] and report["exit_status"] == 2


BAD_RUNS = [
    # (what, expected message part, exit status)
    ("empty_folder", "no images or slides", 1),
    ("missing_model", "No such file", 2),  # the SDK's argument parser (argparse's usage error)
    ("checkpoint_as_model", "not a TorchScript model", 1),
    ("folder_without_model", "expected one TorchScript model", 1),
    ("only_corrupt", "not a readable image", 2),  # run, and every input skipped
    ("header_bomb", "image too large", 2),  # a PNG header declaring 60000 x 60000: refused before decoding
    ("output_under_a_file", "cannot create the output folder", 1),
    ("bad_mpp", "must be a positive number", 1),
]


@needs_deploy_env
@pytest.mark.parametrize("what, message, status", BAD_RUNS)
def test_app_bad_input_exits_non_zero_with_one_clear_line(tmp_path, model_ts, what, message, status):
    folder = tmp_path / "in"
    folder.mkdir()
    model = model_ts
    if what != "empty_folder":
        shutil.copy(SAMPLES[0], folder / SAMPLES[0].name)
    if what == "missing_model":
        model = tmp_path / "missing.ts"
    elif what == "checkpoint_as_model":
        model = ROOT / "models" / "model.pt"
    elif what == "folder_without_model":
        model = tmp_path / "models"
        model.mkdir()
    elif what == "only_corrupt":
        (folder / SAMPLES[0].name).write_bytes(SAMPLES[0].read_bytes()[:200])
    elif what == "header_bomb":
        (folder / SAMPLES[0].name).unlink()
        write_png_header_only(folder / "bomb.png", 60000, 60000)
    output = tmp_path / "out"
    if what == "output_under_a_file":
        (tmp_path / "a_file").write_text("")
        output = tmp_path / "a_file" / "out"
    env = {"GRUNET_MPP": "0"} if what == "bad_mpp" else {}
    proc = run_app(folder, output, model, env)
    assert proc.returncode == status, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln or "skipped" in ln]
    assert lines and any(message in ln for ln in lines), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
