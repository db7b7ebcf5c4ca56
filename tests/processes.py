"""Child processes for tests: started with known signal dispositions, always ended.

A test suite may be started from a terminal, from a background job or ``nohup`` (where
SIGINT and SIGQUIT arrive *ignored* and ``exec`` keeps them so), or by CI with no stdin.
Every child here gets the default disposition for the signals tests send, an empty signal
mask, no stdin, and its own process group; whatever happens in the test, the whole group
(a DDP rank included) is killed and reaped on the way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in the child between fork and exec: default signal handling, die with the parent."""
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if sys.platform.startswith("linux"):  # if pytest itself is killed, take the child with it
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
    proc = subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_child_setup, text=True, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def run(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion (or ``timeout``) and capture the output; the group never outlives it."""
    with started(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args...`` with this interpreter."""
    return run([sys.executable, str(ROOT / script), *args], cwd=cwd, timeout=timeout)
