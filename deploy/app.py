"""MONAI Deploy application: nucleus segmentation of H&E images and slides with the GRU-Net bundle.

    python deploy/app.py -i <image, slide or folder> -o <output folder> -m <models/model.ts or a folder holding it>

(or ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``; ``GRUNET_MPP`` sets the inputs'
microns per pixel, ``GRUNET_ORGAN`` their organ, e.g. ``breast``, for the network's organ prompts). Every input goes through the bundle's pipeline (``segmenter`` of the ``inference.json``
embedded in ``model.ts``, with the TorchScript network) and gets ``<output>/<name>/`` with the same files as the
bundle command line; ``<output>/report.json`` lists what was written, skipped and converted. Exit status
(``bundle.errors``): 0 every input written, 1 nothing processed (one line on stderr), 2 some inputs skipped.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
# the bundle's package: next to this file in a MAP (the packaged app folder holds bundle/), one level up in the repo
BUNDLE_ROOT = next((p for p in (HERE, HERE.parent) if (p / "bundle" / "__init__.py").is_file()), HERE.parent)
for _p in (str(HERE), str(BUNDLE_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; the text prior is inside model.ts

from cuda_runtime import preload_cuda_runtime  # noqa: E402

preload_cuda_runtime()  # before holoscan (imported by monai.deploy) links libcudart.so.13

import torch  # noqa: E402
from holoscan.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config  # noqa: E402

from bundle.errors import EXIT_ERROR, InputError, find_input_error  # noqa: E402
from bundle.io.slides import check_mpp  # noqa: E402
from bundle.networks.text_prior import embedded_text_prior  # noqa: E402
from bundle.pipeline.check import check_output_dir, list_inputs, output_names  # noqa: E402
from bundle.pipeline.report import RunReport  # noqa: E402
from bundle.pipeline.segmenter import NucleusSegmenter  # noqa: E402
from operators import InputLoaderOperator, NucleusSegmenterOperator  # noqa: E402

__all__ = ["NucleiSegApp", "check_model", "load_segmenter", "main"]
logger = logging.getLogger(__name__)
EMBEDDED = ("metadata.json", "inference.json")


def check_model(path: Path) -> Path:
    """The TorchScript bundle at ``path`` (a ``.ts`` file, or a folder holding exactly one).

    Raises:
        InputError: no model there, not TorchScript, or exported without the bundle's metadata and config.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.ts"))
        if len(found) != 1:
            raise InputError(f"{path}: expected one TorchScript model (*.ts) in this folder, found {len(found)}; run scripts/export_model_ts.sh")
        path = found[0]
    if not path.is_file():
        raise InputError(f"{path}: model not found")
    extra = dict.fromkeys(EMBEDDED, "")
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        logger.debug("torch.jit.load(%s) failed: %s", path, e)
        raise InputError(f"{path}: not a TorchScript model (a training checkpoint?); export one with scripts/export_model_ts.sh") from e
    missing = [k for k, v in extra.items() if not v]
    if missing:
        raise InputError(f"{path}: TorchScript model without {', '.join(missing)}; export it with monai.bundle ckpt_export (scripts/export_model_ts.sh)")
    return path


def load_segmenter(model: Path) -> NucleusSegmenter:
    """The bundle's pipeline as ``model.ts`` embeds it: its ``inference.json`` ``segmenter``, with the TorchScript
    network in place of ``network_def``, no checkpoint to load, and the PyTorch runtime (OpenVINO converts eager
    networks, not scripted ones; on the same input the two give the same masks, see the README's speed table).
    The organ prompts come from the text prior embedded in ``model.ts``, the organ from ``GRUNET_ORGAN``."""
    parser = get_bundle_config(str(model), ["inference"])
    parser["deploy_model_path"] = str(model)
    parser["segmenter#network"] = "$torch.jit.load(@deploy_model_path, map_location=@device)"
    parser["segmenter#checkpoint"] = None
    parser["segmenter#runtime"] = "torch"
    parser["segmenter#progress"] = False
    prior = embedded_text_prior(model)
    with tempfile.TemporaryDirectory(prefix="grunet_") as tmp:  # read once, when the segmenter is built
        if prior is None:
            logger.warning("%s holds no text prior: every input gets the generic prompts", model)
            parser["segmenter#text_prior_file"] = None
        else:
            parser["segmenter#text_prior_file"] = str(Path(tmp) / "text_prior.pt")
            Path(parser["segmenter#text_prior_file"]).write_bytes(prior)
        segmenter = parser.get_parsed_content("segmenter")
    segmenter.organ = os.environ.get("GRUNET_ORGAN") or None  # set on the object: the config would evaluate "$..."
    return segmenter


