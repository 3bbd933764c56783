"""Organ prompts: the text prior's per-organ prompt sets, GRU-Net's per-image text input, the organ of each item
in training (data lists, ``OrganTextd``) and of each input in inference (``--organ``, ``--organ_csv``, the
segmenter's summaries, the TorchScript model that carries the prompts)."""

from __future__ import annotations

import json
import os
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.config_io import load_config
from bundle.data.datalists import assign_organs, make_split, merge_splits, read_organ_table
from bundle.data.prompts import OrganTextd
from bundle.errors import InputError
from bundle.networks import GRUNet
from bundle.networks.text_prior import (
    GENERIC,
    OrganPrompts,
    PromptedNetwork,
    build_text_prior,
    embed_text_prior,
    embedded_text_prior,
    load_text_prior_record,
    normalize_organ,
    read_organ_prompts,
    uses_text,
)
from tests.helpers import LIGHT_OVERRIDES, MONUSEG, ROOT, SHARED_DATA, TNBC, first_sample

PY = sys.executable
META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
SHIPPED_PRIOR = ROOT / "models" / "text_prior.pt"
PROMPTS_FILE = ROOT / "configs" / "prompts.json"


@pytest.fixture(scope="module")
def prompts():
    return OrganPrompts(SHIPPED_PRIOR)


# -- the text prior ---------------------------------------------------------------------------------------------
def test_shipped_prior_has_every_organ_of_the_prompt_file(prompts):
    organs, template = read_organ_prompts(PROMPTS_FILE)
    record = load_text_prior_record(SHIPPED_PRIOR)
    assert prompts.known == sorted(organs) and record["organs"] == organs
    assert tuple(record["organ_embeddings"].shape) == (len(organs), *record["embeddings"].shape)
    assert "{prompt}" in template and "{organ}" in template


def test_shipped_organ_prompts_match_a_fresh_encoding():
    """Rebuild models/text_prior.pt with scripts/build_text_prior.py when this fails."""
    organs, template = read_organ_prompts(PROMPTS_FILE)
    shipped = load_text_prior_record(SHIPPED_PRIOR)
    fresh = build_text_prior(shipped["prompts"], organs=organs, organ_template=template)
    torch.testing.assert_close(fresh["organ_embeddings"], shipped["organ_embeddings"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, expected", [
    ("Breast", "breast"), ("  breast ", "breast"), ("Urinary_Bladder", "urinary bladder"),
    (None, GENERIC), ("", GENERIC), ("unknown", GENERIC), ("Generic", GENERIC),
])
def test_normalize_organ(name, expected):
    assert normalize_organ(name) == expected


