"""Lightning's checkpoint I/O, with each checkpoint written atomically on its own disk."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rnnlm.utils.files import TEMP_PREFIX, write_with


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose temporary file lies beside the checkpoint (Lightning's
    lies wherever fsspec puts it, so the final move can turn into a copy across
    filesystems that a full disk truncates). A failed write leaves the previous checkpoint
    as it was and raises one line (:class:`rnnlm.utils.files.DiskError`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object stores: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        kept = "the checkpoints written before it are intact"
        if path.parent.name == "checkpoints":
            kept += f" (resume with resume_dir={path.parent.parent} once there is space)"
        with sigint_deferred():
            write_with(path, lambda handle: torch.save(checkpoint, handle), kept=kept)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C (SIGINT) during the block takes effect when the block ends.

    ``KeyboardInterrupt`` raised inside ``torch.save`` leaves its zip writer mid-file, and the
    writer's clean-up then raises a ``RuntimeError`` in the interrupt's place: the run would
    exit 1 with a traceback instead of saving ``last-interrupted.ckpt`` and exiting 130.
    Only the main thread receives signals; elsewhere, or when SIGINT is ignored or left to the
    operating system, the block runs as it is."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    received: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    if received:
        handler(*received[0])  # Python's default handler raises KeyboardInterrupt here


def remove_partial_files(directory: Path) -> list[Path]:
    """Delete what a killed write left behind (temporary names only; called by the run
    that owns the dir)."""
    removed = [p for p in directory.glob(f"{TEMP_PREFIX}*") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