class NucleiSegApp(Application):
    """Input loader -> the bundle's nucleus pipeline, for images and slides alike.

    The run's :class:`bundle.pipeline.report.RunReport` is ``self.report`` after :meth:`run`.
    """

    name = "pathology_nuclei_segmentation_grunet"
    description = "Nucleus segmentation (instance TIFF, mask, overlay, GeoJSON, CSV) of H&E images and slides with GRU-Net"
    version = "0.7.10"

    def __init__(self, *args, **kwargs):
        self.report: Optional[RunReport] = None
        self._resolved: Optional[Tuple[AppContext, Dict[Path, str], Path]] = None
        super().__init__(*args, **kwargs)

    def resolve(self) -> Tuple[AppContext, Dict[Path, str], Path]:
        """The app context, the inputs with their output names, and the model file, checked (once).

        Raises:
            InputError: bad input, output or model path, or a bad ``GRUNET_MPP``.
        """
        if self._resolved is None:
            context = Application.init_app_context(self.argv)
            check_mpp(os.environ.get("GRUNET_MPP"))
            inputs, ignored = list_inputs(Path(context.input_path))
            output_dir = check_output_dir(Path(context.output_path))
            model = check_model(Path(context.model_path))
            self.report = RunReport(output_dir)
            self.report.add_ignored(ignored)
            self._resolved = context, output_names(inputs), model
        return self._resolved

    def compose(self):
        context, names, model = self.resolve()
        loader = InputLoaderOperator(self, CountCondition(self, len(names)), names=names, name="loader")
        segmenter = NucleusSegmenterOperator(
            self, segmenter=load_segmenter(model), output_dir=Path(context.output_path), report=self.report,
            mpp=check_mpp(os.environ.get("GRUNET_MPP")), name="nucleus_segmenter",
        )
        self.add_flow(loader, segmenter, {("input", "input")})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the app; returns the exit status (``bundle.errors``)."""
    app = NucleiSegApp(list(argv)) if argv is not None else NucleiSegApp()
    try:
        app.resolve()  # fail fast, with one line, before the graph starts
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # the SDK's argument parser creates the output folder and lets this through
        print(f"error: {e.filename}: cannot create the output folder ({e.strerror})", file=sys.stderr)
        return EXIT_ERROR
    try:
        app.run()
    except RuntimeError as e:  # an operator failed; holoscan has logged where
        found = find_input_error(e)
        print(f"error: {found or 'the pipeline stopped (' + (str(e).strip().splitlines() or ['RuntimeError'])[0] + '); see the log above'}", file=sys.stderr)
        return EXIT_ERROR
    report = app.report
    report.save()
    for item in report.skipped:
        print(f"skipped: {item['reason']}", file=sys.stderr)
    for item in report.ignored:
        print(f"ignored: {item['input']}: {item['reason']}", file=sys.stderr)
    if report.skipped:
        print(f"warning: {len(report.skipped)} of {len(report.written) + len(report.skipped)} inputs skipped, see {report.path}", file=sys.stderr)
    print(f"{len(report.written)} written, {len(report.skipped)} skipped -> {report.path}")
    return report.exit_status


if __name__ == "__main__":
    sys.exit(main())
