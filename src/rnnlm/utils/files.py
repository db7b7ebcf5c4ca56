"""Writing a run's files so that a failed write (disk full, I/O error, a kill) loses nothing.

Every file is written to a temporary name in its own directory (so the final rename never
crosses filesystems), flushed and fsynced, then ``os.replace``d over the final name: a
reader sees the previous version or the new one, never a partial file. A write that fails
removes its temporary file and raises :class:`DiskError`, one line naming the directory
and its free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rnnlm.utils.errors import RnnlmError

TEMP_PREFIX = ".tmp-"  # temporary files start with this; never taken for a finished file
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskError(RnnlmError):
    """A file of the run could not be written; what was written before is intact."""

    exit_code = 1


def free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KB", "MB"):
        if free < 1024:
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return f"{free:.1f} GB free"


def disk_error(path: Path | None, err: OSError, kept: str = "", directory: Path | None = None,
               elsewhere: str = "hydra.run.dir") -> DiskError:
    """One line: which file (if known), why, the free space, and what is still intact."""
    full = err.errno in NO_SPACE
    what = "disk full" if full else (err.strerror or type(err).__name__)
    directory = directory or (path.parent if path is not None else Path.cwd())
    kept = f"; {kept}" if kept else ""
    return DiskError(
        f"could not {'write' if full else 'read or write'} {path or 'a file of the run'} "
        f"({what}, {free_space(directory)} in {directory}){kept}; "
        f"free disk space (or pass {elsewhere}=<another disk>) and run again"
    )


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", kept: str = "", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    except OSError as err:
        raise disk_error(path, err, kept) from None
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the run's files are for everyone who can read the dir
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = os_error_in(err)
        if cause is not None:
            raise disk_error(path, cause, kept) from None
        raise
    fsync_dir(path.parent)


PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def streamed(path: str | Path, **kwargs: Any) -> Iterator[IO[str]]:
    """A text file written as it is produced: to ``<path>.partial``, renamed to ``path``
    once complete. Interrupted, the ``.partial`` file keeps what was written."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    kept = f"what was written is in {partial.name}"
    try:
        handle = open(partial, "w", **kwargs)  # noqa: SIM115 - closed below, after the caller's writes
    except OSError as err:
        raise disk_error(path, err) from None
    with handle:
        yield handle  # the caller's own write errors are the caller's to name
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as err:
            raise disk_error(path, err, kept) from None
    try:
        os.replace(partial, path)
    except OSError as err:
        raise disk_error(path, err, kept) from None


def os_error_in(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: writers such as ``torch.save`` re-raise a failed write
    as another exception (a ``RuntimeError`` from its zip writer) with the ``OSError`` as its
    context."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        # ``raise ... from None`` hides the context on purpose: it is not the cause.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None], kept: str = "") -> None:
    """``writer(handle)`` fills a binary file that then atomically becomes ``path``."""
    with atomic_open(path, "wb", kept=kept) as handle:
        writer(handle)


def fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
