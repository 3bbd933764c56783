"""Operators of the nuclei Deploy application: one input per tick, segmented by the bundle's pipeline.

The graph (see ``app.py``)::

    InputLoaderOperator --input--> NucleusSegmenterOperator

- :class:`InputLoaderOperator` emits the inputs one per call (an image or a slide path and its output name).
- :class:`NucleusSegmenterOperator` runs :class:`bundle.pipeline.segmenter.NucleusSegmenter`, built from the
  ``inference.json`` embedded in ``model.ts`` with the TorchScript network, on each input: images and slides
  alike, with the same files, names and settings as the bundle command line and ``scripts/segment_slides.py``.
  The SDK's ``MonaiBundleInferenceOperator`` is not used: it keeps only the network's first output channel as
  uint8 (the distance head would be lost) and needs the whole image in memory (a slide does not fit), so its
  nuclei would differ from every other entry point's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

from monai.deploy.core import Fragment, Operator, OperatorSpec

from bundle.pipeline.report import RunReport
from bundle.pipeline.segmenter import NucleusSegmenter

__all__ = ["InputLoaderOperator", "NucleusSegmenterOperator"]
logger = logging.getLogger(__name__)


class InputLoaderOperator(Operator):
    """Source: ``(path, name)`` of one input per call, in order; run it with a ``CountCondition`` of ``len(names)``.

    Args:
        fragment: the application.
        names: output name of each input (:func:`bundle.pipeline.check.output_names`).
    """

    def __init__(self, fragment: Fragment, *args, names: Dict[Path, str], **kwargs):
        self.items = list(names.items())
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("input")

    def compute(self, op_input, op_output, context):
        if self._next < len(self.items):
            op_output.emit(self.items[self._next], "input")
            self._next += 1


class NucleusSegmenterOperator(Operator):
    """Sink: one image or slide through the bundle's pipeline; the outcome goes to the run's report.

    Writes into ``<output_dir>/<name>/`` what :meth:`NucleusSegmenter.segment` writes (instance TIFF, mask PNG,
    GeoJSON, CSV, overlay, summary); an input that cannot be used is recorded as skipped with its reason.

    Args:
        fragment: the application.
        segmenter: the pipeline.
        output_dir: the output folder.
        report: the run's ``report.json``.
        mpp: microns per pixel of the inputs, overriding what the files record (None: theirs).
    """

    def __init__(
        self, fragment: Fragment, *args, segmenter: NucleusSegmenter, output_dir: Path, report: RunReport, mpp: Optional[float] = None, **kwargs
    ):
        self.segmenter = segmenter
        self.output_dir = Path(output_dir)
        self.report = report
        self.mpp = mpp
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("input")

    def compute(self, op_input, op_output, context):
        path, name = op_input.receive("input")
        self.segmenter.segment_into(self.report, path, self.output_dir, self.mpp, name)
