"""The pipeline's check stage: what to read, where to write, before any compute.

One input lister (:func:`list_inputs`) and one list of accepted suffixes (:data:`bundle.io.slides.INPUT_SUFFIXES`)
for every entry point; output names that never collide (:func:`output_names`); the output folder checked for
writing first (:func:`check_output_dir`), so that a bad one is found before the compute, not after.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from bundle.errors import InputError
from bundle.io.slides import INPUT_SUFFIXES

__all__ = ["RUN_FILES", "list_inputs", "output_names", "check_output_dir"]
PathLike = Union[str, os.PathLike]
# what a run writes at the top of its output folder besides the inputs' folders (the run's report; a cohort's summary
# and its working folder, bundle.cohort.store.WORK_DIR): never an input's output name, never an input
RUN_FILES = ("report.json", "cohort.csv", "cohort.json", "_cohort")


def list_inputs(path: PathLike) -> Tuple[List[Path], List[Dict[str, str]]]:
    """The input file at ``path``, or the images and slides directly inside the folder (sorted by name).

    Hidden files, sub-folders and the files a run writes (:data:`RUN_FILES`: an output folder may be the input
    folder) are passed over; sub-folders named like an image, other files, and links whose target is missing, are
    returned as ignored ``{"input", "reason"}``.

    Raises:
        InputError: ``path`` does not exist, or the folder holds no image or slide.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_file():
        return [p], []
    inputs, ignored = [], []
    for f in sorted(p.iterdir()):
        if f.name.startswith(".") or f.name in RUN_FILES:
            continue
        if f.is_symlink() and not f.exists():
            ignored.append({"input": str(f), "reason": f"broken link (its target {os.readlink(f)} does not exist)"})
            continue
        if not f.is_file():
            if f.suffix.lower() in INPUT_SUFFIXES:
                ignored.append({"input": str(f), "reason": "a folder, not an image or slide"})
            continue
        if f.suffix.lower() in INPUT_SUFFIXES:
            inputs.append(f)
        else:
            ignored.append({"input": str(f), "reason": f"not an image or slide (suffix {f.suffix or 'none'!r})"})
    if not inputs:
        message = f"{p}: no images or slides ({', '.join(INPUT_SUFFIXES)}) in this folder"
        broken = [Path(item["input"]).name for item in ignored if item["reason"].startswith("broken link")]
        if broken:
            message += f"; {len(broken)} broken link(s): {', '.join(broken[:3])}" + (", ..." if len(broken) > 3 else "")
        raise InputError(message)
    return inputs, ignored


def output_names(inputs: Sequence[PathLike]) -> Dict[Path, str]:
    """A distinct output name per input: its stem, or ``<stem>_<suffix>`` where stems repeat (``x.png``, ``x.tif``
    -> ``x_png``, ``x_tif``), so that no input's files overwrite another's, nor the run's own (:data:`RUN_FILES`:
    ``_cohort.png`` -> ``_cohort_png``)."""
    paths = [Path(p) for p in inputs]
    counts = Counter(p.stem for p in paths)
    names: Dict[Path, str] = {}
    for p in paths:
        name = p.stem if counts[p.stem] == 1 and p.stem not in RUN_FILES else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        while name in names.values() or name in RUN_FILES:  # x.png and X.PNG, or a stem that already ends in _png
            name += "_"
        names[p] = name
    return names


def check_output_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) and check that a file can be written there.

    Raises:
        InputError: it cannot be created or written to; the message names it.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{p}: output folder is not writable ({e.strerror or e})") from e
    return p
