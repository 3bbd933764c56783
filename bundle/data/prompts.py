"""The organ prompt of each training or validation item: its organ's text prior, for GRU-Net's ``text`` input."""

from __future__ import annotations

import os
from typing import Any, Dict, Hashable, Mapping, Union

from monai.transforms import MapTransform, RandomizableTransform

from bundle.networks.text_prior import OrganPrompts

__all__ = ["OrganTextd"]


class OrganTextd(RandomizableTransform, MapTransform):
    """Add ``text_key``: the (P, D) prompt embeddings of the item's organ (``d["organ"]``, see
    :func:`bundle.data.datalists.assign_organs`), or with probability ``generic_prob`` the generic ones, so that the
    network stays good when the organ is not given. Unknown organs get the generic prompts (with a warning).

    Args:
        keys: the organ key (``"organ"``); an item without it gets the generic prompts.
        text_prior_file: a text prior with organ prompts (``models/text_prior.pt``).
        generic_prob: probability of the generic prompts instead of the organ's (0 at validation; 1 evaluates
            every image as of unknown organ).
        text_key: where the (P, D) float32 tensor goes; the trainer passes it as ``network(image, text=...)``.
    """

    def __init__(
        self,
        keys: str = "organ",
        text_prior_file: Union[str, os.PathLike] = "models/text_prior.pt",
        generic_prob: float = 0.0,
        text_key: str = "text",
    ):
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, generic_prob)
        self.prompts = OrganPrompts(text_prior_file)
        self.text_key = text_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        organ = next((d[key] for key in self.key_iterator(d)), None)
        d[self.text_key] = self.prompts.text(None if self._do_transform else organ).clone()
        return d
