"""MONAI Label server for the bundle, end to end over REST: a real server on 127.0.0.1, no mocks.

Starts ``scripts/monailabel_server.sh`` (``.venv-label``, see ``scripts/setup_label_env.sh``) on a copy of the
bundle and of the sample crops in a temporary folder, so training never touches the repository's weights. The
server runs its default model variant, ``auto``: the compact model on a CPU machine (``models/model_compact.pt``),
the full one with CUDA, as every other entry point does. Skipped when ``.venv-label/bin/monailabel`` does not exist.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tifffile
from PIL import Image

from bundle.config_io import resolve_variant
from tests.helpers import MONUSEG, ROOT, write_png_header_only

requests = pytest.importorskip("requests")

LABEL_VENV = ROOT / ".venv-label"
pytestmark = pytest.mark.skipif(
    not (LABEL_VENV / "bin" / "monailabel").exists(),
    reason="MONAI Label environment missing: run scripts/setup_label_env.sh to create .venv-label",
)

MODEL = "pathology_nuclei_segmentation_grunet"
POLYGONS = "grunet_nuclei"
IMAGES = sorted((MONUSEG / "images").glob("*.png"))
COMPACT = resolve_variant("auto") == "compact"  # the variant the server serves by default here
WEIGHTS = "model_compact.pt" if COMPACT else "model.pt"
START_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 300


@dataclass
class Server:
    """A running MONAI Label server and the folders it works on."""

    url: str
    process: subprocess.Popen
    bundle: Path
    studies: Path
    log: Path

    def post(self, path: str, **kwargs) -> "requests.Response":
        return requests.post(self.url + path, timeout=240, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gt_mask(image: Path) -> np.ndarray:
    return np.asarray(Image.open(MONUSEG / "masks" / image.name)) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def copy_bundle(dest: Path) -> Path:
    """configs/, bundle/ and the weights (both models, text_prior.pt): what the server needs."""
    for folder in ("configs", "bundle"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "models").mkdir()
    for name in ("model.pt", "model_compact.pt", "text_prior.pt"):
        shutil.copy2(ROOT / "models" / name, dest / "models" / name)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("monailabel")
    bundle = copy_bundle(tmp / "bundle")
    studies = tmp / "studies"
    studies.mkdir()
    for image in IMAGES:
        shutil.copy2(image, studies / image.name)
    log = tmp / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "GRUNET_BUNDLE": str(bundle),
        "GRUNET_LABEL_APP": str(tmp / "app"),
        "OMP_NUM_THREADS": "1",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "monailabel_server.sh"), str(studies), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the training subprocess stops with it
        )
    srv = Server(f"http://127.0.0.1:{port}", process, bundle, studies, log)
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{srv.log_text()[-3000:]}")
            try:
                if requests.get(srv.url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not up after {START_TIMEOUT_S}s:\n{srv.log_text()[-3000:]}")
            time.sleep(1)
        yield srv
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def infer_mask(server: Server, image_id: str, **options) -> np.ndarray:
    """The mask of a datastore image; ``options`` go into the request (MONAI Label's ``params`` form field)."""
    res = server.post(f"/infer/{MODEL}", params={"image": image_id, "output": "image"}, data={"params": json.dumps(options)})
    assert res.status_code == 200, res.text
    return np.asarray(Image.open(io.BytesIO(res.content)))


def test_info_lists_tasks(server: Server) -> None:
    info = requests.get(server.url + "/info/", timeout=30).json()
    assert {MODEL, POLYGONS} <= set(info["models"])
    assert info["models"][POLYGONS]["pathology"] is True
    assert MODEL in info["trainers"]
    assert {"gdam_uncertainty", "random"} <= set(info["strategies"])


def test_mask_inference_on_tile(server: Server) -> None:
    image = IMAGES[0]
    mask = infer_mask(server, image.stem)
    assert mask.shape == Image.open(image).size[::-1]
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert dice(mask > 0, gt_mask(image)) > 0.6  # right orientation, real nuclei


def infer_json(server: Server, image_id: str, **options) -> dict:
    """The result JSON of the mask task on a datastore image."""
    res = server.post(f"/infer/{MODEL}", params={"image": image_id, "output": "json"}, data={"params": json.dumps(options)})
    assert res.status_code == 200, res.text
    return res.json()


def test_organ_in_the_request_picks_the_prompts(server: Server) -> None:
    """The request's organ reaches the pipeline: the organ's prompts, the generic ones for an unknown organ (the
    effect of the prompts on the network's output is tested in test_organ_prompts.py)."""
    image = IMAGES[0]
    assert infer_json(server, image.stem)["prompts"] == "generic"
    breast = infer_json(server, image.stem, organ="breast")
    assert breast["prompts"] == "breast" and breast["weights"] == WEIGHTS and breast["nucleus_count"] > 5
    assert infer_json(server, image.stem, organ="lung")["prompts"] == "generic"
    np.testing.assert_array_equal(infer_mask(server, image.stem, organ="lung"), infer_mask(server, image.stem))


@pytest.mark.parametrize("output", ["asap", "dsa"])
def test_polygons_on_tile(server: Server, output: str) -> None:
    res = server.post(f"/infer/wsi_v2/{POLYGONS}", params={"image": IMAGES[0].stem, "output": output})
    assert res.status_code == 200, res.text
    if output == "asap":
        polygons = ET.fromstring(res.content).findall(".//Annotation")
        assert polygons and all(len(p.findall(".//Coordinate")) >= 3 for p in polygons)
    else:
        polygons = json.loads(res.content)["elements"]
        assert polygons and all(p["type"] == "polyline" and len(p["points"]) >= 3 for p in polygons)


def test_polygons_on_slide_region(server: Server, tmp_path: Path) -> None:
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in IMAGES[:2]]
    rgb = np.concatenate([np.concatenate(tiles, 1), np.concatenate(tiles[::-1], 1)], 0)  # 512 x 512
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    wsi = {"level": 0, "location": [0, 0], "size": [512, 512], "tile_size": [256, 256], "min_poly_area": 0, "params": {"mpp": 0.25}}
    with open(slide, "rb") as fp:
        res = server.post(
            f"/infer/wsi_v2/{POLYGONS}",
            params={"output": "asap"},
            files={"file": ("slide.tif", fp)},
            data={"wsi": json.dumps(wsi)},
        )
    assert res.status_code == 200, res.text
    xy = [
        (float(c.get("X")), float(c.get("Y")))
        for c in ET.fromstring(res.content).findall(".//Coordinate")
    ]
    assert xy
    xy = np.asarray(xy)
    assert xy.min() >= 0 and xy.max() <= 512
    assert (xy[:, 0] > 300).any() and (xy[:, 1] > 300).any()  # tiles placed at their level-0 offsets


