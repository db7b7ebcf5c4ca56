"""The run dir before Hydra writes into it: writable, owned by one run, resumable.

:class:`RunDirGuard` is a Hydra callback (``conf/hydra/default.yaml``). Hydra creates the
run dir, opens ``<task>.log`` in it and writes ``.hydra/`` before the task starts, so a
read-only disk or a second run into the same dir would otherwise fail (or mix two runs'
files) before any of our code runs. It also sums up a multirun's failed jobs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rnnlm.utils.errors import ConfigError, RnnlmError
from rnnlm.utils.files import NO_SPACE, DiskError, free_space
from rnnlm.utils.options import existing_path

log = logging.getLogger(__name__)
LOCK_NAME = ".rnnlm.lock"
CHECKPOINT_DIR = "checkpoints"
RESUME_HINT = "pass the dir of an earlier run (outputs/train/runs/<date>), or drop resume_dir= to start a new run"
PENDING_CONFIG_DIR = ".hydra-pending"  # where Hydra writes a resumed run's config (conf/hydra/default.yaml)
JOB_RECORD = "metrics.json"  # a failed multirun job leaves {"error": ...} here
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")

_held: dict[Path, IO[str]] = {}  # open lock files: a lock lives as long as its descriptor
failed_jobs: dict[str, str] = {}  # job dir -> error, of this process's failed multirun jobs


def is_launched_rank() -> bool:
    """A DDP rank > 0 started into rank 0's run dir (Lightning's re-launch, torchrun, SLURM)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


WRITE_TEST_BYTES = 64 * 1024  # a disk with less free space than this cannot hold even the first files


def check_resume_dir(resume_dir: Any) -> Path:
    """``resume_dir`` is an existing run dir with a checkpoint in it; whether one loads is
    decided when the run reads it (``rnnlm.training.resume``), so it is read once."""
    run_dir = existing_path("resume_dir", resume_dir, RESUME_HINT, directory=True)
    checkpoints = run_dir / CHECKPOINT_DIR
    if (run_dir / "train.log").is_file() and not any(checkpoints.glob("*.ckpt")):  # Hydra's log of a train.py run
        raise ConfigError(f"resume_dir={run_dir} is a run that ended before its first checkpoint: there is nothing to "
                          "resume; start a new run without resume_dir=")
    if not checkpoints.is_dir():
        raise ConfigError(f"resume_dir={run_dir} holds no {CHECKPOINT_DIR}/ dir, so it is not a run dir; {RESUME_HINT}")
    if not any(checkpoints.glob("*.ckpt")):
        raise ConfigError(f"resume_dir={run_dir}: {checkpoints}/ holds no checkpoint; {RESUME_HINT}")
    return run_dir


def check_writable(directory: Path) -> None:
    """Fail before anything is written when ``directory`` cannot hold the run's files
    (read-only, no permission, or a disk too full for a few KB)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as probe:
            probe.write(b"\0" * WRITE_TEST_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        if err.errno in (*NO_SPACE, errno.EIO):
            raise DiskError(
                f"output dir {directory} cannot hold the run's files ({err.strerror}, {free_space(directory)}); "
                "free disk space or pass hydra.run.dir=<another disk>"
            ) from None
        raise RnnlmError(
            f"output dir {directory} is not writable ({err.strerror}); fix "
            "its permissions or pass hydra.run.dir=<a writable dir>"
        ) from None


def lock(directory: Path) -> None:
    """Own ``directory`` until this process ends; refuse if another live process owns it.

    ``flock`` locks belong to the open file, so a crashed or killed run never leaves a
    stale lock behind: the kernel drops it with the process.
    """
    directory = directory.resolve()
    if directory in _held:
        return
    path = directory / LOCK_NAME
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open on purpose
    except OSError as err:
        raise RnnlmError(f"cannot create the run dir's lock file {path} ({err.strerror}); pass hydra.run.dir=<a writable dir>") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a filesystem without flock (some NFS/Lustre mounts)
            log.warning("run dir %s cannot be locked (%s): nothing stops a second run from using it", directory, err.strerror)
            handle.close()
            return
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RnnlmError(
            f"run dir {directory} is in use by another run ({owner}); wait for it to end, "
            "or pass hydra.run.dir=<another dir> (resume_dir=<dir> continues a run once it has ended)"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    except OSError:
        pass  # the owner's name is a courtesy; the lock itself is held
    _held[directory] = handle


def unlock(directory: Path) -> None:
    handle = _held.pop(directory.resolve(), None)
    if handle is not None:
        handle.close()  # closing the descriptor releases the flock


def _pending_config() -> Path | None:
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir != PENDING_CONFIG_DIR:
        return None
    return Path(HydraConfig.get().runtime.output_dir) / PENDING_CONFIG_DIR


def promote_pending_config() -> None:
    """The resume checks passed: this run's config (Hydra wrote it to ``.hydra-pending/``)
    replaces the run's ``.hydra/``, file by file."""
    pending = _pending_config()
    if pending is None or not pending.is_dir():
        return
    final = pending.with_name(".hydra")
    final.mkdir(exist_ok=True)
    for path in pending.iterdir():
        os.replace(path, final / path.name)
    pending.rmdir()  # (ranks > 0 write no config: no other process moves these files)


def drop_pending_config() -> None:
    """A refused resume: its config goes, the run's ``.hydra/`` stays as it was."""
    pending = _pending_config()
    if pending is not None:
        shutil.rmtree(pending, ignore_errors=True)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Our errors reported as the entry points do: Hydra would turn a callback's exceptions into warnings."""
    try:
        yield
    except RnnlmError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def job_failures(sweep_dir: Path) -> list[tuple[str, str]]:
    """``(job dir name, error line)`` of each job of a sweep that failed on bad input: from
    the jobs' records (jobs of any launcher) and from this process (a record that could not
    be written)."""
    failures = {Path(job).name: error for job, error in failed_jobs.items() if Path(job).parent == sweep_dir}
    for record in sorted(sweep_dir.glob(f"*/{JOB_RECORD}")):
        try:
            error = json.loads(record.read_text(encoding="utf-8")).get("error")
        except (OSError, ValueError, AttributeError):
            continue
        if error:
            failures[record.parent.name] = str(error)
    return sorted(failures.items(), key=lambda item: (len(item[0]), item[0]))


class RunDirGuard(Callback):
    """Hydra callback: check the run dir and take its lock before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported():
            resume_dir = OmegaConf.select(config, "resume_dir", default=None)
            if resume_dir:
                check_resume_dir(resume_dir)
            if not is_launched_rank():
                claim(Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute())

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_launched_rank():  # the sweep dir: a second sweep into it would mix its jobs' files
            with reported():
                claim(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute())

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN and not is_launched_rank():
            with reported():
                lock(Path(config.hydra.runtime.output_dir))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            unlock(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        failures = job_failures(sweep_dir)
        if not failures or is_launched_rank():
            return
        for job, error in failures:
            print(f"error: job {job} ({sweep_dir / job}): {error}", file=sys.stderr)
        print(f"error: {len(failures)} job(s) of the sweep failed on bad input; the others ran to the end", file=sys.stderr, flush=True)
        sys.exit(2)


def claim(directory: Path) -> None:
    """Writable, then locked: one-line errors for every way that can fail."""
    try:
        check_writable(directory)
        lock(directory)
    except OSError as err:  # anything check_writable/lock did not foresee
        raise RnnlmError(f"cannot use the run dir {directory} ({err.strerror or err}); pass hydra.run.dir=<a writable dir>") from None
