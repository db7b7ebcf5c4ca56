"""3. Data set-up time and memory for corpora of several sizes, and the cost of a batch."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rnnlm.bench.common import MB, Plan, maxrss_mb, proc_status_mb, run_worker


def corpus_text(plan: Plan) -> str:
    """The plan's corpus as one string: the user's file, or the plays joined like ``read_corpus``."""
    from rnnlm.data.corpus import read_corpus

    return read_corpus(plan.corpus)[0]


def write_corpus(path: Path, text: str, size_bytes: int) -> None:
    """Repeat ``text`` into a UTF-8 file of about ``size_bytes``, cut after a newline."""
    data = text.encode("utf-8") + b"\n\n"
    buf = (data * (size_bytes // len(data) + 1))[:size_bytes]
    cut = buf.rfind(b"\n")
    path.write_bytes(buf[: cut + 1] if cut > 0 else buf)


def measure_data(plan: Plan, text: str) -> dict[str, Any]:
    """Setup seconds and peak RSS of ``CorpusDataModule`` per corpus size, each in a fresh process."""
    per_size: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-") as tmp:
        for size in plan.data_sizes_mb:
            path = Path(tmp) / f"corpus-{size}mb.txt"
            write_corpus(path, text, size * MB)
            per_size[f"{size}mb"] = run_worker("data_setup", {"path": str(path), "seq_len": plan.seq_len,
                                                               "batch_size": plan.batch_size})
            path.unlink()
    largest = per_size[f"{max(plan.data_sizes_mb)}mb"]
    return {
        "data_by_size": per_size,
        "data_largest_mb": max(plan.data_sizes_mb),
        "data_setup_s": largest["setup_s"],
        "data_peak_rss_mb": largest["peak_rss_mb"],
        "data_rss_growth_mb": largest["setup_growth_mb"],
    }


def data_setup_worker(path: str, seq_len: int, batch_size: int) -> dict[str, float]:
    """Import, then time ``CorpusDataModule(path).setup()``; report RSS before and after."""
    from rnnlm.data.datamodule import CorpusDataModule

    import_rss, import_peak = proc_status_mb("VmRSS"), maxrss_mb()
    try:  # reset VmHWM (not ru_maxrss) so it shows the peak of setup() alone
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    dm = CorpusDataModule(path=path, seq_len=seq_len, batch_size=batch_size)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    setup_peak = proc_status_mb("VmHWM")
    return {
        "bytes": os.path.getsize(path),
        "tokens": dm.stats["tokens"],
        "setup_s": setup_s,
        "import_rss_mb": import_rss,
        "peak_rss_mb": max(maxrss_mb(), import_peak),  # ru_maxrss: the whole process
        "setup_growth_mb": (setup_peak if reset else maxrss_mb()) - import_rss,
    }
