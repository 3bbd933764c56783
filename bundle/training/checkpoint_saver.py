"""MONAI's ``CheckpointSaver`` with writes that a kill cannot cut short.

MONAI's saver writes in place and deletes the file it replaces before writing the new one: a run killed during the
write of epoch N's checkpoint kept neither N-1's nor a complete N, so ``--resume`` started over, and a kill during
a new best model's write left ``models/model.pt`` truncated (the file MONAI Label serves). Here each file is written
to a temporary file and renamed into place (ignite's atomic ``DiskSaver``), and the file it replaces is removed only
after that.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with ``atomic=True``, MONAI's fixed file name (``model.pt``), and removals deferred
    until the next file is in place.

    Args:
        dirname: folder of the files.
        filename: a fixed name for every save (the best model), or None for the names ignite gives.
    """

    def __init__(self, dirname: str, filename: Optional[str] = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._superseded: List[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Optional[Mapping] = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=name, metadata=metadata)
        for old in self._superseded:
            if old != name:  # a fixed name was replaced by the rename itself
                super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        """Called by ignite before it saves the file that supersedes ``filename``: removed after that save."""
        self._superseded.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files are written atomically (see the module)."""

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], **kwargs: Any):
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)
