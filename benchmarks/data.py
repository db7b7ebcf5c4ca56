"""3. Preparing corpora of several sizes, a run's data set-up from the prepared files, and the cost of a batch."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MB, Plan, maxrss_mb, proc_status_mb, run_worker


def corpus_text(plan: Plan) -> str:
    """The plan's corpus as one string: the user's file, or the plays joined like ``read_corpus``."""
    from rnnlm.data.corpus import read_corpus

    return read_corpus(plan.corpus)[0]


def write_corpus(path: Path, text: str, size_bytes: int) -> None:
    """Repeat ``text`` into a UTF-8 file of about ``size_bytes``, cut after a newline; written
    a block at a time, so a corpus of several GB never sits in memory."""
    data = text.encode("utf-8") + b"\n\n"
    block = data * max(1, (64 * MB) // len(data))
    with path.open("wb") as out:
        left = size_bytes
        while left > len(block):
            out.write(block)
            left -= len(block)
        tail = (block * (left // len(block) + 1))[:left]
        cut = tail.rfind(b"\n")
        out.write(tail[: cut + 1] if cut > 0 else tail)


def measure_data(plan: Plan, text: str) -> dict[str, Any]:
    """Per corpus size, each step in a fresh process: preparing it (seconds, MB/s, peak RSS),
    then a run's data set-up from the prepared files (seconds, anonymous memory added)."""
    per_size: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-") as tmp:
        cache = str(Path(tmp) / "cache")
        sizes = [(size, "char") for size in plan.data_sizes_mb] + [(size, "word") for size in plan.word_sizes_mb]
        for size, tokenizer in sizes:
            path = Path(tmp) / f"corpus-{size}mb.txt"
            if not path.exists():
                write_corpus(path, text, size * MB)
            key = f"{size}mb" if tokenizer == "char" else f"{size}mb_word"
            per_size[key] = {**run_worker("prepare", {"path": str(path), "cache_dir": cache, "tokenizer": tokenizer}),
                             **run_worker("data_setup", {"path": str(path), "cache_dir": cache, "tokenizer": tokenizer,
                                                         "seq_len": plan.seq_len, "batch_size": plan.batch_size})}
            shutil.rmtree(cache, ignore_errors=True)
            if tokenizer == "word" or size not in plan.word_sizes_mb:
                path.unlink()
    largest = per_size[f"{max(plan.data_sizes_mb)}mb"]
    return {
        "data_by_size": per_size,
        "data_largest_mb": max(plan.data_sizes_mb),
        "prepare_mb_per_s": largest["prepare_mb_per_s"],
        "prepare_peak_rss_mb": largest["prepare_peak_rss_mb"],
        "data_setup_s": largest["setup_s"],
        "data_peak_rss_mb": largest["peak_rss_mb"],
        "data_anon_growth_mb": largest["setup_anon_growth_mb"],
    }


def prepare_worker(path: str, cache_dir: str, tokenizer: str) -> dict[str, float]:
    """Time ``rnnlm.data.prepare`` of one corpus into an empty cache; its peak RSS (the process
    imports numpy only: the DataModule, Lightning and torch are not loaded)."""
    from rnnlm.data.prepare import CorpusSettings, prepare

    settings = CorpusSettings(path, "*.txt", "\n\n", "strict", tokenizer, None, 1, 0.9)
    import_rss = proc_status_mb("VmRSS")
    start = time.perf_counter()
    prepared = prepare(settings, cache_dir)
    seconds = time.perf_counter() - start
    size = os.path.getsize(path)
    return {"bytes": size, "tokens": len(prepared.ids), "vocab_size": len(prepared.tokenizer),
            "prepare_s": seconds, "prepare_mb_per_s": size / MB / seconds,
            "prepare_peak_rss_mb": max(proc_status_mb("VmHWM"), maxrss_mb()), "prepare_import_rss_mb": import_rss}


def data_setup_worker(path: str, cache_dir: str | None, tokenizer: str, seq_len: int, batch_size: int) -> dict[str, float]:
    """Import, then time ``CorpusDataModule.setup()`` (mapping the prepared files when
    ``cache_dir`` holds them) and a first batch; report the anonymous memory it added
    (``RssAnon``: mapped file pages are the page cache's, shared and reclaimable)."""
    from rnnlm.data.datamodule import CorpusDataModule

    import_rss, import_anon, import_peak = proc_status_mb("VmRSS"), proc_status_mb("RssAnon"), maxrss_mb()
    try:  # reset VmHWM (not ru_maxrss) so it shows the peak of setup() alone
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    dm = CorpusDataModule(path=path, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, cache_dir=cache_dir)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    next(iter(dm.train_dataloader()))
    setup_peak = proc_status_mb("VmHWM")
    return {
        "tokens": dm.stats["tokens"],
        "setup_s": setup_s,
        "import_rss_mb": import_rss,
        "peak_rss_mb": max(maxrss_mb(), import_peak),  # ru_maxrss: the whole process
        "setup_growth_mb": (setup_peak if reset else maxrss_mb()) - import_rss,
        "setup_anon_growth_mb": proc_status_mb("RssAnon") - import_anon,
    }


def measure_large(plan: Plan, text: str, gigabytes: float, directory: str | None = None) -> dict[str, Any]:
    """``--large``: write a corpus of ``gigabytes``, prepare it, then train 50 steps on the map
    (each in a fresh process); report time, throughput and memory of both."""
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-large-", dir=directory) as tmp:
        path, cache = Path(tmp) / "corpus.txt", str(Path(tmp) / "cache")
        start = time.perf_counter()
        write_corpus(path, text, int(gigabytes * 1e9))
        written_s = time.perf_counter() - start
        prepared = run_worker("prepare", {"path": str(path), "cache_dir": cache, "tokenizer": "char"})
        trained = run_worker("large_train", {"path": str(path), "cache_dir": cache, "seq_len": plan.seq_len,
                                             "batch_size": plan.batch_size, "hidden_size": plan.hidden_size,
                                             "num_layers": plan.num_layers, "embedding_dim": plan.embedding_dim})
    return {"large_gb": gigabytes, "large_write_s": written_s, **{f"large_{k}": v for k, v in {**prepared, **trained}.items()}}


def large_train_worker(path: str, cache_dir: str, seq_len: int, batch_size: int, hidden_size: int, num_layers: int,
                       embedding_dim: int) -> dict[str, float]:
    """Map the prepared corpus and train 50 steps on it under the Lightning Trainer."""
    from benchmarks.training import lightning_train_steps
    from rnnlm.data.datamodule import CorpusDataModule

    import_anon = proc_status_mb("RssAnon")
    start = time.perf_counter()
    dm = CorpusDataModule(path=path, seq_len=seq_len, batch_size=batch_size, cache_dir=cache_dir)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    setup_anon = proc_status_mb("RssAnon") - import_anon
    plan = Plan("large", hidden_size=hidden_size, num_layers=num_layers, embedding_dim=embedding_dim,
                batch_size=batch_size, seq_len=seq_len, warmup_steps=2, timed_steps=48)
    times = lightning_train_steps(plan, dm)
    return {"setup_s": setup_s, "setup_anon_growth_mb": setup_anon, "train_steps": len(times) + 2,
            "train_step_s": statistics.median(times), "train_peak_rss_mb": max(proc_status_mb("VmHWM"), maxrss_mb()),
            "train_anon_mb": proc_status_mb("RssAnon")}
