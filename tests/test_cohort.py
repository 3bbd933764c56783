"""Cohort inference (bundle.cohort): shares balanced by size, manifests, atomic resumable outputs, torchrun ranks."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from parameterized import parameterized
from PIL import Image

from bundle.cohort import CohortRunner, balanced_shards, read_cohort
from bundle.cohort.manifest import CohortSlide, slide_weight
from bundle.cohort.store import COMPLETE_FILE, SlideStore
from bundle.cohort.summary import COHORT_COLUMNS
from bundle.config_io import load_config
from bundle.errors import InputError
from tests.helpers import ROOT, first_sample, tiled_tissue, write_slide

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# -- shares --------------------------------------------------------------------------------------------------------
@parameterized.expand([
    ("one_rank", [3, 1, 2], 1, [[0, 1, 2]]),
    ("largest_first", [10, 9, 8, 1, 1, 1], 2, [[0, 3, 4, 5], [1, 2]]),
    ("equal_weights_round_robin", [1, 1, 1, 1, 1], 2, [[0, 2, 4], [1, 3]]),
    ("unreadable_weigh_nothing", [0, 0, 0, 0], 3, [[0, 3], [1], [2]]),
    ("more_ranks_than_slides", [5, 2], 4, [[0], [1], [], []]),
])
def test_balanced_shards(_, weights, world_size, expected):
    assert balanced_shards(weights, world_size) == expected


@parameterized.expand([(2,), (3,), (8,)])
def test_balanced_shards_cover_every_slide_once_within_one_slide_of_even(world_size):
    weights = list(np.random.default_rng(world_size).lognormal(3, 1, size=41))
    shards = balanced_shards(weights, world_size)
    assert sorted(i for s in shards for i in s) == list(range(41))
    loads = [sum(weights[i] for i in s) for s in shards]
    assert max(loads) - sum(weights) / world_size <= max(weights)


def test_balanced_shards_needs_a_rank():
    with pytest.raises(ValueError, match="world_size"):
        balanced_shards([1.0], 0)


# -- a cohort of small real slides and images ---------------------------------------------------------------------
def make_cohort(folder: Path) -> Dict[str, Path]:
    """Two tiled TIFF slides (one pyramidal at 20x), three PNG images of real H&E, one truncated slide."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "slide_a": write_slide(folder / "slide_a.tif", tiled_tissue(640, 768)),
        "slide_b": write_slide(folder / "slide_b.tif", tiled_tissue(512, 512), mpp=0.5, levels=2),
        "image_a": folder / "image_a.png",
        "image_b": folder / "image_b.png",
        "image_c": folder / "image_c.png",
        "corrupt": folder / "corrupt.tif",
    }
    Image.fromarray(tiled_tissue(512, 640)).save(paths["image_a"])
    Image.fromarray(tiled_tissue(384, 384)[::-1]).save(paths["image_b"])
    paths["image_c"].write_bytes(first_sample().read_bytes())
    data = paths["slide_a"].read_bytes()
    paths["corrupt"].write_bytes(data[: len(data) // 3])
    return paths


def outputs_complete(out: Path) -> List[str]:
    """Names of the slide folders in ``out``; asserts that every one of them is complete."""
    names = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "_cohort"):
        assert (folder / COMPLETE_FILE).is_file(), f"{folder} appeared without being complete"
        names.append(folder.name)
    return names


def read_rows(out: Path) -> Dict[str, Dict[str, str]]:
    with open(out / "cohort.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COHORT_COLUMNS
    return {r["name"]: r for r in rows}


def rank_records(out: Path) -> List[Dict]:
    return [json.loads(line) for p in sorted((out / "_cohort").glob("rank*.jsonl")) for line in p.read_text().splitlines()]


def test_manifest_reads_paths_mpp_and_organ(tmp_path):
    paths = make_cohort(tmp_path / "in")
    manifest = tmp_path / "in" / "cohort.csv"
    manifest.write_text(
        "path,mpp,organ\n"
        f"slide_a.tif,,breast\n{paths['image_a']},0.5,\nimage_b.png,abc,colon\nslide_a.tif,,\n../in/slide_a.tif,,\n\n"
    )
    slides = read_cohort(manifest)
    assert [s.path for s in slides] == [paths["slide_a"], paths["image_a"], paths["image_b"]], "relative to the CSV, listed once"
    assert [s.organ for s in slides] == ["breast", None, "colon"]
    assert slides[1].mpp == 0.5 and slides[0].mpp is None
    assert slides[2].problem and "line 4" in slides[2].problem and "abc" in slides[2].problem
    assert slides[0].weight == 640 * 768 and slides[1].weight == 512 * 640 * 4, "model pixels at 0.25 um/px"


@parameterized.expand([
    ("no_path_column", "slide,organ\na.tif,breast\n", "needs a 'path' column"),
    ("no_rows", "path,mpp\n", "needs a 'path' column"),
    ("blank_rows", "path\n\n,\n", "lists no slides"),
])
def test_bad_manifest_is_one_line(_, text, message):
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "cohort.csv"
        manifest.write_text(text)
        with pytest.raises(InputError, match=message) as err:
            read_cohort(manifest)
    assert str(manifest) in str(err.value) and "\n" not in str(err.value)


def test_slide_weight_reads_headers_only(tmp_path):
    paths = make_cohort(tmp_path)
    assert slide_weight(CohortSlide(paths["slide_b"])) == 512 * 512 * 4, "20x pyramidal TIFF: its mpp from the header"
    assert slide_weight(CohortSlide(paths["image_b"])) == 384 * 384
    assert slide_weight(CohortSlide(paths["corrupt"])) == 640 * 768, "a truncated slide: its header still reads"
    (tmp_path / "fake.svs").write_text("not a slide")
    assert slide_weight(CohortSlide(tmp_path / "fake.svs")) == 0.0
    assert slide_weight(CohortSlide(tmp_path / "missing.svs")) == 0.0


# -- outputs: atomic, verified --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter():
    return load_config("inference", overrides={"progress": False, "runtime": "torch"}, variant="compact").get_parsed_content("segmenter")


def _segmented(segmenter, tmp_path: Path, mpp=None):
    """A slide (a sample crop) segmented into its partial folder of a fresh store: (image, slide, store, parent)."""
    image = tmp_path / "image.png"
    image.write_bytes(first_sample().read_bytes())
    slide = CohortSlide(image, name="image")
    store = SlideStore(tmp_path / "out")
    parent = store.partial_parent(slide, rank=0)
    segmenter.segment(image, parent, mpp, "image")
    return image, slide, store, parent


def test_store_verifies_complete_folders(segmenter, tmp_path):
    image, slide, store, parent = _segmented(segmenter, tmp_path)
    assert store.completed(slide) is None and not (tmp_path / "out" / "image").exists()
    record = store.publish(slide, parent, {"rank": 0})
    assert store.completed(slide) == record and not parent.exists()
    summary = json.loads((tmp_path / "out" / "image" / "image_summary.json").read_text())
    assert all(Path(f).parent == tmp_path / "out" / "image" and Path(f).is_file() for f in summary["files"].values())
    (tmp_path / "out" / "image" / "image.geojson").write_text("{}")
    assert store.completed(slide) is None, "a file changed size"
    os.utime(image, ns=(0, 0))
    assert store.completed(slide) is None, "another input file of the same name"


def test_store_redoes_a_slide_made_with_other_settings(segmenter, tmp_path):
    """A rerun with a corrected resolution (or organ, or weights) redoes the slide instead of keeping it."""
    _, slide, store, parent = _segmented(segmenter, tmp_path, mpp=0.5)
    record = store.publish(slide, parent, {"rank": 0, "settings": {"mpp": 0.5, "organ": None}})
    assert store.completed(slide, {"mpp": 0.5, "organ": None}) == record
    assert store.completed(slide, {"mpp": 0.25, "organ": None}) is None
    respelt = CohortSlide(tmp_path / ".." / tmp_path.name / "image.png", name="image")
    assert store.completed(respelt, {"mpp": 0.5, "organ": None}) == record, "the same file, spelt another way"


def test_a_full_disk_fails_the_slide_not_the_rank(segmenter, tmp_path, monkeypatch):
    """A folder that cannot be made for one slide (no space left) is that slide's failure; the rank writes the others,
    and an earlier run's cohort.json never stands for this run."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(tiled_tissue(256, 256)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cohort.json").write_text('{"counts": {"written": 99}}')  # an earlier run's summary
    real = SlideStore.partial_parent

    def full_disk(store, slide, rank):
        if slide.name == "a":
            raise OSError(28, "No space left on device")
        return real(store, slide, rank)

    monkeypatch.setattr(SlideStore, "partial_parent", full_disk)
    result = CohortRunner(segmenter).run(folder, out)
    rows = read_rows(out)
    assert rows["a"]["status"] == "failed" and "No space left on device" in rows["a"]["reason"]
    assert rows["b"]["status"] == "written" and result.exit_status == 2
    assert json.loads((out / "cohort.json").read_text())["counts"]["written"] == 1


def test_a_full_disk_for_progress_and_summary_loses_no_slide(segmenter, tmp_path, monkeypatch, caplog):
    """Progress files that cannot be written cost only the progress view: the slides are written and reach the
    summary through the ranks' records; a summary that cannot be written is one error line and exit status 2."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(tiled_tissue(256, 256)).save(folder / f"{name}.png")
    out = tmp_path / "out"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bundle.cohort.runner.write_json_atomic", full_disk)
    monkeypatch.setattr("bundle.cohort.runner.ProgressLog._append", full_disk)
    with caplog.at_level("WARNING"):
        result = CohortRunner(segmenter).run(folder, out)
    assert result.exit_status == 0 and outputs_complete(out) == ["a", "b"]
    assert {n: r["status"] for n, r in read_rows(out).items()} == {"a": "written", "b": "written"}
    assert sum("cannot write its progress" in r.getMessage() for r in caplog.records) == 1

    monkeypatch.setattr("bundle.cohort.summary.write_json_atomic", full_disk)
    caplog.clear()
    with caplog.at_level("ERROR"):
        again = CohortRunner(segmenter).run(folder, out)
    assert again.exit_status == 2 and "No space left on device" in again.report["summary_error"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [f"error: {again.report['summary_error']}"]
    assert [r["status"] for r in again.records] == ["already_complete"] * 2
    assert not list(out.glob(".cohort*")), "no temporary summary file left"


def test_runner_resumes_and_reports_failures(segmenter, tmp_path):
    paths = make_cohort(tmp_path / "in")
    out = tmp_path / "out"
    first = CohortRunner(segmenter).run(tmp_path / "in", out)
    assert first.exit_status == 2
    rows = read_rows(out)
    assert {n: r["status"] for n, r in rows.items()} == {**{n: "written" for n in paths if n != "corrupt"}, "corrupt": "failed"}
    assert "corrupt.tif" in rows["corrupt"]["reason"] and rows["corrupt"]["output"] == ""
    assert int(rows["slide_a"]["nucleus_count"]) > 50 and float(rows["slide_a"]["nuclei_per_mm2_tissue"]) > 0
    assert outputs_complete(out) == sorted(n for n in paths if n != "corrupt")
    report = json.loads((out / "cohort.json").read_text())
    assert report["counts"] == {"written": 5, "already_complete": 0, "failed": 1, "not_processed": 0}
    assert report["nucleus_count"] == sum(int(r["nucleus_count"] or 0) for r in rows.values())
    assert report["slides_per_hour"] > 0 and report["ranks"][0]["slides"] == 6

    (out / "image_b" / "image_b.geojson").unlink()
    (out / "_cohort" / "partial" / "slide_a.r1" / "slide_a").mkdir(parents=True)  # what a killed rank leaves
    second = CohortRunner(segmenter).run(tmp_path / "in", out)
    rows = read_rows(out)
    assert rows["image_b"]["status"] == "written", "an incomplete folder is redone"
    assert [rows[n]["status"] for n in ("slide_a", "slide_b", "image_a", "image_c")] == ["already_complete"] * 4
    assert second.exit_status == 2 and list((out / "_cohort" / "partial").iterdir()) == []


def test_runner_refuses_a_missing_cohort_in_one_line(segmenter, tmp_path):
    with pytest.raises(InputError, match="no such cohort manifest"):
        CohortRunner(segmenter).run(tmp_path / "cohort.csv", tmp_path / "out")


# -- torchrun: two processes -----------------------------------------------------------------------------------------
def torchrun(*args, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def script_args(source: Path, out: Path) -> list:
    return ["scripts/segment_slides.py", source, "-o", out, "--cohort", "--variant", "compact", "--no_progress"]


def test_torchrun_bundle_config_processes_every_slide_exactly_once(tmp_path):
    paths = make_cohort(tmp_path / "in")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path,mpp,organ\n" + "".join(f"{p},,{'breast' if n == 'image_a' else ''}\n" for n, p in paths.items()))
    out = tmp_path / "out"
    proc = torchrun("-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/cohort.json','configs/compact.json']",
                    "--meta_file", "configs/metadata.json", "--input_path", manifest, "--output_dir", out, "--progress", "False")
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0, "a failed slide: the ranks exit with status 2"
    records = rank_records(out)
    assert sorted(r["name"] for r in records) == sorted(paths), "every slide exactly once over the ranks"
    assert {r["rank"] for r in records} == {0, 1}
    rows = read_rows(out)
    assert rows["corrupt"]["status"] == "failed" and "corrupt.tif" in rows["corrupt"]["reason"]
    assert all(rows[n]["status"] == "written" for n in paths if n != "corrupt")
    summary = json.loads((out / "image_a" / "image_a_summary.json").read_text())
    assert summary["organ"] == "breast" and summary["prompts"] == "breast"
    report = json.loads((out / "cohort.json").read_text())
    assert report["world_size"] == 2 and [r["slides"] for r in report["ranks"]] in ([3, 3], [4, 2], [2, 4])


def test_torchrun_rank_killed_midway_then_rerun_finishes_without_duplicates(tmp_path):
    paths = make_cohort(tmp_path / "in")
    (tmp_path / "in" / "corrupt.tif").unlink()
    for i in range(3):  # more slides, so that the kill lands while both ranks have work left
        Image.fromarray(tiled_tissue(512, 512)[:, ::-1] if i % 2 else tiled_tissue(512, 512)[::-1]).save(tmp_path / "in" / f"extra_{i}.png")
    names = sorted(p.stem for p in (tmp_path / "in").iterdir())
    out = tmp_path / "out"
    proc = torchrun(*script_args(tmp_path / "in", out))
    progress, deadline, killed = out / "_cohort" / "rank1.json", time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("done", 0) >= 1 and state.get("current"):
            killed = state["pid"]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=300)
    assert killed is not None, log[-3000:]
    assert proc.returncode != 0
    done_first = outputs_complete(out)  # asserts that no folder is half-written
    assert 1 <= len(done_first) < len(names), log[-3000:]

    rerun = torchrun(*script_args(tmp_path / "in", out))
    log, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, log[-3000:]
    assert outputs_complete(out) == names
    records = rank_records(out)
    assert sorted(r["name"] for r in records) == names, "each slide once in the rerun"
    statuses = {r["name"]: r["status"] for r in records}
    assert all(statuses[n] == "already_complete" for n in done_first)
    assert all(statuses[n] == "written" for n in names if n not in done_first)
    assert list((out / "_cohort" / "partial").iterdir()) == [], "no partial folder left"
    assert json.loads((out / "cohort.json").read_text())["counts"]["not_processed"] == 0


def test_cli_errors_are_one_line(tmp_path):
    missing = subprocess.run([sys.executable, *map(str, script_args(tmp_path / "cohort.csv", tmp_path / "o"))],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and "cohort.csv: no such cohort manifest" in missing.stderr
    assert "Traceback" not in missing.stderr
    ranks = subprocess.run([sys.executable, "scripts/segment_slides.py", str(first_sample()), "-o", str(tmp_path / "o")],
                           cwd=ROOT, env={**ENV, "WORLD_SIZE": "2"}, capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 1 and "pass --cohort" in ranks.stderr
