"""What the entry points share: one-line errors, W&B cleanup, the optimised metric."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from rnnlm.utils.errors import ConfigError, Interrupted, RnnlmError
from rnnlm.utils.files import NO_SPACE, disk_error, os_error_in, write_text
from rnnlm.utils.rundir import JOB_RECORD, drop_pending_config, failed_jobs, is_launched_rank

log = logging.getLogger(__name__)


def _in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def pin_job_for_relaunch() -> None:
    """Make Lightning's DDP re-launch of this script rebuild *this* multirun job.

    Lightning starts ranks > 0 by re-running ``sys.argv`` with ``hydra.run.dir`` set to the
    current run dir. Inside a multirun, ``sys.argv`` holds the whole sweep (``-m a=1,2``)
    and ``run.dir`` is not the job's dir, so each rank would start a sweep of its own. We
    point both at the job: its own overrides and its own output dir.
    """
    if not _in_multirun():
        return
    from omegaconf import open_dict, read_write

    hydra_cfg = HydraConfig.get()
    # hydra.mode=RUN: a preset such as hparams_search=optuna sets MULTIRUN, and a rank must not sweep.
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")


def reset_distributed(env_before: dict[str, str]) -> None:
    """Undo what a DDP launch left in this process, so the next multirun job launches afresh.

    Lightning exports ``LOCAL_RANK``/``WORLD_SIZE``/... when it starts ranks; a later job
    in the same process would take them for an external launcher's and wait for ranks
    that never come.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in DDP_ENV:
        if key in env_before:
            os.environ[key] = env_before[key]
        else:
            os.environ.pop(key, None)


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run so the next multirun job starts its own (no-op without W&B)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


@contextlib.contextmanager
def sigterm_interrupts(what: str) -> Iterator[None]:
    """SIGTERM while ``what`` runs ends it as Ctrl-C does: its clean-up runs (a prepare's
    partial cache entry goes), one line, exit 143. Outside Lightning's loops only: inside
    them Lightning's own handler saves a checkpoint first (``CheckpointOnInterrupt``)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(f"SIGTERM while {what}; nothing of it was kept", signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)  # None: set from C


def record_failed_job(err: RnnlmError) -> None:
    """A multirun job that failed on bad input: one line in its log and in its dir (the
    sweep's summary reads it, see ``rnnlm.utils.rundir``). The job then returns None: the basic
    sweeper goes on to the next job, Optuna marks the trial failed (``max_failure_rate``)."""
    log.error("error: %s", err)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    failed_jobs[str(output_dir)] = str(err)
    with contextlib.suppress(RnnlmError):  # a job dir that cannot be written: the log line stays
        write_text(output_dir / JOB_RECORD, json.dumps({"metrics": {}, "error": str(err)}, indent=2))


def as_user_error(err: BaseException) -> RnnlmError | None:
    """Our error for ``err``: itself, or a full disk / I/O error met by a writer we do not
    control (a logger, Hydra's log file), reported like our own writes'."""
    if isinstance(err, RnnlmError):
        return err
    if isinstance(err, InterpolationResolutionError):  # a ${...} in a value, met when the config is read
        key = getattr(err, "full_key", None) or "a setting"
        return ConfigError(f"{key}: {str(err).splitlines()[0]}; text that holds '${{' is read as an interpolation: "
                           f"escape it to keep it as text ({key}='\\${{...}}')")
    cause = os_error_in(err)
    if cause is None or cause.errno not in (*NO_SPACE, errno.EIO):
        return None
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    path = Path(cause.filename) if isinstance(cause.filename, str) else None
    return disk_error(path, cause, "what was written before is intact", directory=path.parent if path else run_dir)


def run_task(
    cfg: DictConfig,
    task: Callable[[DictConfig], tuple[dict[str, float], dict[str, Any]]],
    report: Callable[[dict[str, float], dict[str, Any]], str] | None = None,
) -> float | None:
    """Run ``task`` with clean error reporting; return ``cfg.optimized_metric`` for sweepers.

    A :class:`RnnlmError` prints ``error: <message>`` and exits with its status (2 for bad
    input, 1 for a failed write, 128 + signal after an interruption); in a multirun a job's
    bad input is recorded and the sweep goes on. ``HYDRA_FULL_ERROR=1`` shows tracebacks.
    """
    exit_code = 1
    pin_job_for_relaunch()
    env_before = {k: os.environ[k] for k in DDP_ENV if k in os.environ}
    try:
        metrics, objects = task(cfg)
        exit_code = 0
        if report is not None and not is_launched_rank():
            print(report(metrics, objects), flush=True)
    except KeyboardInterrupt:  # Ctrl-C outside Lightning's loops (reading the corpus, sampling, ...)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print("interrupted: SIGINT (Ctrl-C)", file=sys.stderr)
        finish_wandb(1)
        sys.exit(128 + signal.SIGINT)
    except Exception as raised:
        err = as_user_error(raised)
        if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        finish_wandb(1)
        if _in_multirun() and err.exit_code == ConfigError.exit_code and not isinstance(err, Interrupted):
            record_failed_job(err)
            return None
        if _in_multirun() and "submitit" in str(HydraConfig.get().launcher.get("_target_", "")):
            raise err from None  # a job on another machine: submitit reports a failed job, not an exit
        print(f"{err.prefix}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    finally:
        drop_pending_config()  # still there: the task ended before the resume was accepted
        finish_wandb(exit_code)
        if _in_multirun():
            reset_distributed(env_before)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
