"""Data lists from folder layouts, and validation splits.

Layouts (as in the MoNuSeg and TNBC releases)::

    <dataset_dir>/images/<id>.png      RGB H&E tiles (PNG, TIFF or JPEG)
    <dataset_dir>/masks/<id>.png       instance labels (uint16, 0 = background) or binary (0/255)
                                       (a class map, e.g. 0/128/255: its connected components, with a warning)

Every file is checked when the list is made: files that are not images, images that cannot be decoded and
images without a mask are skipped and reported (logged, and returned in :attr:`DataScan.skipped`); the rest
goes on. A missing folder, or one with nothing usable, raises an :class:`~bundle.errors.InputError` naming it
(:class:`DatasetNotFoundError` / :class:`DatasetNotAFolderError` are also ``FileNotFoundError`` /
``NotADirectoryError``); bad split options raise :class:`~bundle.errors.InputError` (a ``ValueError``).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from bundle.data.targets import mask_kind
from bundle.errors import InputError
from bundle.io.images import ImageReadError, inspect_image, is_image_file, read_mask
from bundle.networks.text_prior import normalize_organ

__all__ = [
    "SPLIT_MODES",
    "DatasetNotFoundError",
    "DatasetNotAFolderError",
    "DataScan",
    "group_id",
    "scan_images",
    "paired_datalist",
    "split_datalist",
    "read_organ_table",
    "assign_organs",
    "make_split",
    "merge_splits",
]

SPLIT_MODES = ("random", "kfold", "patient", "none")
PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)
_TCGA_PATIENT = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)


class DatasetNotFoundError(InputError, FileNotFoundError):
    """A dataset or image folder that does not exist (an :class:`InputError` and a ``FileNotFoundError``)."""


class DatasetNotAFolderError(InputError, NotADirectoryError):
    """A dataset or image folder path that is a file (an :class:`InputError` and a ``NotADirectoryError``)."""


@dataclass
class DataScan:
    """Result of scanning a folder.

    Attributes:
        items: usable items, ``{"image": path, "id": stem, "group": patient}`` (+ ``"label": path`` when paired).
        skipped: ``{"file": path, "reason": text}`` for each file left out.
    """

    items: List[Dict[str, str]] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def skip(self, path: PathLike, reason: str) -> None:
        """Record and log a skipped file."""
        self.skipped.append({"file": str(path), "reason": reason})
        logger.warning("skipped %s: %s", path, reason)


def group_id(stem: str) -> str:
    """Patient (slide) of an image id: ``TCGA-XX-YYYY`` for TCGA ids, the part before the first ``_`` for TNBC
    ids (``03_2`` -> ``03``), else the id itself."""
    match = _TCGA_PATIENT.match(stem)
    if match:
        return match.group(1).upper()
    return stem.split("_")[0] if "_" in stem else stem


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetNotFoundError(f"{what} does not exist: {path}")
    if not path.is_dir():
        raise DatasetNotAFolderError(f"{what} is not a folder: {path}")


def _list_files(folder: Path, scan: DataScan) -> List[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_image_file(path):
            scan.skip(path, "not an image file (expected one of png, tif, tiff, jpg, jpeg)")
            continue
        files.append(path)
    return files


def scan_images(image_dir: PathLike) -> DataScan:
    """List the readable images of a folder, for inference.

    Args:
        image_dir: folder of images; an image file path is accepted too.

    Returns:
        :class:`DataScan` whose items are ``{"image", "id", "group"}``.

    Raises:
        DatasetNotFoundError: the folder does not exist (a ``FileNotFoundError``).
        InputError: the folder holds no readable image (a ``ValueError``).
    """
    image_dir = Path(image_dir)
    scan = DataScan()
    if image_dir.is_file():
        candidates = [image_dir]
    else:
        _require_dir(image_dir, "image folder")
        candidates = _list_files(image_dir, scan)
    for path in candidates:
        try:
            inspect_image(path)
        except ImageReadError as err:
            scan.skip(path, str(err).replace(f"{path}: ", ""))
            continue
        scan.items.append({"image": str(path), "id": path.stem, "group": group_id(path.stem)})
    if not scan.items:
        raise InputError(f"no readable image in {image_dir} ({len(scan.skipped)} file(s) skipped)")
    return scan


def paired_datalist(
    dataset_dir: Union[PathLike, Sequence[PathLike]], image_dir: str = "images", mask_dir: str = "masks"
) -> DataScan:
    """Pair ``images/<id>.*`` with ``masks/<id>.*`` in one or several dataset folders.

    Images without a mask, masks of another size than their image, and unreadable files are skipped and reported.

    Returns:
        :class:`DataScan` whose items are ``{"image", "label", "id", "group"}``.

    Raises:
        DatasetNotFoundError: a dataset folder, or its images/masks folder, does not exist (a ``FileNotFoundError``).
        DatasetNotAFolderError: one of them is a file (a ``NotADirectoryError``).
        InputError: no usable image-mask pair was found (a ``ValueError``).
    """
    dirs = [dataset_dir] if isinstance(dataset_dir, (str, os.PathLike)) else list(dataset_dir)
    scan = DataScan()
    for root in map(Path, dirs):
        _require_dir(root, "dataset_dir")
        _require_dir(root / image_dir, f"image folder of {root}")
        _require_dir(root / mask_dir, f"mask folder of {root}")
        masks = {p.stem: p for p in _list_files(root / mask_dir, scan)}
        for image in _list_files(root / image_dir, scan):
            mask = masks.get(image.stem)
            if mask is None:
                scan.skip(image, f"no mask named {image.stem}.* in {root / mask_dir}")
                continue
            try:
                info = inspect_image(image)
                size = (info.height, info.width)
                labels = read_mask(mask)
                mask_shape = labels.shape
            except ImageReadError as err:
                scan.skip(image, str(err))
                continue
            if info.orientation != 1 or info.pages > 1:  # training's loader reads the stored first page as it is
                scan.skip(image, f"{image}: {info.conversion}; for training, save the image upright as a single page")
                continue
            if tuple(mask_shape) != size:
                scan.skip(image, f"mask {mask.name} is {mask_shape[0]}x{mask_shape[1]}, image is {size[0]}x{size[1]}")
                continue
            if mask_kind(labels) == "classes":
                logger.warning("%s: its %d values each cover many separate regions (a class map, not one id per nucleus): "
                               "its nuclei are taken as the connected components of its non-zero pixels", mask, len(np.unique(labels)) - 1)
            scan.items.append({"image": str(image), "label": str(mask), "id": image.stem, "group": group_id(image.stem)})
    if not scan.items:
        raise InputError(f"no usable image-mask pair in {', '.join(map(str, dirs))} ({len(scan.skipped)} skipped)")
    return scan


def split_datalist(
    items: Sequence[Dict[str, str]],
    mode: str = "random",
    val_fraction: float = 0.2,
    num_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    """Split items into (train, validation).

    Args:
        items: data list items with ``"id"`` and ``"group"`` keys.
        mode: ``"random"`` (a shuffled ``val_fraction`` of the images), ``"kfold"`` (fold ``fold`` of
            ``num_folds`` shuffled image folds), ``"patient"`` (fold ``fold`` of ``num_folds`` folds of whole
            patients/slides, so no patient is on both sides; TNBC must be split this way) or ``"none"``
            (everything in both lists, for evaluation of a fixed set).
        val_fraction: validation share for ``"random"``, in (0, 1).
        num_folds: number of folds for ``"kfold"`` and ``"patient"``, >= 2.
        fold: which fold is validation, in [0, num_folds).
        seed: shuffling seed.

    Raises:
        InputError: unknown mode, bad fraction or fold, or too few items/patients to split (a ``ValueError``).
    """
    if mode not in SPLIT_MODES:
        raise InputError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    items = sorted(items, key=lambda d: d["id"])
    if mode == "none":
        return list(items), list(items)
    rng = random.Random(seed)
    if mode == "random":
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if len(items) < 2:
            raise InputError(f"need at least 2 images to split, got {len(items)}")
        order = list(items)
        rng.shuffle(order)
        n_val = min(len(order) - 1, max(1, round(val_fraction * len(order))))
        return sorted(order[n_val:], key=lambda d: d["id"]), sorted(order[:n_val], key=lambda d: d["id"])
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise InputError(f"need num_folds >= 2 and 0 <= fold < num_folds, got fold {fold} of {num_folds}")
    keys = sorted({d["group"] for d in items}) if mode == "patient" else [d["id"] for d in items]
    if len(keys) < num_folds:
        what = "patients" if mode == "patient" else "images"
        raise InputError(f"{num_folds} folds need at least {num_folds} {what}, got {len(keys)}")
    rng.shuffle(keys)
    val_keys = set(keys[fold::num_folds])
    key = "group" if mode == "patient" else "id"
    return [d for d in items if d[key] not in val_keys], [d for d in items if d[key] in val_keys]


def read_organ_table(path: PathLike) -> Dict[str, str]:
    """Organ per image id from a CSV with an ``organ`` column and an ``id`` or ``image`` column (a file name or
    path, whose stem is the id), e.g. MoNuSeg's ``manifest.csv``.

    Raises:
        InputError: the file is missing or unreadable, lacks those columns or has no rows.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's CSV starts with a byte-order mark
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the organ table ({err})") from err
    key = "id" if "id" in columns else "image" if "image" in columns else None
    if key is None or "organ" not in columns:
        raise InputError(f"{path}: an organ table needs an 'organ' column and an 'id' or 'image' column")
    if not rows:
        raise InputError(f"{path}: the organ table has no rows")
    return {Path(row[key]).stem if key == "image" else row[key]: (row["organ"] or "").strip() for row in rows if row[key]}


