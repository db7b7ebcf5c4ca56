"""The test helpers' children: default signal handling whatever the suite inherited, and no leftovers."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import run, started


def test_child_gets_the_default_sigint_handler_even_when_the_suite_ignores_it(tmp_path):
    """A background job inherits SIGINT ignored; a child must still be interruptible."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT).__name__)"], tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.stdout.strip() == "default_int_handler", result


def test_the_whole_process_group_is_killed_on_the_way_out(tmp_path):
    pids_file = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids_file}.tmp; mv {pids_file}.tmp {pids_file}; sleep 300"
    with pytest.raises(RuntimeError), started(["bash", "-c", script], tmp_path) as proc:
        deadline = time.monotonic() + 30
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("the test fails while its child and grandchild run")
    grandchild = int(pids_file.read_text())
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited parent is reaped by init; until then it is a zombie.
    status = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(status) and not status.startswith("Z")
