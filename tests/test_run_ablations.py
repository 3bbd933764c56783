"""``scripts/run_ablations.py``: each stage's config list, so that a variant is evaluated with its own splitting."""

from __future__ import annotations

import argparse
import ast

import pytest

from bundle.config_io import BUNDLE_ROOT, load_config
from scripts.run_ablations import _config_list

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
