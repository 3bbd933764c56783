"""``scripts/run_ablations.py``: each stage's config list, so that a variant is evaluated with its own splitting."""

from __future__ import annotations

import argparse
import ast
import json

import pytest

from bundle.config_io import BUNDLE_ROOT, load_config
from scripts.run_ablations import _config_list
from scripts.run_ablations import main as run_ablations_main
from scripts.summarize_ablations import main as summarize_main
from scripts.summarize_ablations import group_by_split, margins, read_runs

SPLITTING_CASES = [
    # variant, (marker_height, distance_sigma) its evaluation uses
    ("compact", (0.1, 1.0)),  # configs/compact.json's
    ("compact+no_gdam", (0.1, 1.0)),
    ("basicunet", (0.2, 2.0)),  # configs/evaluate.json's
    ("full", (0.2, 2.0)),
]


@pytest.mark.parametrize("variant, splitting", SPLITTING_CASES)
def test_evaluation_keeps_the_variant_splitting(variant, splitting):
    args = argparse.Namespace(configs=["configs/monuseg_tnbc.json"])
    files = ast.literal_eval(_config_list(variant, args, ["configs/evaluate.json"]))
    assert files[:3] == ["configs/train.json", "configs/monuseg_tnbc.json", "configs/evaluate.json"]
    parser = load_config(["train", *[str(BUNDLE_ROOT / f) for f in files[1:]]])
    assert (parser["marker_height"], parser["distance_sigma"]) == splitting


def _report(path, overrides, results):
    """An ``ablations.json`` as ``scripts/run_ablations.py`` writes it (only the fields the summary reads)."""
    path.write_text(json.dumps({"epochs": 30, "overrides": overrides, "results": results}))
    return str(path)


def _result(dice, aji, **seeds):
    return {"mean_dice": dice, "mean_aji": aji, "by_dataset": {"tnbc": {"mean_dice": dice, "mean_aji": aji}}, **seeds}


SEED_CASES = [
    # the report's overrides, the result's own fields, the (seed, split_seed) read
    ([], {}, (0, 0)),
    (["seed=1"], {}, (1, 0)),  # written before 0.7.10 with only a seed override
    (["seed=1", "split_seed=1"], {}, (1, 1)),
    (["seed=1"], {"seed": 1, "split_seed": 1}, (1, 1)),  # the fields win over the overrides
]


@pytest.mark.parametrize("overrides, fields, seeds", SEED_CASES)
def test_summary_reads_seed_and_split_of_each_run(tmp_path, overrides, fields, seeds):
    runs = read_runs([_report(tmp_path / "a.json", overrides, {"compact": _result(0.8, 0.5, **fields)})])
    assert [(r.variant, r.seed, r.split_seed) for r in runs] == [("compact", *seeds)]
    assert runs[0].metrics == {"Dice": 0.8, "AJI": 0.5, "tnbc Dice": 0.8, "tnbc AJI": 0.5}


def test_summary_margin_is_the_difference_of_means_per_split(tmp_path, capsys):
    reports = [
        _report(tmp_path / "a.json", [], {"compact": _result(0.80, 0.50, seed=0, split_seed=0), "basicunet": _result(0.82, 0.52, seed=0, split_seed=0)}),
        _report(tmp_path / "b.json", [], {"compact": _result(0.84, 0.56, seed=1, split_seed=0)}),
        _report(tmp_path / "c.json", [], {"compact": _result(0.78, 0.54, seed=1, split_seed=1), "basicunet": _result(0.74, 0.50, seed=1, split_seed=1)}),
        _report(tmp_path / "d.json", [], {"no_eval": {"parameters": 1}}),  # a failed evaluation is skipped
    ]
    groups = group_by_split(read_runs(reports))
    assert groups[("compact", 0)]["Dice"] == [0.80, 0.84]
    diff = margins(groups, "basicunet", ["Dice", "AJI"])
    assert diff["compact"][0] == pytest.approx({"Dice": 0.0, "AJI": 0.01})
    assert diff["compact"][1] == pytest.approx({"Dice": 0.04, "AJI": 0.04})
    assert summarize_main([*reports, "--yardstick", "basicunet"]) == 0
    out = capsys.readouterr().out
    assert "| compact | 0 | 0,1 | 0.820 (0.800-0.840) |" in out
    assert "| compact | mean of 2 | +0.020 | +0.025 |" in out


def test_summary_names_an_unreadable_report(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a readable ablations report"):
        read_runs([str(bad)])


def test_report_records_each_run_seed_and_split(tmp_path):
    assert run_ablations_main(["--report_only", "--output_dir", str(tmp_path), "--variants", "compact", "--override", "split_seed=1"]) == 0
    result = json.loads((tmp_path / "ablations.json").read_text())["results"]["compact"]
    assert (result["seed"], result["split_seed"]) == (0, 1)
    assert [(r.seed, r.split_seed) for r in read_runs([str(tmp_path / "ablations.json")])] == []  # no evaluation, no row
