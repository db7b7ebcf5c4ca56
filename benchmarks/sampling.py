"""4. Sampling chars/s: 1 stream, many streams, beam search, and re-running the prefix each step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import Plan, threads_limited


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
    from rnnlm.models.network import RNNLM

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
    with threads_limited(1):
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
