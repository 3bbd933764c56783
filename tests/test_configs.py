"""The bundle's configs: metadata against MONAI's schema, the network against the metadata, no drift."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out
from parameterized import parameterized

from bundle.config_io import BUNDLE_ROOT, config_path, load_config, resolve_variant
from scripts.benchmark_training import VARIANTS as ABLATIONS
from scripts.benchmark_training import width_overrides
from tests.helpers import MONUSEG

ROOT = BUNDLE_ROOT

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


def _resolve_refs(parser, value):
    """``value`` with every plain ``"@id"`` string replaced by that id's parsed content in ``parser``."""
    if isinstance(value, dict):
        return {k: _resolve_refs(parser, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(parser, v) for v in value]
    if isinstance(value, str) and value.startswith("@") and value[1:] in parser:
        return parser.get_parsed_content(value[1:])
    return value


def test_train_and_inference_share_network_preprocessing_inferer_postprocessing():
    train = load_config("train")
    infer = load_config("inference")
    assert train["network_def"] == infer["network_def"]
    assert train["patch_size"] == infer["patch_size"]
    for key in ("window_size", "sw_batch_size", "sw_overlap", "tta", "stain_normalization", "text_prior", "text_prior_file"):
        assert train[key] == infer[key], key
    assert train["validate#inferer"] == infer["inferer"]
    # the same steps and values; inference takes its threshold from the instance splitter ("@splitter#threshold")
    assert _resolve_refs(train, train["train#postprocessing"]) == _resolve_refs(infer, infer["postprocessing"])
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


def _validation_ids(**overrides) -> list:
    """The validation image ids of ``configs/train.json`` on the shipped MoNuSeg crops, split half and half."""
    parser = load_config("train", overrides={"dataset_dir": str(MONUSEG), "val_fraction": 0.5, **overrides})
    return sorted(item["id"] for item in parser.get_parsed_content("datalists")["validation"])


@pytest.mark.parametrize("overrides, same_split", [({"seed": 1}, True), ({"seed": 7}, True), ({"split_seed": 1}, False)])
def test_training_seed_keeps_the_split_and_split_seed_moves_it(overrides, same_split):
    # until 0.7.10 ``seed`` also drew the split, so a "second seed" was scored on other validation images
    assert (_validation_ids(**overrides) == _validation_ids()) == same_split


def test_validation_loads_in_the_training_process():
    # a worker forked from the trainer at its peak (13 GB for the full model on CPU) shares its pages copy-on-write;
    # as training went on both copies grew until a 24 GB machine killed the run
    loader = load_config("train")["validate#dataloader"]
    assert loader["num_workers"] == 0
    assert not loader.get("persistent_workers", False)


def test_network_def_builds_with_shipped_text_prior():
    net = load_config("inference").get_parsed_content("network_def")
    assert net.text_prior.shape == (16, 384)
    assert bool(torch.isfinite(net.text_prior).all())


def test_ckpt_export_gives_torchscript_matching_the_checkpoint(tmp_path):
    """MONAI's ``ckpt_export`` scripts ``network_def`` (torch.jit.script, not trace) with metadata and config."""
    from monai.bundle import ckpt_export

    parser = load_config("inference", overrides={"network_def#features": 8})
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(config_path("metadata")),
        config_file=str(config_path("inference")),
        **{"network_def#features": 8},
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["name"] == "pathology_nuclei_segmentation_grunet"
    assert "network_def" in json.loads(extra["inference.json"])
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


NETWORK_CLASSES = {"basicunet": "BasicUNet", "unet_sharp": "UNetSharp", "eunet3plus": "EUNet3Plus", "eunet3plus_fusion": "EUNet3Plus", "da_refinenet": "DARefineNet"}


@parameterized.expand([(name, overlays) for name, overlays in ABLATIONS.items()])
def test_ablation_overlays_resolve_network_and_tracked_params(name, overlays):
    """Every ablation and alternative network builds its network and the network params logged to MLflow (each
    network logs its own kwargs)."""
    width = None if name in NETWORK_CLASSES and name != "basicunet" else 8  # the alternative networks keep their sizes
    parser = load_config(["train", *[str(ROOT / p) for p in overlays]], overrides=width_overrides(name, width))
    assert parser.get_parsed_content("tracked_params#network") == NETWORK_CLASSES.get(name, "GRUNet")
    params = parser.get_parsed_content("network_params")
    assert params and all(v is not None for v in params.values())
    assert isinstance(parser.get_parsed_content("network_def"), torch.nn.Module)


# -- model variants ------------------------------------------------------------------------------------------------
@parameterized.expand([
    # variant, configs, expected (features, cdrb_units, gdam_features), weight file
    ("full", ["inference"], (32, 4, None), "model.pt"),
    ("compact", ["inference"], (16, 1, 16), "model_compact.pt"),
    ("compact", ["train", "evaluate"], (16, 1, 16), "model_compact.pt"),
])
def test_variant_selects_network_and_weights(variant, configs, expected, weight_file):
    config = load_config(configs, variant=variant)
    net = config["network_def"]
    assert (net["features"], net["cdrb_units"], net.get("gdam_features")) == expected
    assert config.get_parsed_content("model_file") == weight_file
    if "train" not in configs or "evaluate" in configs:
        assert config.get_parsed_content("checkpoint").endswith(f"/models/{weight_file}")


def test_auto_variant_is_compact_on_cpu_and_full_on_cuda():
    expected = "model.pt" if torch.cuda.is_available() else "model_compact.pt"
    assert resolve_variant("auto") == ("full" if torch.cuda.is_available() else "compact")
    assert load_config("inference", variant="auto").get_parsed_content("model_file") == expected
    assert resolve_variant("unet_sharp") == "unet_sharp"


def test_training_a_variant_saves_its_weight_file():
    config = load_config(["train"], variant="compact")
    assert config.get_parsed_content("best_model_saver#key_metric_filename") == "model_compact.pt"


def test_unknown_variant_is_an_input_error():
    from bundle.errors import InputError

    with pytest.raises(InputError, match="unknown model variant 'tiny'; known: auto, full, compact, da_refinenet, eunet3plus, eunet3plus_fusion, unet_sharp"):
        load_config("inference", variant="tiny")


@pytest.mark.parametrize("variant, marker_height, distance_sigma", [("full", 0.2, 2.0), ("compact", 0.1, 1.0)])
def test_evaluation_splits_nuclei_as_inference_does(variant, marker_height, distance_sigma):
    """configs/evaluate.json scores the instances that configs/inference.json's splitter makes, per variant
    (the compact overlay sets the split it was tuned with)."""
    evaluate = load_config(["train", "evaluate"], variant=variant).get_parsed_content("splitter")
    infer = load_config("inference", variant=variant).get_parsed_content("splitter")
    assert evaluate == infer
    assert (infer.marker_height, infer.distance_sigma) == (marker_height, distance_sigma)