@pytest.mark.parametrize("content, match", [
    ({"prompts": ["a"], "organs": "breast"}, "list of organ names"),
    ({"prompts": ["a"], "organs": ["breast", "Breast"]}, "distinct"),
    ({"prompts": ["a"], "organs": ["generic"]}, "distinct"),
    ({"prompts": ["a"], "organs": ["breast"], "organ_template": "{prompt}"}, "organ_template"),
])
def test_read_organ_prompts_errors(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        read_organ_prompts(path)


def test_known_unknown_and_generic_organs(prompts, caplog):
    assert torch.equal(prompts.text(None), prompts.generic) and torch.equal(prompts.text("unknown"), prompts.generic)
    assert torch.equal(prompts.text("Breast"), prompts.by_organ["breast"])
    assert not torch.allclose(prompts.text("breast"), prompts.text("liver"))
    with caplog.at_level(logging.WARNING):
        assert prompts.resolve("lung") == GENERIC and torch.equal(prompts.text("lung"), prompts.generic)
    warnings = [r.getMessage() for r in caplog.records if "lung" in r.getMessage()]
    assert len(warnings) == 1 and "known organs: bladder, breast" in warnings[0]  # once per name, listing the known


def test_a_prior_without_organs_still_loads(tmp_path):
    old = {k: v for k, v in load_text_prior_record(SHIPPED_PRIOR).items() if k not in ("organs", "organ_embeddings")}
    torch.save(old, tmp_path / "old.pt")
    prompts = OrganPrompts(tmp_path / "old.pt")
    assert prompts.known == [] and prompts.resolve("breast") == GENERIC


def test_text_prior_travels_inside_torchscript(tmp_path):
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(GRUNet(features=4, cdrb_units=1)), str(path), _extra_files={"metadata.json": "{}"})
    assert embedded_text_prior(path) is None
    embed_text_prior(path, SHIPPED_PRIOR)
    assert embedded_text_prior(path) == SHIPPED_PRIOR.read_bytes()
    extra = {"metadata.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert extra["metadata.json"] == b"{}"  # the other extra files are kept


# -- the network's text input -------------------------------------------------------------------------------------
TEXT_CASES = [
    # text shape (None: the buffer), input shape, expected output shape
    (None, (2, 3, 32, 32), (2, 2, 32, 32)),
    ((16, 384), (2, 3, 32, 32), (2, 2, 32, 32)),
    ((1, 16, 384), (3, 3, 32, 48), (3, 2, 32, 48)),
    ((2, 16, 384), (2, 3, 64, 32), (2, 2, 64, 32)),
]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("text_shape, input_shape, expected", TEXT_CASES)
def test_grunet_text_input_shapes(prompts, text_shape, input_shape, expected, train):
    torch.manual_seed(0)
    net = GRUNet(features=4, cdrb_units=1, distance_head=True, text_prior=prompts.generic).train(train)
    text = None if text_shape is None else torch.rand(text_shape)
    assert net(torch.rand(input_shape), text).shape == expected


def test_organ_text_changes_the_output_and_none_is_the_generic_prior(prompts):
    torch.manual_seed(0)
    net = GRUNet(features=4, cdrb_units=1, distance_head=True, text_prior=prompts.generic).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain, generic = net(x), net(x, prompts.text(None))
        per_image = net(x, torch.stack([prompts.text("breast"), prompts.text("liver")]))
        breast = net(x[:1], prompts.text("breast"))
    torch.testing.assert_close(plain, generic, atol=0, rtol=0)
    assert not torch.equal(per_image, plain)
    torch.testing.assert_close(per_image[:1], breast)  # each image gets its own text
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x[:1], prompts.text("breast")), breast)


def test_prompted_network_fixes_the_text(prompts):
    net = GRUNet(features=4, cdrb_units=1, text_prior=prompts.generic).eval()
    wrapped = PromptedNetwork(net, prompts.text("kidney"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x, prompts.text("kidney")))
    assert uses_text(net) and not uses_text(GRUNet(features=4, cdrb_units=1, gdam=False))


# -- training data ------------------------------------------------------------------------------------------------
def test_organ_table_and_assignment(tmp_path):
    table = tmp_path / "organs.csv"
    table.write_text("image,organ\nimages/a.png,Liver\nb.tif,\n")
    assert read_organ_table(table) == {"a": "Liver", "b": ""}
    table.write_text("\ufeffimage,organ\nimages/a.png,Liver\nb.tif,\n", encoding="utf-8")  # saved by a spreadsheet
    assert read_organ_table(table) == {"a": "Liver", "b": ""}
    items = assign_organs([{"id": "a"}, {"id": "b"}, {"id": "c"}], organ="breast", organ_csv=table)
    assert [i["organ"] for i in items] == ["liver", "breast", "breast"]
    assert assign_organs([{"id": "a"}])[0]["organ"] == GENERIC


@pytest.mark.parametrize("content, match", [
    ("id,tissue\na,x\n", "needs an 'organ' column"), ("id,organ\n", "has no rows"), ("", "needs an 'organ' column"), (None, "cannot read"),
])
def test_organ_table_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "organs.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        read_organ_table(path)
    assert str(path) in str(err.value)


