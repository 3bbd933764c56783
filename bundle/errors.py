"""The bundle's user-facing error, and the one-line report of it at the command line.

Every problem with what a user passed in (a missing folder, a file that is not an image or checkpoint, a bad
resolution, an unwritable output folder) raises :class:`InputError` with a message that names the path and the
problem. At the command line (``python -m monai.bundle run ...``, ``scripts/*.py``) :func:`install_error_hook`
prints that message as one line, keeps the traceback in the log at debug level, and exits with status
:data:`EXIT_ERROR`.

Exit status of every entry point (bundle CLI, ``scripts/segment_slides.py``, the MONAI Deploy app):
:data:`EXIT_OK` (0) every input was written; :data:`EXIT_ERROR` (1) nothing was processed (bad paths, model or
options; one line on stderr); :data:`EXIT_SKIPPED` (2) the run finished but some inputs were skipped, each
named with its reason in ``report.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from types import TracebackType
from typing import Dict, NoReturn, Optional, Type

__all__ = [
    "InputError", "EXIT_OK", "EXIT_ERROR", "EXIT_SKIPPED", "CommandLineParser", "find_input_error", "install_error_hook",
    "require_packages",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SKIPPED = 2
logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A path, file or option the bundle cannot use, or a package a task needs; the message names it and the
    problem."""


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors (a missing argument, ``--mpp abc``) print one line
    ``error: <message>`` and exit with :data:`EXIT_ERROR`, not argparse's status 2, which here means "some inputs
    skipped"."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def find_input_error(error: Optional[BaseException]) -> Optional[InputError]:
    """The :class:`InputError` behind ``error`` (itself or one in its ``__cause__`` / ``__context__`` chain).

    MONAI's config parser re-raises errors of a component as ``RuntimeError("Failed to instantiate ...")``;
    this finds the user's problem inside.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _report_input_error(kind: Type[BaseException], error: BaseException, tb: Optional[TracebackType]) -> None:
    found = find_input_error(error)
    if found is None:
        sys.__excepthook__(kind, error, tb)
        return
    logger.debug("traceback of the error below", exc_info=(kind, error, tb))
    print(f"error: {found}", file=sys.stderr)


def install_error_hook() -> None:
    """Print an uncaught :class:`InputError` as one line ``error: <message>`` (exit status 1); other errors
    keep Python's full traceback."""
    sys.excepthook = _report_input_error


def require_packages(task: str, packages: Dict[str, str], requirements: str = "requirements-train.txt") -> None:
    """Check that the modules a task needs are installed, before it builds anything.

    Args:
        task: what needs them, for the message (``"training"``).
        packages: module name -> the name pip installs it by (``{"ignite": "pytorch-ignite"}``).
        requirements: the requirements file that has them.

    Raises:
        InputError: ``<task>: <pip names> not installed; pip install -r <requirements>``.
    """
    missing = [pip_name for module, pip_name in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError(f"{task}: {', '.join(missing)} not installed; pip install -r {requirements}")