def assign_organs(
    items: List[Dict[str, str]], organ: Optional[str] = None, organ_csv: Optional[PathLike] = None
) -> List[Dict[str, str]]:
    """Set each item's ``"organ"``: its row of ``organ_csv`` (see :func:`read_organ_table`), else ``organ``, else
    ``"generic"`` (the generic prompts), normalised by :func:`bundle.networks.text_prior.normalize_organ`.
    Returns ``items``, changed in place."""
    table = read_organ_table(organ_csv) if organ_csv else {}
    for item in items:
        item["organ"] = normalize_organ(table.get(item["id"]) or organ)
    return items


def make_split(
    dataset_dir: Union[PathLike, Sequence[PathLike]],
    mode: str = "random",
    val_fraction: float = 0.2,
    num_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    organ: Optional[str] = None,
    organ_csv: Optional[PathLike] = None,
    name: Optional[str] = None,
) -> Dict[str, List[Dict[str, str]]]:
    """Scan paired data and split it: ``{"train": [...], "validation": [...], "skipped": [...]}``.

    Items are ``{"image", "label", "id", "group", "organ", "dataset"}``; see :func:`paired_datalist`,
    :func:`split_datalist` and :func:`assign_organs`. ``name`` (default: the folder's name) labels the items'
    ``"dataset"``, by which evaluation reports are broken down.
    """
    scan = paired_datalist(dataset_dir)
    assign_organs(scan.items, organ, organ_csv)
    label = name or (Path(dataset_dir).name if isinstance(dataset_dir, (str, os.PathLike)) else "data")
    for item in scan.items:
        item["dataset"] = label
    train, val = split_datalist(scan.items, mode, val_fraction, num_folds, fold, seed)
    logger.info("data %s: %d training, %d validation image(s), %d skipped", label, len(train), len(val), len(scan.skipped))
    return {"train": train, "validation": val, "skipped": scan.skipped}


def merge_splits(
    splits: Sequence[Dict[str, List[Dict[str, str]]]], validation_only: Sequence[str] = ()
) -> Dict[str, List[Dict[str, str]]]:
    """Concatenate the ``train``, ``validation`` and ``skipped`` lists of several :func:`make_split` results (each
    data set split its own way, e.g. MoNuSeg by image and TNBC by patient).

    Args:
        splits: the splits.
        validation_only: names (``dataset`` of the items) of data sets whose training items are left out, so that
            a model is trained without them and validated on them (a cohort it has not seen).
    """
    merged = {key: [item for split in splits for item in split.get(key, [])] for key in ("train", "validation", "skipped")}
    unseen = set(validation_only)
    merged["train"] = [item for item in merged["train"] if item.get("dataset") not in unseen]
    return merged
