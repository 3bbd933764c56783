"""What a cohort is: the slides of a folder or of a CSV manifest, each with its output name, resolution and organ.

A manifest is a CSV with a ``path`` column (a slide or image; relative paths are relative to the CSV's folder)
and optional ``mpp`` (microns per pixel of level 0, overriding the file's) and ``organ`` columns::

    path,mpp,organ
    TCGA-A1-0001.svs,,breast
    /data/extra/scan_17.ndpi,0.23,

A row that cannot be used (an ``mpp`` that is not a resolution) becomes a slide with a ``problem``: it is reported
as failed and the others go on. The same path listed twice is one slide.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from PIL import Image

from bundle.errors import InputError
from bundle.io.slides import SLIDE_SUFFIXES, check_mpp
from bundle.pipeline.check import list_inputs, output_names

__all__ = ["CohortSlide", "read_cohort", "slide_weight", "MANIFEST_COLUMNS"]
logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
MANIFEST_COLUMNS = ("path", "mpp", "organ")


@dataclass
class CohortSlide:
    """One slide of a cohort.

    Attributes:
        path: the slide or image file.
        name: its output folder's name (distinct within the cohort, see
            :func:`bundle.pipeline.check.output_names`).
        mpp: microns per pixel of level 0 given for it (None: the file's).
        organ: its organ, for the network's prompts (None: the segmenter's).
        problem: why it cannot be processed, found while reading the manifest (None: no problem known yet).
        weight: its share of the work (level-0 pixels scaled to 0.25 um/px; 0 when its header is unreadable).
    """

    path: Path
    name: str = ""
    mpp: Optional[float] = None
    organ: Optional[str] = None
    problem: Optional[str] = None
    weight: float = 0.0


def _read_manifest(path: Path) -> List[CohortSlide]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the cohort manifest ({err})") from err
    if not rows or "path" not in rows[0]:
        raise InputError(f"{path}: a cohort manifest needs a 'path' column (and optional 'mpp', 'organ'), with one row per slide")
    slides, seen = [], set()
    for line, row in enumerate(rows, start=2):
        value = (row.get("path") or "").strip()
        if not value:
            continue
        file = Path(value) if Path(value).is_absolute() else path.parent / value
        if file.resolve() in seen:  # in/a.png and in/../in/a.png are one slide
            logger.warning("%s line %d: %s is listed again; it is processed once", path, line, file)
            continue
        seen.add(file.resolve())
        slide = CohortSlide(file, organ=(row.get("organ") or "").strip() or None)
        mpp = (row.get("mpp") or "").strip()
        if mpp:
            try:
                slide.mpp = check_mpp(float(mpp), file)
            except (ValueError, InputError) as err:
                slide.problem = f"{file}: {path.name} line {line}: mpp {mpp!r} is not a resolution in microns per pixel ({err})"
        slides.append(slide)
    if not slides:
        raise InputError(f"{path}: the cohort manifest lists no slides")
    return slides


def slide_weight(slide: CohortSlide, model_mpp: float = 0.25) -> float:
    """The slide's share of the work: its level-0 pixels at the model's resolution, read from the header only.

    Slides are weighed with OpenSlide's header (and ``openslide.mpp-x``), images with PIL's (no decoding); a
    header that cannot be read weighs 0 (the slide fails fast when it is processed)."""
    mpp = slide.mpp
    try:
        if slide.path.suffix.lower() in SLIDE_SUFFIXES:
            import openslide

            try:
                with openslide.OpenSlide(str(slide.path)) as handle:
                    width, height = handle.dimensions
                    mpp = mpp or float(handle.properties.get(openslide.PROPERTY_NAME_MPP_X) or 0) or None
            except openslide.OpenSlideError:
                with Image.open(slide.path) as im:  # a plain TIFF
                    width, height = im.size
        else:
            with Image.open(slide.path) as im:
                width, height = im.size
    except Exception:  # noqa: BLE001 - any unreadable header: the slide is reported when processed
        return 0.0
    scale = (mpp / model_mpp) if mpp else 1.0
    return float(width) * float(height) * scale * scale


def read_cohort(source: PathLike, model_mpp: float = 0.25) -> List[CohortSlide]:
    """The slides of a folder (every image and slide directly in it), one file, or a CSV manifest, named and weighed.

    Args:
        source: a folder, a slide or image, or a ``.csv`` manifest (see the module docstring).
        model_mpp: the network's resolution (weights are model pixels).

    Raises:
        InputError: the folder or manifest does not exist, holds no slides, or the manifest has no ``path`` column.
    """
    source = Path(source)
    if source.suffix.lower() == ".csv":
        if not source.is_file():
            raise InputError(f"{source}: no such cohort manifest")
        slides = _read_manifest(source)
    else:
        inputs, ignored = list_inputs(source)
        for item in ignored:
            logger.info("not a slide: %s (%s)", item["input"], item["reason"])
        slides = [CohortSlide(p) for p in inputs]
    names = output_names([s.path for s in slides])
    for slide in slides:
        slide.name = names[slide.path]
        slide.weight = slide_weight(slide, model_mpp) if slide.problem is None else 0.0
    return slides
