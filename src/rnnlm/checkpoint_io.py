"""Lightning's checkpoint I/O, with each checkpoint written atomically on its own disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rnnlm.files import TEMP_PREFIX, write_with


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose temporary file lies beside the checkpoint (Lightning's
    lies wherever fsspec puts it, so the final move can turn into a copy across
    filesystems that a full disk truncates). A failed write leaves the previous checkpoint
    as it was and raises one line (:class:`rnnlm.files.DiskError`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object stores: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        kept = "the checkpoints written before it are intact"
        if path.parent.name == "checkpoints":
            kept += f" (resume with resume_dir={path.parent.parent} once there is space)"
        write_with(path, lambda handle: torch.save(checkpoint, handle), kept=kept)


def remove_partial_files(directory: Path) -> list[Path]:
    """Delete what a killed write left behind (temporary names only; called by the run
    that owns the dir)."""
    removed = [p for p in directory.glob(f"{TEMP_PREFIX}*") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