DSA_REGION = """
import json, sys
import numpy as np
from PIL import Image
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/monailabel/app"]
from grunet_label.infers import NucleusPolygonInfer
rgb = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
_, data = NucleusPolygonInfer(sys.argv[1], {})({"image": rgb, "location": [5000, 6000], "size": [256, 256], "output": "json",
                                                "result_write_to_file": False})
points = np.concatenate([np.asarray(e["contours"][0]) for e in data["annotation"]["elements"]])
print(json.dumps({"location": data["annotation"]["location"], "min": points.min(0).tolist(), "max": points.max(0).tolist()}))
"""


def test_dsa_region_sent_as_pixels_gets_polygons_where_it_lies(tmp_path: Path) -> None:
    """DSA's datastore sends a region's pixels with the slide's ``location``: the task segments the pixels and
    places the polygons at that location (0.7.3 cut the location out of the pixels: HTTP 422)."""
    script = tmp_path / "dsa_region.py"
    script.write_text(DSA_REGION)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([str(LABEL_VENV / "bin" / "python"), str(script), str(ROOT), str(IMAGES[0])], env=env,
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    placed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert placed["location"] == [5000, 6000]
    assert placed["min"][0] >= 5000 and placed["min"][1] >= 6000 and placed["max"][0] <= 5256 and placed["max"][1] <= 6256


def test_gdam_uncertainty_strategy(server: Server) -> None:
    res = server.post("/activelearning/gdam_uncertainty", json={"samples": 2})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["id"] in {p.stem for p in IMAGES}
    ranking = body["ranking"]
    assert len(ranking) == len(IMAGES) and ranking[0][0] == body["id"]
    assert all(0.0 <= s <= 0.25 for _, s in ranking) and ranking[0][1] > 0.0
    res = server.post("/activelearning/gdam_uncertainty", json={"samples": 1})
    assert res.status_code == 422 and "samples" in res.json()["detail"]


@pytest.mark.parametrize("route", [f"/infer/{MODEL}", f"/infer/wsi_v2/{POLYGONS}"])
def test_bad_requests_get_errors_and_server_keeps_serving(server: Server, route: str, tmp_path: Path) -> None:
    res = server.post(route, params={"image": "no_such_image"})
    assert res.status_code == 404 and "no_such_image" in res.json()["detail"]
    res = server.post(route, files={"file": ("corrupt.png", b"\x89PNG not really an image")})
    assert res.status_code == 422 and "cannot read image" in res.json()["detail"]
    bomb = write_png_header_only(tmp_path / "bomb.png", 60000, 60000).read_bytes()  # refused before decoding
    res = server.post(route, files={"file": ("bomb.png", bomb)})
    assert res.status_code == 422 and "image too large" in res.json()["detail"]
    assert requests.get(server.url + "/info/", timeout=30).status_code == 200


def test_concurrent_requests_are_all_answered(server: Server) -> None:
    """20 inference requests at once (127.0.0.1, bounded): every one answered, the same nuclei, still serving."""
    from concurrent.futures import ThreadPoolExecutor

    def one(k: int) -> tuple:
        image = IMAGES[k % len(IMAGES)]
        res = server.post(f"/infer/{MODEL}", params={"image": image.stem, "output": "json"})
        return image.stem, res.status_code, res.json().get("nucleus_count") if res.status_code == 200 else res.text

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(code == 200 for _, code, _ in results), results
    counts = {}
    for stem, _, count in results:
        counts.setdefault(stem, set()).add(count)
    assert all(len(c) == 1 and next(iter(c)) > 5 for c in counts.values()), counts
    assert requests.get(server.url + "/info/", timeout=30).status_code == 200


def test_same_nuclei_through_every_entry_point(server: Server, tmp_path: Path) -> None:
    """One real tile through the bundle CLI, segment_slides, the Deploy app and the Label server: one pipeline,
    the same instance maps and counts."""
    image = IMAGES[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    configs = "['configs/inference.json','configs/compact.json']" if COMPACT else "configs/inference.json"
    runs = {
        "bundle_cli": [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file",
                       "configs/metadata.json", "--input_path", str(image), "--output_dir", str(tmp_path / "bundle_cli"), "--progress", "False"],
        "segment_slides": [sys.executable, "scripts/segment_slides.py", str(image), "-o", str(tmp_path / "segment_slides"), "--no_progress"],
    }
    deploy_python, model_ts = ROOT / ".venv-deploy" / "bin" / "python", ROOT / "models" / WEIGHTS.replace(".pt", ".ts")
    if deploy_python.exists() and model_ts.exists():
        runs["deploy"] = [str(deploy_python), "deploy/app.py", "-i", str(image), "-o", str(tmp_path / "deploy"), "-m", str(model_ts)]
    maps = {}
    for door, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{door}: {proc.stderr[-2000:]}"
        maps[door] = tifffile.imread(tmp_path / door / image.stem / f"{image.stem}_instances.tif")
    res = server.post(f"/infer/{MODEL}", params={"image": image.stem, "output": "image"}, data={"params": json.dumps({"result_kind": "instances"})})
    assert res.status_code == 200, res.text
    maps["monailabel"] = tifffile.imread(io.BytesIO(res.content))
    reference = maps["bundle_cli"]
    assert reference.max() > 10
    for door, labels in maps.items():
        assert labels.shape == reference.shape and labels.max() == reference.max(), door
        # identical in the bundle's environment; the Label and Deploy environments pin other numpy / scikit-image
        # versions, whose polygon rasterisation may differ by a pixel
        assert (labels == reference).mean() > 0.999, door
    assert np.array_equal(maps["segment_slides"], reference)


def test_train_updates_model_and_next_inference(server: Server) -> None:
    repo_weights = sha256(ROOT / "models" / WEIGHTS)
    served = server.bundle / "models" / WEIGHTS
    before_weights = sha256(served)
    before_mask = infer_mask(server, IMAGES[0].stem)

    for image in IMAGES[:3]:
        label = io.BytesIO()
        Image.fromarray(gt_mask(image).astype(np.uint8)).save(label, format="PNG")
        res = requests.put(
            server.url + "/datastore/label",
            params={"image": image.stem, "tag": "final"},
            files={"label": (image.name, label.getvalue())},
            timeout=60,
        )
        assert res.status_code == 200, res.text

    res = server.post(f"/train/{MODEL}", json={"max_epochs": 1, "val_split": 0.34, "device": "cpu"})
    assert res.status_code == 200, res.text
    deadline = time.time() + TRAIN_TIMEOUT_S
    status = {}
    while time.time() < deadline:
        status = requests.get(server.url + "/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", f"{status}\n{server.log_text()[-3000:]}"

    assert sha256(served) != before_weights, f"training did not write models/{WEIGHTS}"
    assert sha256(ROOT / "models" / WEIGHTS) == repo_weights
    after_mask = infer_mask(server, IMAGES[0].stem)
    assert after_mask.shape == before_mask.shape and set(np.unique(after_mask).tolist()) <= {0, 1}
    assert (after_mask != before_mask).any(), "inference did not pick up the new weights"
    assert "changed: weights reloaded" in server.log_text()
    # the labelled images leave the active-learning pool
    res = server.post("/activelearning/gdam_uncertainty", json={"samples": 2})
    assert res.status_code == 200 and res.json()["id"] == IMAGES[3].stem
