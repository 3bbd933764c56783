"""The bundle's configs: metadata against MONAI's schema, the network against the metadata, no drift."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out

from bundle.config_io import BUNDLE_ROOT, config_path, load_config

SCHEMA = BUNDLE_ROOT / "configs" / "schema" / "meta_schema_20240725.json"


def test_metadata_passes_schema_offline():
    verify_metadata(meta_file=str(config_path("metadata")), filepath=str(SCHEMA))
    meta = json.loads(config_path("metadata").read_text())
    assert "segmentation" in meta["name"]
    assert meta["version"] in meta["changelog"]
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 2


@pytest.mark.parametrize("config", ["inference", "train"])
def test_network_matches_metadata(config):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(config_path("metadata")),
        config_file=str(config_path(config)),
        n=2,
        any=1,
        **{"network_def#features": 8},
    )


def test_train_and_inference_share_network_preprocessing_inferer_postprocessing():
    train = load_config("train")
    infer = load_config("inference")
    assert train["network_def"] == infer["network_def"]
    assert train["patch_size"] == infer["patch_size"]
    for key in ("sw_batch_size", "sw_overlap", "stain_normalization", "text_prior", "text_prior_file"):
        assert train[key] == infer[key], key
    assert train["validate#inferer"] == infer["inferer"]
    assert train["train#postprocessing"] == infer["postprocessing"]
    train_image_steps = [
        {**t, "keys": "image"}
        for t in train["train#deterministic_transforms"]
        if "image" in t["keys"]
    ]
    assert train_image_steps == infer["preprocessing#transforms"]


@pytest.mark.parametrize(
    "files, ids",
    [
        (["train"], ["network_def", "train#trainer", "validate#evaluator", "train#dataset", "train#inferer"]),
        (["train", "evaluate"], ["validate#evaluator", "validate#handlers"]),
        (["inference"], ["network_def", "evaluator", "inferer", "preprocessing", "postprocessing"]),
    ],
)
def test_required_ids_exist(files, ids):
    parser = load_config(files)
    for i in ids:
        assert i in parser, i


def test_network_def_builds_with_shipped_text_prior():
    net = load_config("inference").get_parsed_content("network_def")
    assert net.text_prior.shape == (16, 384)
    assert bool(torch.isfinite(net.text_prior).all())
