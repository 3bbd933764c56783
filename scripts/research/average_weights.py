"""Interpolate two state dicts of the same network ("model soup", weight-space averaging).

    python scripts/research/average_weights.py runs/soup/model_0.3.0.pt models/model.pt --alpha 0.5 \
        --output runs/soup/model_a0.5.pt

Writes ``(1 - alpha) * first + alpha * second`` for every floating-point tensor (BatchNorm running statistics
included); integer buffers (``num_batches_tracked``) are taken from the second. The two must have the same keys
and shapes: averaging only makes sense for weights fine-tuned one from the other (the same loss basin), as the
shipped full model was from the 0.3.0 weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.training.checkpoints import load_state_dict  # noqa: E402


def interpolate(first: Dict[str, torch.Tensor], second: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    """Return ``(1 - alpha) * first + alpha * second`` key by key.

    Raises:
        ValueError: when the keys or a tensor's shape differ.
    """
    if first.keys() != second.keys():
        raise ValueError(f"the state dicts differ in keys: {sorted(set(first) ^ set(second))[:5]}")
    out = {}
    for key, b in second.items():
        a = first[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} against {tuple(b.shape)}")
        out[key] = torch.lerp(a.float(), b.float(), alpha).to(b.dtype) if b.is_floating_point() else b.clone()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the second state dict")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    state = interpolate(load_state_dict(args.first), load_state_dict(args.second), args.alpha)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    print(f"{args.output}: {1 - args.alpha:g} x {args.first} + {args.alpha:g} x {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
