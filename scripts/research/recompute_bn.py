"""Recompute a trained network's BatchNorm running statistics on the training crops ("precise BN").

    python scripts/research/recompute_bn.py --configs configs/monuseg_tnbc.json --data_root <data> \
        --variant compact --model models/model_compact.pt --passes 2 --output runs/bn/model_compact.pt

Training keeps exponential running means (momentum 0.01) over the last few hundred crops, drawn one image per
step; the statistics at the epoch a checkpoint was saved depend on the images seen last. This script runs the
training data loader (the same random crops and augmentation) through the network in train mode without
gradients, with cumulative averaging as in ``torch.optim.swa_utils.update_bn``, and saves the state dict with
the averaged statistics. Weights other than the BatchNorm buffers are unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.config_io import load_config  # noqa: E402
from bundle.training.checkpoints import load_state_dict  # noqa: E402


def reset_batchnorm(net: nn.Module) -> Dict[nn.Module, Optional[float]]:
    """Zero the running statistics of every BatchNorm layer of ``net`` and switch them to cumulative averaging.

    Returns:
        each layer's momentum before the switch, to restore afterwards.
    """
    momenta = {m: m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for bn in momenta:
        bn.reset_running_stats()
        bn.momentum = None
    return momenta


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", action="append", default=[], help="training overlay, repeatable")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--variant", default="full")
    parser.add_argument("--model", required=True, help="state dict to start from")
    parser.add_argument("--passes", type=int, default=2, help="passes over the training loader")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    overrides = {"data_root": args.data_root} if args.data_root else {}
    config = load_config(["train"] + args.configs, overrides=overrides, variant=args.variant)
    device = config.get_parsed_content("device")
    net = config.get_parsed_content("network_def").to(device)
    net.load_state_dict(load_state_dict(args.model))
    layers = reset_batchnorm(net)
    loader = config.get_parsed_content("train#dataloader")
    prepare_batch = config.get_parsed_content("prepare_batch")
    net.train()
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for _ in range(args.passes):
            for batch in loader:
                image, _label, call_args, call_kwargs = _unpack(prepare_batch(batch, device, False))
                net(image, *call_args, **call_kwargs)
                n += image.shape[0]
    for bn, momentum in layers.items():
        bn.momentum = momentum
    net.eval()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    print(f"{len(layers)} BatchNorm layers averaged over {n} crops in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


def _unpack(prepared):
    """MONAI's prepare_batch returns (image, label) or (image, label, args, kwargs)."""
    if len(prepared) == 2:
        return prepared[0], prepared[1], (), {}
    return prepared


if __name__ == "__main__":
    sys.exit(main())
