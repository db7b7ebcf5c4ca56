"""What every measurement shares: the plan, timers, machine facts, fresh worker processes."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MB = 1_000_000


@dataclass
class Plan:
    """Sizes and durations of one benchmark run (``default``, ``quick`` or ``tiny``)."""

    name: str
    gemm_sizes: tuple[int, ...] = (2048, 3072, 4096)
    gemm_reps: int = 5
    hidden_size: int = 512
    num_layers: int = 2
    embedding_dim: int = 64
    batch_size: int = 64
    seq_len: int = 128
    warmup_steps: int = 3
    timed_steps: int = 20
    gru_timed_steps: int = 10
    data_sizes_mb: tuple[int, ...] = (1, 100, 1000)  # char corpora prepared and mapped
    word_sizes_mb: tuple[int, ...] = (100,)  # word-level corpora prepared and mapped
    batch_reps: int = 20
    sample_length: int = 500
    sample_streams: int = 32
    beam_length: int = 200
    naive_steps: int = 200
    lesson_seconds: float | None = 120.0  # None: skip the lesson comparison
    lesson_seq_len: int = 128
    ours_hidden_size: int = 256  # "our default" model of the lesson comparison
    heldout_fraction: float = 0.05
    threads: int | None = None  # torch threads; None: torch's default (one per core)
    corpus: str | None = None


PLANS: dict[str, Plan] = {
    "default": Plan("default"),
    "quick": Plan(
        "quick", gemm_sizes=(2048, 3072), gemm_reps=3, warmup_steps=2, timed_steps=6,
        gru_timed_steps=4, data_sizes_mb=(1, 10), word_sizes_mb=(10,), batch_reps=10, beam_length=100,
        naive_steps=150, lesson_seconds=30.0,
    ),
    "tiny": Plan(
        "tiny", gemm_sizes=(512, 1024), gemm_reps=3, hidden_size=64, num_layers=1,
        batch_size=8, seq_len=32, warmup_steps=3, timed_steps=15, gru_timed_steps=10,
        data_sizes_mb=(1,), word_sizes_mb=(), batch_reps=5, sample_length=30, sample_streams=32,
        beam_length=15, naive_steps=15, lesson_seconds=None,
        threads=1,  # a smoke test: one thread keeps it quick and steady on a busy machine
    ),
}


def median_rate(step_times: Sequence[float], tokens_per_step: int) -> float:
    return tokens_per_step / statistics.median(step_times)


def best_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Fastest of ``reps`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def maxrss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(key: str) -> float:
    """``VmRSS``/``VmHWM``/``RssAnon`` of this process from ``/proc/self/status`` (NaN off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def threads_limited(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions and the load average (the machine may be shared)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model != value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    import pytorch_lightning as pl

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "loadavg_1m_start": round(load[0], 2),
    }


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def cycle(loader) -> Iterator:
    while True:
        yield from loader


def run_worker(kind: str, payload: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``worker(kind, payload)`` in a fresh Python and return the dict it prints last.

    The Python is started by a ``/bin/sh`` that forks it: Linux carries the ``ru_maxrss`` of
    the process image that ``exec`` replaces, so a child exec'd straight from this (large)
    process would report this process's peak RSS as its own.
    """
    code = "import sys; from benchmarks.run import worker; worker(sys.argv[1], sys.argv[2])"
    command = [sys.executable, "-c", code, kind, json.dumps(payload)]
    if os.path.exists("/bin/sh"):
        command = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *command]
    # The benchmarks are not installed: the child finds them from the repository's root.
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {kind!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
