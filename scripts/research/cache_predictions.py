"""Save the shipped network's full-resolution outputs per image, for post-processing studies and head training.

    python scripts/research/cache_predictions.py --dataset_dir <monuseg>/train --split all --output_dir runs/cache/monuseg --features
    python scripts/research/cache_predictions.py --dataset_dir <tnbc> --split_mode none --output_dir runs/cache/tnbc --tta

For every image of the split, ``<output_dir>/<id>.npz`` holds ``prob`` (H, W) float16 nucleus probability from the
sliding-window inferer of ``configs/inference.json`` (``distance`` too when the checkpoint has a distance head); with ``--tta`` also ``prob_tta`` (the mean over the four
flips); with ``--features`` also ``features`` (C, H, W) float16, the last decoder level (the input of the
1x1 output head), blended by the same sliding window. Images already cached are skipped (resumable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.training.checkpoints import load_state_dict  # noqa: E402
from bundle.config_io import load_config  # noqa: E402
from bundle.data.datalists import make_split  # noqa: E402

FLIPS = ((), (2,), (3,), (2, 3))


class LogitsAndFeatures(nn.Module):
    """Wraps GRU-Net: (B, 3, H, W) -> (B, K + C, H, W), the K output logits then the heads' input features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._features: List[torch.Tensor] = []
        net.head.register_forward_hook(lambda m, inp, out: self._features.append(inp[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._features.clear()
        logits = self.net(x)
        return torch.cat([logits, self._features.pop()], dim=1)  # logits: 1 channel, or 2 with a distance head


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--split", default="all", choices=["train", "validation", "all"])
    parser.add_argument("--split_mode", default="random")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="checkpoint (default: the config's models/model.pt)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--features", action="store_true", help="also save the last decoder level")
    parser.add_argument("--tta", action="store_true", help="also save the flip-averaged probability")
    args = parser.parse_args(argv)

    config = load_config("inference")
    state = load_state_dict(args.model or Path(config.get_parsed_content("ckpt_dir")) / "model.pt")
    # a checkpoint from before the distance head (trained for the mask only) loads into the network without it
    has_head = any(k.startswith("distance.") for k in state)
    config = load_config("inference", overrides={"network_def#distance_head": has_head})
    device = config.get_parsed_content("device")
    net = config.get_parsed_content("network_def").to(device).eval()
    net.load_state_dict(state)
    model = LogitsAndFeatures(net) if args.features else net
    preprocess = config.get_parsed_content("preprocessing")
    inferer = config.get_parsed_content("inferer")
    split = make_split(args.dataset_dir, args.split_mode, args.val_fraction, seed=args.split_seed)
    if args.split != "all":
        items = split[args.split]
    elif args.split_mode == "none":  # train and validation are the same list
        items = split["validation"]
    else:
        items = split["train"] + split["validation"]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val_ids = sorted(d["id"] for d in split["validation"])
    (out_dir / "validation_ids.txt").write_text("\n".join(val_ids) + "\n")
    for item in items:
        target = out_dir / f"{item['id']}.npz"
        if target.exists():
            continue
        t0 = time.perf_counter()
        image = preprocess({"image": item["image"]})["image"].unsqueeze(0).to(device)
        arrays = {}
        with torch.no_grad():
            out = inferer(image, model)
            n_out = 2 if has_head else 1
            arrays["prob"] = torch.sigmoid(out[0, 0]).cpu().numpy().astype(np.float16)
            if has_head:
                arrays["distance"] = torch.sigmoid(out[0, 1]).cpu().numpy().astype(np.float16)
            if args.features:
                arrays["features"] = out[0, n_out:].cpu().numpy().astype(np.float16)
            if args.tta:
                probs = [torch.sigmoid(out[0, 0])]
                for dims in FLIPS[1:]:
                    flipped = inferer(torch.flip(image, dims), net)
                    probs.append(torch.sigmoid(torch.flip(flipped, dims)[0, 0]))
                arrays["prob_tta"] = torch.stack(probs).mean(0).cpu().numpy().astype(np.float16)
        tmp = out_dir / f"{item['id']}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.rename(target)
        print(f"{item['id']}: {', '.join(arrays)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
