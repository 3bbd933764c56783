"""Pack a checkpoint's weights into small files and back (for moving weights through size-limited channels).

    python scripts/research/pack_weights.py pack models/model.pt /tmp/out/model --chunk-mb 15
    python scripts/research/pack_weights.py unpack /tmp/out/model models/model.pt

``pack`` keeps the network state dict only, stores tensors of at least ``--min-fp16`` elements in float16
(BatchNorm statistics and small tensors stay float32) and splits the file into ``<prefix>.partNN`` chunks.
``unpack`` joins the chunks, checks the result loads with ``torch.load(weights_only=True)`` and writes it as a
plain state dict (float16 large tensors; ``load_state_dict`` casts them into a float32 network).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.training.checkpoints import load_state_dict  # noqa: E402


def pack(src: str, prefix: str, chunk_mb: float = 15.0, min_fp16: int = 4096) -> List[Path]:
    state = load_state_dict(src)
    small = {
        k: (v.half() if v.is_floating_point() and v.numel() >= min_fp16 and "running_" not in k else v).contiguous()
        for k, v in state.items()
    }
    buffer = io.BytesIO()
    torch.save(small, buffer)
    data = buffer.getvalue()
    size = int(chunk_mb * 1024 * 1024)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(data), size):
        part = Path(f"{prefix}.part{i // size:02d}")
        part.write_bytes(data[i : i + size])
        parts.append(part)
    return parts


def unpack(prefix: str, dst: str) -> int:
    parts = sorted(Path(prefix).parent.glob(Path(prefix).name + ".part*"))
    if not parts:
        raise FileNotFoundError(f"no chunks {prefix}.partNN")
    data = b"".join(p.read_bytes() for p in parts)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return len(state)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src")
    p.add_argument("prefix")
    p.add_argument("--chunk-mb", type=float, default=15.0)
    p.add_argument("--min-fp16", type=int, default=4096)
    u = sub.add_parser("unpack")
    u.add_argument("prefix")
    u.add_argument("dst")
    args = parser.parse_args(argv)
    if args.command == "pack":
        parts = pack(args.src, args.prefix, args.chunk_mb, args.min_fp16)
        print(f"{args.src} -> {len(parts)} chunk(s): {', '.join(p.name for p in parts)}")
    else:
        print(f"{args.dst}: {unpack(args.prefix, args.dst)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
