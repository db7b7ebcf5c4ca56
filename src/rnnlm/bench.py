"""``python -m rnnlm.bench``: how fast this project trains, loads data and samples on this machine.

One run measures, then prints a readable table and ONE line of JSON:

1. the fp32 GEMM peak (``torch.matmul`` and the oneDNN path), to turn tokens/s into MFU;
2. training tokens/s of :class:`LanguageModel` under ``pytorch_lightning.Trainer`` against a
   bare PyTorch loop (same net, batch, AdamW, clipping), the GRU of the same size, one
   profiled step of each, and the bare loop in fresh processes with the glibc malloc
   tuning (``rnnlm.runtime.keep_freed_memory``) on and off;
3. :class:`CorpusDataModule` setup time and peak RSS for 1/10/100 MB corpora (fresh
   processes), and the cost of assembling a batch against a training step;
4. sampling chars/s: 1 stream, 32 streams, beam 5, and re-running the whole prefix each step;
5. the lesson's training (one document per batch, one-hot, 64 units) against our default
   for the same wall time, scored in bits/char on the same held-out text.

``--quick`` takes 2-3 minutes, ``--tiny`` ~20 seconds (a smoke test on one thread with a
1x64 model; its numbers mean little).
Timings are medians of per-step times after warm-up steps; on a shared machine they still
move with the load, which the JSON records (``machine.loadavg_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rnnlm.models import gru_cpu
from rnnlm.models.rnn import flops_per_token
from rnnlm.runtime import keep_freed_memory, native_cpu_bf16

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
    data_sizes_mb: tuple[int, ...] = (1, 10, 100)
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
        gru_timed_steps=4, data_sizes_mb=(1, 10), batch_reps=10, beam_length=100,
        naive_steps=150, lesson_seconds=30.0,
    ),
    "tiny": Plan(
        "tiny", gemm_sizes=(512, 1024), gemm_reps=3, hidden_size=64, num_layers=1,
        batch_size=8, seq_len=32, warmup_steps=3, timed_steps=15, gru_timed_steps=10,
        data_sizes_mb=(1,), batch_reps=5, sample_length=30, sample_streams=32,
        beam_length=15, naive_steps=15, lesson_seconds=None,
        threads=1,  # a smoke test: one thread keeps it quick and steady on a busy machine
    ),
}


# ----------------------------------------------------------------------------- helpers


def _median_rate(step_times: Sequence[float], tokens_per_step: int) -> float:
    return tokens_per_step / statistics.median(step_times)


def _best_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Fastest of ``reps`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _maxrss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mb(key: str) -> float:
    """``VmRSS``/``VmHWM`` of this process from ``/proc/self/status`` (NaN off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
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
def _threads(n: int) -> Iterator[None]:
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


# ----------------------------------------------------------------------------- 1. GEMM peak


def _gemm_variants(n: int) -> dict[str, Callable[[], object]]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    variants: dict[str, Callable[[], object]] = {"matmul": lambda: torch.matmul(a, b)}
    if torch.backends.mkldnn.is_available():
        am, bm = a.to_mkldnn(), b.to_mkldnn()
        variants["onednn_linear"] = lambda: F.linear(am, bm)  # x @ w.T on oneDNN tensors
        variants["onednn_linear_pointwise"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return variants


def measure_gemm_peak(plan: Plan, best: dict[str, float] | None = None) -> dict[str, Any]:
    """Best fp32 GFLOP/s of ``torch.matmul`` and of oneDNN linear over large square matrices.

    ``best`` holds an earlier pass's figures to improve on (the bench measures at its start
    and again at its end, since a busy machine depresses a peak more than a step median).
    """
    best = dict(best or {})
    for n in plan.gemm_sizes:
        for name, fn in _gemm_variants(n).items():
            try:
                seconds = _best_time(fn, plan.gemm_reps)
            except (RuntimeError, NotImplementedError, AttributeError):
                continue  # this torch build lacks the op
            best[name] = max(best.get(name, 0.0), 2.0 * n**3 / seconds / 1e9)
    onednn = max((v for k, v in best.items() if k.startswith("onednn")), default=float("nan"))
    method = max(best, key=best.get)
    return {
        "gemm_gflops_matmul": best["matmul"],
        "gemm_gflops_onednn": onednn,
        "gemm_by_method": best,
        "peak_method": method,
        "peak_gflops": best[method],
    }


# ----------------------------------------------------------------------------- 2. training


def build_datamodule(plan: Plan, seq_len: int | None = None, batch_size: int | None = None):
    """A set-up :class:`CorpusDataModule` over the plan's corpus (``None``: the plays)."""
    from rnnlm.data.datamodule import CorpusDataModule

    dm = CorpusDataModule(path=plan.corpus, seq_len=seq_len or plan.seq_len, batch_size=batch_size or plan.batch_size)
    dm.setup("fit")
    return dm


def _cycle(loader) -> Iterator:
    while True:
        yield from loader


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               targets: torch.Tensor, bf16: bool = False) -> None:
    """Forward, cross-entropy, backward, clip the gradient norm to 1, optimiser step.

    ``bf16``: the forward and loss under CPU autocast to bfloat16, as Lightning's
    ``bf16-mixed`` precision runs ``training_step``.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = net(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()


def _new_net(plan: Plan, vocab_size: int, cell: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from rnnlm.models.rnn import RNNLM

    torch.manual_seed(0)
    net = RNNLM(vocab_size, cell, plan.hidden_size, plan.num_layers, 0.0, plan.embedding_dim).train()
    return net, torch.optim.AdamW(net.parameters(), lr=2e-3)


def profile_step(plan: Plan, dm, cell: str, top: int = 4) -> dict[str, Any]:
    """Where one training step's time goes: the ``top`` ops by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    net, optimizer = _new_net(plan, dm.vocab_size, cell)
    batch = next(iter(dm.train_dataloader()))
    train_step(net, optimizer, *batch)  # warm-up
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(net, optimizer, *batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "op_calls": sum(e.count for e in events),
        "top_ops": {e.key: {"share": e.self_cpu_time_total / total, "calls": e.count} for e in ranked},
    }


def bare_train_steps(plan: Plan, dm, cell: str, steps: int, bf16: bool = False) -> list[float]:
    """Per-step wall times of a plain PyTorch loop: batch fetch, forward, backward, clip, AdamW.

    Each time runs from the end of one step to the end of the next (like the Lightning
    callback); the first ``plan.warmup_steps`` steps are dropped. ``bf16``: forward under
    CPU autocast to bfloat16, what ``trainer.precision=bf16-mixed`` does.
    """
    net, optimizer = _new_net(plan, dm.vocab_size, cell)
    batches = _cycle(dm.train_dataloader())
    ends = [time.perf_counter()]
    for _ in range(plan.warmup_steps + steps):
        train_step(net, optimizer, *next(batches), bf16=bf16)
        ends.append(time.perf_counter())
    times = [b - a for a, b in zip(ends, ends[1:])]
    return times[plan.warmup_steps:]


def lightning_train_steps(plan: Plan, dm) -> list[float]:
    """Per-step wall times of ``Trainer.fit`` on :class:`LanguageModel`, timed by a callback."""
    import functools

    import pytorch_lightning as pl

    from rnnlm.models.module import LanguageModel

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

    _quiet_lightning()
    torch.manual_seed(0)
    model = LanguageModel(
        vocab_size=dm.vocab_size, tokenizer=dm.tokenizer.to_dict(), cell="lstm",
        hidden_size=plan.hidden_size, num_layers=plan.num_layers, embedding_dim=plan.embedding_dim,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, max_steps=plan.warmup_steps + plan.timed_steps,
        gradient_clip_val=1.0, callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    times = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return times[plan.warmup_steps - 1:]  # the first end closes step 1: drop warm-up steps


def _run_worker(kind: str, payload: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``worker(kind, payload)`` in a fresh Python and return the dict it prints last.

    The Python is started by a ``/bin/sh`` that forks it: Linux carries the ``ru_maxrss`` of
    the process image that ``exec`` replaces, so a child exec'd straight from this (large)
    process would report this process's peak RSS as its own.
    """
    code = "import sys; from rnnlm.bench import worker; worker(sys.argv[1], sys.argv[2])"
    command = [sys.executable, "-c", code, kind, json.dumps(payload)]
    if os.path.exists("/bin/sh"):
        command = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *command]
    proc = subprocess.run(
        command,
        capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {kind!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_training(plan: Plan) -> dict[str, Any]:
    """Lightning vs bare loop (LSTM), GRU in the bare loop, the bare loop with malloc tuning off."""
    dm = build_datamodule(plan)
    tokens = plan.batch_size * plan.seq_len
    lstm_flops = 3 * flops_per_token("lstm", dm.vocab_size, plan.hidden_size, plan.num_layers, plan.embedding_dim)
    gru_flops = 3 * flops_per_token("gru", dm.vocab_size, plan.hidden_size, plan.num_layers, plan.embedding_dim)

    # The bare loop's steps are split around the Lightning run, so that a change in the
    # machine's load during the two runs biases neither.
    first = (plan.timed_steps + 1) // 2
    bare_times = bare_train_steps(plan, dm, "lstm", first)
    lightning_times = lightning_train_steps(plan, dm)
    bare_times += bare_train_steps(plan, dm, "lstm", plan.timed_steps - first)
    # oneDNN has no bf16 LSTM kernel for a CPU without native bf16 (it refuses to build one).
    bf16_times = bare_train_steps(plan, dm, "lstm", plan.gru_timed_steps, bf16=True) if native_cpu_bf16() else []
    gru_times = bare_train_steps(plan, dm, "gru", plan.gru_timed_steps)
    gru_cpu.ENABLED = False  # nn.GRU's own CPU path, for the before/after
    try:
        nn_gru_times = bare_train_steps(plan, dm, "gru", plan.gru_timed_steps)
        nn_gru_profile = profile_step(plan, dm, "gru")
    finally:
        gru_cpu.ENABLED = True
    # The malloc tuning on and off, each in a fresh process (the setting is process-wide).
    on = _run_worker("bare_train", asdict(plan), env={"RNNLM_MALLOC_TUNING": "1"})
    off = _run_worker("bare_train", asdict(plan), env={"RNNLM_MALLOC_TUNING": "0"})
    profiles = {cell: profile_step(plan, dm, cell) for cell in ("lstm", "gru")}
    profiles["nn.GRU"] = nn_gru_profile

    # Assembling one batch the way a fresh epoch does (new iterator: shuffle + one gather),
    # and the steady next(it) of an epoch, against one bare training step.
    loader = dm.train_dataloader()
    first_batch_s = _best_time(lambda: next(iter(loader)), plan.batch_reps, warmup=1)
    it = _cycle(loader)
    next_batch_s = statistics.median(_timed(lambda: next(it), plan.batch_reps))

    lightning_tps = _median_rate(lightning_times, tokens)
    bare_tps = _median_rate(bare_times, tokens)
    gru_tps = _median_rate(gru_times, tokens)
    nn_gru_tps = _median_rate(nn_gru_times, tokens)
    bare_step = statistics.median(bare_times)
    return {
        "vocab_size": dm.vocab_size,
        "tokens_per_step": tokens,
        "train_flops_per_token": lstm_flops,
        "train_tokens_per_s": lightning_tps,
        "reference_tokens_per_s": bare_tps,
        "lightning_overhead": lightning_tps / bare_tps,
        "lightning_extra_ms_per_step": 1e3 * (statistics.median(lightning_times) - statistics.median(bare_times)),
        "lightning_step_s": statistics.median(lightning_times),
        "reference_step_s": bare_step,
        "reference_step_s_min": min(bare_times),
        "reference_step_s_max": max(bare_times),
        # From the fastest step of each run: less sensitive to other processes on the machine.
        "train_tokens_per_s_best": tokens / min(lightning_times),
        "reference_tokens_per_s_best": tokens / min(bare_times),
        "lightning_overhead_best": min(bare_times) / min(lightning_times),
        "train_gflops": lstm_flops * lightning_tps / 1e9,
        "reference_gflops": lstm_flops * bare_tps / 1e9,
        "gru_tokens_per_s": gru_tps,
        "gru_gflops": gru_flops * gru_tps / 1e9,
        "gru_over_lstm_time_per_token": bare_tps / gru_tps,
        "gru_over_lstm_flops": gru_flops / lstm_flops,
        "nn_gru_tokens_per_s": nn_gru_tps,
        "bf16_tokens_per_s": _median_rate(bf16_times, tokens) if bf16_times else None,
        "bf16_speedup": bare_step / statistics.median(bf16_times) if bf16_times else None,
        "nn_gru_over_lstm_time_per_token": bare_tps / nn_gru_tps,
        "step_profiles": profiles,
        "malloc_tuning_on": keep_freed_memory(),
        "malloc_on_fresh_tokens_per_s": on["tokens_per_s"],
        "malloc_off_tokens_per_s": off["tokens_per_s"],
        "malloc_off_step_s": off["step_s"],
        "malloc_tuning_speedup": off["step_s"] / on["step_s"],
        "batch_first_s": first_batch_s,
        "batch_next_s": next_batch_s,
        "batch_vs_step_pct": 100 * first_batch_s / bare_step,
    }


def _timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------- 3. data


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
            per_size[f"{size}mb"] = _run_worker("data_setup", {"path": str(path), "seq_len": plan.seq_len,
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

    import_rss, import_peak = _proc_status_mb("VmRSS"), _maxrss_mb()
    try:  # reset VmHWM (not ru_maxrss) so it shows the peak of setup() alone
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    dm = CorpusDataModule(path=path, seq_len=seq_len, batch_size=batch_size)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    setup_peak = _proc_status_mb("VmHWM")
    return {
        "bytes": os.path.getsize(path),
        "tokens": dm.stats["tokens"],
        "setup_s": setup_s,
        "import_rss_mb": import_rss,
        "peak_rss_mb": max(_maxrss_mb(), import_peak),  # ru_maxrss: the whole process
        "setup_growth_mb": (setup_peak if reset else _maxrss_mb()) - import_rss,
    }


# ----------------------------------------------------------------------------- 4. sampling


def naive_generate(net: torch.nn.Module, prompt: Sequence[int], steps: int, seed: int = 0) -> list[int]:
    """Sample by re-running the whole prefix every step (no carried state): the slow way."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = net(torch.tensor(ids)[None])
            ids.append(int(torch.multinomial(logits[0, -1].softmax(-1), 1, generator=generator)))
    return ids[len(prompt):]


def measure_sampling(plan: Plan, vocab_size: int, prompt: Sequence[int]) -> dict[str, Any]:
    """chars/s of ``generate``: 1 stream, many streams, beam 5; and the naive prefix re-run."""
    from rnnlm.generation import DecodeSettings, generate
    from rnnlm.models.rnn import RNNLM

    torch.manual_seed(0)
    net = RNNLM(vocab_size, "lstm", plan.hidden_size, plan.num_layers, 0.0, plan.embedding_dim).eval()
    sample = DecodeSettings(strategy="sample", temperature=1.0)
    generate(net, prompt, 10, 1, sample, seed=0)  # warm-up

    def rate(fn: Callable[[], int]) -> float:
        start = time.perf_counter()
        chars = fn()
        return chars / (time.perf_counter() - start)

    def streams(n: int, onednn: bool = True) -> float:
        # oneDNN off: the fast step multiplies with MKL's addmm instead of oneDNN-packed weights.
        torch.backends.mkldnn.enabled = onednn
        try:
            return rate(lambda: sum(map(len, generate(net, prompt, plan.sample_length, n, sample, seed=0).tokens)))
        finally:
            torch.backends.mkldnn.enabled = True

    # Interleaved repeats, medians: batch-1 decoding is sensitive to anything else on the machine.
    runs: dict[str, list[float]] = {}
    for _ in range(3):
        for key, n, onednn in (("b1", 1, True), ("b1_plain", 1, False), ("bn", plan.sample_streams, True),
                               ("bn_plain", plan.sample_streams, False)):
            runs.setdefault(key, []).append(streams(n, onednn))
    b1, b1_plain, bn, bn_plain = (statistics.median(runs[k]) for k in ("b1", "b1_plain", "bn", "bn_plain"))
    beam = rate(lambda: len(generate(net, prompt, plan.beam_length, 1, DecodeSettings(strategy="beam", beam_width=5)).tokens[0]))
    naive = rate(lambda: len(naive_generate(net, prompt, plan.naive_steps)))
    stateful_same = rate(lambda: len(generate(net, prompt, plan.naive_steps, 1, sample, seed=0).tokens[0]))
    # One thread: with more, threads wait on each other for the tiny per-token ops.
    with _threads(1):
        b1_one_thread = rate(lambda: len(generate(net, prompt, plan.sample_length, 1, sample, seed=0).tokens[0]))
    return {
        "sample_chars_per_s_b1": b1,
        "sample_chars_per_s_b32": bn,
        "sample_streams": plan.sample_streams,
        "beam5_chars_per_s": beam,
        "naive_rerun_chars_per_s": naive,
        "naive_rerun_steps": plan.naive_steps,
        "stateful_over_naive": stateful_same / naive,
        "sample_chars_per_s_b1_no_onednn": b1_plain,
        "sample_chars_per_s_b32_no_onednn": bn_plain,
        "sample_chars_per_s_b1_one_thread": b1_one_thread,
    }


# ----------------------------------------------------------------------------- 5. lesson


def split_documents(plan: Plan) -> list[str]:
    """The plays (or the user's file cut into ~128 kB pieces, the size of a play) as documents."""
    if plan.corpus is None:
        from rnnlm.data.corpus import shakespeare_plays

        return [doc.strip("\n") for doc in shakespeare_plays()]
    text = corpus_text(plan)
    size = 128_000
    return [text[i : i + size] for i in range(0, len(text), size)]


def _train_for(seconds: float, net: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Train with AdamW (lr 2e-3) and clipping until ``seconds`` of wall time have passed."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    net.train()
    steps, tokens, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        inputs, targets = next(batches)
        train_step(net, optimizer, inputs, targets)
        steps, tokens = steps + 1, tokens + targets.numel()
    net.eval()
    return {"steps": steps, "tokens": tokens, "seconds": time.perf_counter() - start}


def measure_lesson(plan: Plan) -> dict[str, Any]:
    """The lesson's one-document batches (one-hot, 1x64 LSTM) vs our 2x256 with shuffled windows."""
    from torch.utils.data import DataLoader

    from rnnlm.data.datamodule import WindowDataset, keep_batch
    from rnnlm.data.tokenizers import CharTokenizer
    from rnnlm.generation import score_ids
    from rnnlm.models.rnn import RNNLM

    assert plan.lesson_seconds is not None
    docs = split_documents(plan)
    text = "\n\n".join(docs)
    cut = int(len(text) * (1 - plan.heldout_fraction))
    tokenizer = CharTokenizer.fit(text[:cut])
    heldout = torch.from_numpy(tokenizer.encode(text[cut:]).astype("int64"))
    train_docs, pos = [], 0
    for doc in docs:  # every document's part that lies before the held-out text
        part = doc[: max(0, cut - pos)]
        pos += len(doc) + 2
        if len(part) > plan.lesson_seq_len:
            train_docs.append(torch.from_numpy(tokenizer.encode(part).astype("int64")))
    T = plan.lesson_seq_len

    def lesson_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = random.Random(0)
        while True:
            for ids in rng.sample(train_docs, len(train_docs)):
                n = (len(ids) - 1) // T
                yield ids[: n * T].view(n, T), ids[1 : n * T + 1].view(n, T)

    vocab = len(tokenizer)
    torch.manual_seed(0)
    lesson_net = RNNLM(vocab, "lstm", 64, 1, 0.0, None)
    lesson = _train_for(plan.lesson_seconds, lesson_net, lesson_batches())

    torch.manual_seed(0)
    ours_net = RNNLM(vocab, "lstm", plan.ours_hidden_size, 2, 0.0, 64)
    train_ids = torch.from_numpy(tokenizer.encode(text[:cut]))
    loader = DataLoader(WindowDataset(train_ids, T, T), batch_size=64, shuffle=True, drop_last=True, collate_fn=keep_batch)
    ours = _train_for(plan.lesson_seconds, ours_net, _cycle(loader))

    # Scoring runs one token per time step at batch 1: on one thread, so that threads do not
    # wait on each other at every step of the (possibly shared) machine.
    with torch.no_grad(), _threads(1):
        lesson_bpc = score_ids(lesson_net, heldout)["bpc"]
        ours_bpc = score_ids(ours_net, heldout)["bpc"]
    return {
        "lesson_seconds": plan.lesson_seconds,
        "lesson_documents": len(train_docs),
        "lesson_steps": lesson["steps"],
        "lesson_tokens_seen": lesson["tokens"],
        "lesson_baseline_bpc": lesson_bpc,
        "our_steps": ours["steps"],
        "our_tokens_seen": ours["tokens"],
        "our_bpc_same_time": ours_bpc,
        "heldout_chars": int(heldout.numel()),
    }


# ----------------------------------------------------------------------------- run / print


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the chosen plan, as one flat dict (plus ``machine`` and details)."""
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "default"]
    plan = Plan(**{**asdict(plan), "corpus": args.corpus})
    if args.lesson_seconds is not None:
        plan.lesson_seconds = args.lesson_seconds
    tuned = keep_freed_memory()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    result: dict[str, Any] = {"plan": plan.name, "machine": machine_info(), "malloc_tuning_on": tuned}
    phases: dict[str, float] = {}

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        start = time.perf_counter()
        result.update(fn())
        phases[name] = time.perf_counter() - start

    phase("gemm", lambda: measure_gemm_peak(plan))
    phase("training", lambda: measure_training(plan))
    text = corpus_text(plan)
    phase("data", lambda: measure_data(plan, text))
    from rnnlm.data.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.fit(text[: int(len(text) * 0.9)])
    prompt = [int(i) for i in tokenizer.encode(text[:16])]
    phase("sampling", lambda: measure_sampling(plan, len(tokenizer), prompt))
    if plan.lesson_seconds:
        phase("lesson", lambda: measure_lesson(plan))
    phase("gemm_again", lambda: measure_gemm_peak(plan, result["gemm_by_method"]))
    result["mfu"] = result["train_gflops"] / result["peak_gflops"]
    result["reference_mfu"] = result["reference_gflops"] / result["peak_gflops"]
    result["phase_seconds"] = phases
    result["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    result["bench_seconds"] = time.perf_counter() - started
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def format_table(r: dict[str, Any]) -> str:
    """The results as a readable, sectioned table."""
    m = r["machine"]
    rows: list[tuple[str, list[tuple[str, str]]]] = [
        ("machine", [
            ("cpu", f"{m['cpu_model']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads, avx512f={m['avx512f']})"),
            ("versions", f"torch {m['torch']}, pytorch_lightning {m['pytorch_lightning']}, python {m['python']}"),
            ("load average (1 min)", f"{m['loadavg_1m_start']} at start, {m.get('loadavg_1m_end')} at end"),
            ("plan", f"{r['plan']}, glibc malloc tuning {'on' if r['malloc_tuning_on'] else 'off'}"),
        ]),
        ("1. fp32 GEMM peak", [
            *((f"{k}", _fmt(v, "GFLOP/s")) for k, v in r["gemm_by_method"].items()),
            ("peak", f"{_fmt(r['peak_gflops'], 'GFLOP/s')} ({r['peak_method']}; best of a pass at start and at end)"),
        ]),
        ("2. training (LSTM, tokens = chars)", [
            ("Lightning Trainer", f"{_fmt(r['train_tokens_per_s'], 'tok/s')}  ({_fmt(r['lightning_step_s'], 's/step')})"),
            ("bare PyTorch loop", f"{_fmt(r['reference_tokens_per_s'], 'tok/s')}  ({_fmt(r['reference_step_s'], 's/step')}, "
                                  f"range {_fmt(r['reference_step_s_min'])}-{_fmt(r['reference_step_s_max'])})"),
            ("lightning / bare", f"{_fmt(r['lightning_overhead'])} ({r['lightning_extra_ms_per_step']:+.3g} ms/step); "
                                 f"fastest steps: {_fmt(r['lightning_overhead_best'])}"),
            ("FLOPs per token (train)", _fmt(r["train_flops_per_token"] / 1e6, "MFLOP")),
            ("achieved (Lightning / bare)", f"{_fmt(r['train_gflops'])} / {_fmt(r['reference_gflops'], 'GFLOP/s')}"),
            ("MFU (Lightning / bare)", f"{r['mfu']:.1%} / {r['reference_mfu']:.1%}"),
            ("bare loop, bf16-mixed autocast", f"{_fmt(r['bf16_tokens_per_s'], 'tok/s')}: "
                                               f"{_fmt(r['bf16_speedup'], 'x')} fp32's speed" if r["bf16_speedup"]
                                               else "not measured: the CPU has no native bf16"),
            ("GRU bare loop", f"{_fmt(r['gru_tokens_per_s'], 'tok/s')} ({_fmt(r['gru_gflops'], 'GFLOP/s')})"),
            ("GRU / LSTM time per token", f"{_fmt(r['gru_over_lstm_time_per_token'])} (FLOP ratio {_fmt(r['gru_over_lstm_flops'])})"),
            ("nn.GRU's own CPU path", f"{_fmt(r['nn_gru_tokens_per_s'], 'tok/s')}, "
                                      f"{_fmt(r['nn_gru_over_lstm_time_per_token'])} x LSTM's time per token"),
            *((f"{cell if '.' in cell else cell.upper()} step profile", f"{prof['op_calls']} op calls; " + ", ".join(
                f"{op} {v['share']:.0%} ({v['calls']}x)" for op, v in prof["top_ops"].items()))
              for cell, prof in r["step_profiles"].items()),
            ("bare loop, fresh process", f"malloc tuning on {_fmt(r['malloc_on_fresh_tokens_per_s'])}, "
                                         f"off {_fmt(r['malloc_off_tokens_per_s'], 'tok/s')}"),
            ("malloc tuning speed-up", _fmt(r["malloc_tuning_speedup"], "x")),
        ]),
        ("3. data", [
            *((f"setup {k}", f"{_fmt(v['setup_s'], 's')}, peak RSS {_fmt(v['peak_rss_mb'], 'MB')} "
                             f"(imports {_fmt(v['import_rss_mb'], 'MB')}, setup +{_fmt(v['setup_growth_mb'], 'MB')})")
              for k, v in r["data_by_size"].items()),
            ("one batch: next(iter(loader))", f"{_fmt(r['batch_first_s'] * 1e3, 'ms')} = {r['batch_vs_step_pct']:.3g}% of a step"),
            ("one batch: next(it) in an epoch", _fmt(r["batch_next_s"] * 1e3, "ms")),
        ]),
        ("4. sampling (untrained weights)", [
            ("1 stream", _fmt(r["sample_chars_per_s_b1"], "chars/s")),
            (f"{r['sample_streams']} streams (total)", _fmt(r["sample_chars_per_s_b32"], "chars/s")),
            ("beam width 5", _fmt(r["beam5_chars_per_s"], "chars/s")),
            (f"naive prefix re-run ({r['naive_rerun_steps']} steps)", _fmt(r["naive_rerun_chars_per_s"], "chars/s")),
            ("stateful / naive (same length)", _fmt(r["stateful_over_naive"], "x")),
            ("1 / 32 streams, oneDNN packing off", f"{_fmt(r['sample_chars_per_s_b1_no_onednn'])} / "
                                           f"{_fmt(r['sample_chars_per_s_b32_no_onednn'], 'chars/s')}"),
            ("1 stream, 1 thread", _fmt(r["sample_chars_per_s_b1_one_thread"], "chars/s")),
        ]),
    ]
    if "lesson_baseline_bpc" in r:
        rows.append((f"5. lesson vs ours, {_fmt(r['lesson_seconds'], 's')} each, held-out {r['heldout_chars']:,} chars", [
            ("lesson: 1 doc/batch, one-hot, 1x64",
             f"{_fmt(r['lesson_baseline_bpc'], 'bpc')} ({r['lesson_steps']} steps, {r['lesson_tokens_seen']:,} chars)"),
            ("ours: 2x256, emb 64, 64x128 shuffled",
             f"{_fmt(r['our_bpc_same_time'], 'bpc')} ({r['our_steps']} steps, {r['our_tokens_seen']:,} chars)"),
        ]))
    width = max(len(label) for _, section in rows for label, _ in section) + 2
    lines = []
    for title, section in rows:
        lines.append(f"== {title}")
        lines.extend(f"  {label:<{width}}{value}" for label, value in section)
    spent = ", ".join(f"{k} {v:.0f}" for k, v in r["phase_seconds"].items())
    lines.append(f"(bench took {r['bench_seconds']:.0f} s: {spent})")
    return "\n".join(lines)


def worker(kind: str, payload: str) -> None:
    """Entry point of the fresh processes: print one JSON line with the measurement."""
    args = json.loads(payload)
    if kind == "data_setup":
        out: dict[str, Any] = data_setup_worker(**args)
    elif kind == "bare_train":
        plan = Plan(**{**args, "gemm_sizes": tuple(args["gemm_sizes"]), "data_sizes_mb": tuple(args["data_sizes_mb"])})
        keep_freed_memory()  # honours RNNLM_MALLOC_TUNING=0, as the product would
        if plan.threads:
            torch.set_num_threads(plan.threads)
        times = bare_train_steps(plan, build_datamodule(plan), "lstm", plan.timed_steps)
        out = {"step_s": statistics.median(times), "malloc_tuning_on": keep_freed_memory(),
               "tokens_per_s": _median_rate(times, plan.batch_size * plan.seq_len)}
    else:
        raise SystemExit(f"unknown bench worker {kind!r}")
    print(json.dumps(out))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rnnlm.bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-3 minute version")
    size.add_argument("--tiny", action="store_true", help="a ~20 second smoke version (tiny model, no lesson run)")
    parser.add_argument("--corpus", help="a UTF-8 text file (default: the embedded plays)")
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--lesson-seconds", type=float, help="training seconds of each lesson-comparison model")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.corpus is not None:
        args.corpus = str(Path(args.corpus).expanduser().resolve())
    result = run(args)
    print(format_table(result))
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