def test_split_items_carry_organ_and_dataset():
    splits = [make_split(MONUSEG, "random", 0.25, name="monuseg"), make_split(TNBC, "patient", num_folds=2, organ="breast")]
    merged = merge_splits(splits)
    assert len(merged["train"]) + len(merged["validation"]) == 6
    assert {(i["dataset"], i["organ"]) for i in merged["train"] + merged["validation"]} >= {("tnbc", "breast")}
    assert {i["organ"] for i in merged["train"] + merged["validation"] if i["dataset"] == "monuseg"} == {GENERIC}
    unseen = merge_splits(splits, validation_only=["tnbc"])  # trained without TNBC, validated on it
    assert unseen["validation"] == merged["validation"] and {i["dataset"] for i in unseen["train"]} == {"monuseg"}
    assert len(unseen["train"]) == sum(i["dataset"] == "monuseg" for i in merged["train"])


@pytest.mark.parametrize("item, generic_prob, expected", [
    ({"organ": "breast"}, 0.0, "breast"),
    ({"organ": "breast"}, 1.0, GENERIC),
    ({"organ": "lung"}, 0.0, GENERIC),
    ({}, 0.0, GENERIC),
])
def test_organ_text_transform(prompts, item, generic_prob, expected):
    out = OrganTextd(text_prior_file=SHIPPED_PRIOR, generic_prob=generic_prob)(item)
    assert out["text"].shape == (16, 384) and out["text"].dtype == torch.float32
    assert torch.equal(out["text"], prompts.text(expected))


@pytest.mark.skipif(not (SHARED_DATA / "tnbc").is_dir(), reason="needs ../shared/data")
def test_monuseg_tnbc_cohort_split():
    """MoNuSeg by image with its manifest's organs, TNBC by patient as breast: no patient on both sides."""
    lists = load_config(["train", "monuseg_tnbc"], overrides={"data_root": str(SHARED_DATA)}).get_parsed_content("datalists")
    train, val = lists["train"], lists["validation"]
    assert len(train) + len(val) == 30 + 37
    tnbc_train = {i["group"] for i in train if i["dataset"] == "tnbc"}
    tnbc_val = {i["group"] for i in val if i["dataset"] == "tnbc"}
    assert tnbc_val and not tnbc_train & tnbc_val and {i["organ"] for i in train + val if i["dataset"] == "tnbc"} == {"breast"}
    assert {i["organ"] for i in train + val if i["dataset"] == "monuseg"} == {
        "bladder", "breast", "colon", "kidney", "liver", "prostate", "stomach"}


# -- inference ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    # float32: an untrained network's prompt effect is below bfloat16's resolution
    overrides = {**LIGHT_OVERRIDES, "checkpoint": None, "progress": False, "runtime": "torch", "bf16": False}
    return load_config("inference", overrides=overrides).get_parsed_content("segmenter")


def test_segmenter_uses_each_inputs_organ(segmenter, tmp_path):
    rgb = np.asarray(Image.open(first_sample()).convert("RGB"))[:128, :128]
    generic, _ = segmenter.predict(rgb)
    breast, _ = segmenter.predict(rgb, "breast")
    assert generic.shape == breast.shape and not np.array_equal(generic, breast)
    np.testing.assert_array_equal(segmenter.predict(rgb, "lung")[0], generic)  # unknown: the generic prompts
    summary = segmenter.segment(first_sample(), tmp_path, organ="Breast")
    assert summary["organ"] == "Breast" and summary["prompts"] == "breast"
    table = tmp_path / "organs.csv"
    table.write_text(f"image,organ\n{first_sample().name},kidney\n")
    report = segmenter.run(first_sample().parent, tmp_path / "batch", organ_csv=table)
    prompts = {s["name"]: s["prompts"] for s in report.written}
    assert prompts.pop(first_sample().stem) == "kidney" and set(prompts.values()) == {GENERIC}


def test_bundle_cli_organ_option(tmp_path):
    out = tmp_path / "out"
    cmd = [PY, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/compact.json']", *META,
           "--dataset_dir", str(first_sample()), "--output_dir", str(out), "--progress", "False", "--organ", "lung"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unknown organ 'lung': using the generic prompts (known organs: bladder, breast" in proc.stdout + proc.stderr
    (summary,) = json.loads((out / "report.json").read_text())["written"]
    assert summary["organ"] == "lung" and summary["prompts"] == GENERIC
