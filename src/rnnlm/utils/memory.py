"""glibc malloc tuning: keep freed memory for the next step (training and sampling)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache  # applied once per process; later calls report the first one's outcome
def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the heap instead of returning it to the OS.

    PyTorch frees and re-allocates the same large activation buffers every step; by default
    glibc maps blocks over 128 KiB with ``mmap`` and hands them straight back, and the next step pays
    page faults (and the kernel's zeroing of each fresh page) to get them again, a large share of a
    short step on few cores (see docs/performance.md). Serving them from the
    heap and never trimming it keeps those pages mapped. Set ``RNNLM_MALLOC_TUNING=0`` to
    turn it off; a no-op off glibc. Returns whether the setting is active.
    """
    if os.environ.get("RNNLM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt caps M_MMAP_THRESHOLD at 32 MiB, below an LSTM's activations; M_MMAP_MAX=0
    # instead serves every block from the heap, which the trim threshold then keeps.
    ok = mallopt(M_MMAP_MAX, 0) == 1
    ok = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    log.debug("glibc malloc tuning %s", "applied" if ok else "refused")
    return ok
