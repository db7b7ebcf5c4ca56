"""Child processes for tests: started with known signal dispositions, always ended.

A test suite may be started from a terminal, as a background job of a non-interactive shell
(which starts it with SIGINT and SIGQUIT *ignored*, kept so across ``exec``), under ``nohup``
(SIGHUP ignored), or by CI with no stdin. Every child here gets the default disposition for
the signals tests send, an empty signal mask, no stdin, an environment without the
variables that would change what it does, and its own process group; whatever happens in
the test, the whole group (a DDP rank included) is killed and reaped on the way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE)
PR_SET_PDEATHSIG = 1
# Opened here, not between fork and exec, where loading a library in a threaded parent can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

# Variables that change what our code, Lightning, Hydra or W&B do: a test must not inherit them
# (a cluster job's SLURM_*/rank variables, HYDRA_FULL_ERROR=1 in a developer's shell, the
# PL_GLOBAL_SEED an in-process run exports, ...).
INHERITED = re.compile(r"(SLURM|PL|WANDB|HYDRA|RNNLM|TORCHELASTIC|LIGHTNING)_\w*|LOCAL_RANK|NODE_RANK|GROUP_RANK|RANK"
                       r"|WORLD_SIZE|LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|JSM_NAMESPACE_\w*|OMPI_COMM_WORLD_\w*")
# CPU only (the README promises it), W&B offline and quiet.
HERMETIC_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "CUDA_VISIBLE_DEVICES": ""}


def hermetic_env() -> dict[str, str]:
    """This process's environment without the inherited variables above, plus HERMETIC_ENV."""
    return {**{k: v for k, v in os.environ.items() if not INHERITED.fullmatch(k)}, **HERMETIC_ENV}


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec: default signal handling, die with the parent."""
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if _LIBC is not None:  # if pytest itself is killed, take the child with it
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (the child and anything it started) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()  # in case it left its group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def started(args: Sequence[str], cwd: Path, **kwargs) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen`` of ``args`` that is killed, with its group, when the block exits."""
    parent = os.getpid()
    proc = subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True, env=hermetic_env(),
                            preexec_fn=lambda: _child_setup(parent), text=True, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def run(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion (or ``timeout``) and capture the output; the group never outlives it."""
    with started(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()  # what it wrote before it was killed
            raise AssertionError(f"{err}; its output ended with:\n{stdout[-2000:]}\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args...`` with this interpreter."""
    return run([sys.executable, str(ROOT / script), *args], cwd=cwd, timeout=timeout)
