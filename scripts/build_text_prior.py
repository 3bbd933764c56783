"""Encode the prompt list into the GdAM text prior, offline.

    python scripts/build_text_prior.py --prompts configs/prompts.json --output models/text_prior.pt
    python scripts/build_text_prior.py --encoder /path/to/distilbert-base-uncased --pooling cls --output ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import install_error_hook, require_packages  # noqa: E402
from bundle.networks.text_prior import (  # noqa: E402
    DEFAULT_ENCODER,
    POOLING_MODES,
    build_text_prior,
    read_organ_prompts,
    read_prompts,
    save_text_prior,
)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="configs/prompts.json", help="JSON file with {'prompts': [...]}")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="'all-MiniLM-L6-v2' or a local HF model dir")
    parser.add_argument("--pooling", default="mean", choices=POOLING_MODES)
    parser.add_argument("--output", default="models/text_prior.pt")
    args = parser.parse_args(argv)
    install_error_hook()
    require_packages("building the text prior", {"transformers": "transformers"})
    organs, template = read_organ_prompts(args.prompts)
    record = build_text_prior(read_prompts(args.prompts), args.encoder, args.pooling, organs, template)
    save_text_prior(record, args.output)
    emb = record["embeddings"]
    print(
        f"wrote {args.output}: {emb.shape[0]} prompts x {emb.shape[1]} dims, {len(organs)} organs"
        f" ({', '.join(organs) or 'none'}), encoder {record['encoder']}, pooling {args.pooling}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
