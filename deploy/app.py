"""MONAI Deploy application: nucleus segmentation of H&E images and slides with the GRU-Net bundle.

    python deploy/app.py -i <image, slide or folder> -o <output folder> -m <models/model.ts or a folder holding it>

(or ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``). For each input it writes
``<output>/<stem>/``: the mask, the overlay, the nuclei as GeoJSON and CSV, and a summary; ``<output>/report.json``
lists what was written and what was skipped and why. Exit status: 0 when at least one input was written (skipped
ones are reported), 1 when nothing could be done (no inputs, a bad model, nothing written), with a one-line message.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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
from monai.deploy.core import AppContext, Application, Image, IOType  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import (  # noqa: E402
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
    get_bundle_config,
)

from bundle.io.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES  # noqa: E402
from bundle.pipeline.segmenter import find_inputs  # noqa: E402
from operators import InputLoaderOperator, NucleusWriterOperator, RunReport, SlideSegmenterOperator  # noqa: E402

__all__ = ["NucleiSegApp", "AppInputError", "check_model", "list_inputs", "main"]
logger = logging.getLogger(__name__)
EMBEDDED = ("metadata.json", "inference.json")


class AppInputError(ValueError):
    """A problem with the app's input, output or model path; the message names the path and the problem."""


def check_model(path: Path) -> Path:
    """The TorchScript bundle at ``path`` (a ``.ts`` file, or a folder holding exactly one).

    Raises:
        AppInputError: no model there, not TorchScript, or exported without the bundle's metadata and config.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.ts"))
        if len(found) != 1:
            raise AppInputError(f"{path}: expected one TorchScript model (*.ts) in this folder, found {len(found)}; run scripts/export_model_ts.sh")
        path = found[0]
    if not path.is_file():
        raise AppInputError(f"{path}: model not found")
    extra = dict.fromkeys(EMBEDDED, "")
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        logger.debug("torch.jit.load(%s) failed: %s", path, e)
        raise AppInputError(f"{path}: not a TorchScript model (a training checkpoint?); export one with scripts/export_model_ts.sh") from e
    missing = [k for k, v in extra.items() if not v]
    if missing:
        raise AppInputError(f"{path}: TorchScript model without {', '.join(missing)}; export it with monai.bundle ckpt_export (scripts/export_model_ts.sh)")
    return path


def list_inputs(path: Path) -> List[Path]:
    """The image or slide at ``path``, or those directly inside the folder.

    Raises:
        AppInputError: the path does not exist or the folder holds no image or slide.
    """
    path = Path(path)
    if not path.exists():
        raise AppInputError(f"{path}: input not found")
    inputs = find_inputs(path)
    if not inputs:
        kinds = ", ".join(sorted(set(IMAGE_SUFFIXES) | set(SLIDE_SUFFIXES)))
        raise AppInputError(f"{path}: no images or slides ({kinds}) in this folder")
    return inputs


def check_output(path: Path) -> Path:
    """Create the output folder and check it is writable.

    Raises:
        AppInputError: it cannot be created or written to.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise AppInputError(f"{path}: output folder is not writable ({e.strerror or e})") from e
    return path


class NucleiSegApp(Application):
    """Loader -> ``MonaiBundleInferenceOperator`` -> nucleus writer for images; a tiled segmenter for slides.

    The run's :class:`operators.RunReport` is ``self.report`` after :meth:`run`.
    """

    name = "pathology_nuclei_segmentation_grunet"
    description = "Nucleus segmentation (mask, overlay, GeoJSON, CSV) of H&E images and slides with GRU-Net"
    version = "0.2.0"

    def __init__(self, *args, **kwargs):
        self.report: Optional[RunReport] = None
        self._resolved: Optional[Tuple[AppContext, List[Path], Path]] = None
        super().__init__(*args, **kwargs)

    def resolve(self) -> Tuple[AppContext, List[Path], Path]:
        """The app context, the inputs and the model file, checked (once).

        Raises:
            AppInputError: see :func:`list_inputs`, :func:`check_output`, :func:`check_model`.
        """
        if self._resolved is None:
            context = Application.init_app_context(self.argv)
            inputs = list_inputs(Path(context.input_path))
            check_output(Path(context.output_path))
            self._resolved = context, inputs, check_model(Path(context.model_path))
        return self._resolved

    def compose(self):
        context, inputs, model = self.resolve()
        output_dir = Path(context.output_path)
        self.report = RunReport(output_dir)
        parser = get_bundle_config(str(model), ["inference"])
        device = parser.get_parsed_content("device")

        loader = InputLoaderOperator(self, CountCondition(self, len(inputs)), inputs=inputs, report=self.report, name="loader")
        infer = MonaiBundleInferenceOperator(
            self,
            app_context=context,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=model,
            name="bundle_inference",
        )
        writer = NucleusWriterOperator(self, output_dir=output_dir, report=self.report, name="nucleus_writer")
        network = torch.jit.load(str(model), map_location=device).eval()
        slides = SlideSegmenterOperator(
            self,
            network=network,
            inferer=parser.get_parsed_content("inferer"),
            output_dir=output_dir,
            report=self.report,
            device=device,
            name="slide_segmenter",
        )
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "pred")})
        self.add_flow(loader, writer, {("item", "item")})
        self.add_flow(loader, slides, {("slide", "slide")})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the app; returns the exit status (0: something written, 1: nothing could be done)."""
    app = NucleiSegApp(list(argv)) if argv is not None else NucleiSegApp()
    try:
        app.resolve()  # fail fast, with one line, before the graph starts
    except AppInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the SDK's argument parser creates the output folder and lets this through
        print(f"error: {e.filename}: cannot create the output folder ({e.strerror})", file=sys.stderr)
        return 1
    try:
        app.run()
    except RuntimeError as e:  # an operator failed unexpectedly; holoscan has logged where
        print(f"error: the pipeline stopped ({str(e).strip().splitlines()[0] if str(e).strip() else 'RuntimeError'}); see the log above", file=sys.stderr)
        return 1
    report = app.report
    if report is None or not report.written:
        reasons = "; ".join(s["reason"] for s in (report.skipped if report else []))
        print(f"error: nothing written ({reasons or 'no input produced an output'}); see {report.path if report else 'the log'}", file=sys.stderr)
        return 1
    if report.skipped:
        print(f"warning: {len(report.skipped)} of {len(report.written) + len(report.skipped)} inputs skipped, see {report.path}", file=sys.stderr)
    print(f"{len(report.written)} written, {len(report.skipped)} skipped -> {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
