"""``--vocab``: what the output layer costs for characters, subwords and words.

Training: steps of a word-level LSTM (``VOCAB_WORDS`` words, ``VOCAB_HIDDEN`` units, the
plan's layers, ``VOCAB_BATCH`` windows of ``VOCAB_SEQ_LEN`` words: ``experiment=words``'s
batch) with a full softmax and with an
adaptive one, interleaved on the same batches, under bf16 autocast where the CPU computes
bf16 natively (what ``trainer.precision=auto`` picks). Sampling: one stream of char, BPE and
word models of that size (the word model's output as ``model.output=auto`` picks it), in
tokens and characters per second.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import Plan

VOCAB_WORDS = 30_000
VOCAB_BPE = 1024
VOCAB_HIDDEN = 256
VOCAB_SEQ_LEN = 64  # words per training window: ~235 characters, as 256-character windows hold
VOCAB_BATCH = 32


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor,
          bf16: bool) -> float:
    """One training step (forward and loss, backward, clip, AdamW); its wall time."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = net.loss(inputs, targets)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - start


def measure_training_outputs(plan: Plan, ids: np.ndarray, vocab_size: int, steps: int, bf16: bool) -> dict[str, Any]:
    """Training tokens/s of the full and the adaptive softmax on the same word batches."""
    from rnnlm.models.module import NETWORK_DEFAULTS
    from rnnlm.models.network import RNNLM
    from rnnlm.models.output import auto_cutoffs, max_tails

    counts = np.bincount(ids, minlength=vocab_size)
    tokens = torch.from_numpy(ids.astype(np.int64))
    generator = torch.Generator().manual_seed(0)
    seq_len, batch = min(VOCAB_SEQ_LEN, plan.seq_len), min(VOCAB_BATCH, plan.batch_size)
    cutoffs = auto_cutoffs(vocab_size, counts, max_tails(VOCAB_HIDDEN, NETWORK_DEFAULTS["adaptive_div_value"]))  # as LanguageModel does
    nets = {}
    for output in ("softmax", "adaptive"):
        torch.manual_seed(0)
        net = RNNLM(vocab_size, "lstm", VOCAB_HIDDEN, plan.num_layers, 0.0, plan.embedding_dim, output=output,
                    adaptive_cutoffs=cutoffs if output == "adaptive" else None).train()
        nets[output] = (net, torch.optim.AdamW(net.parameters(), lr=2e-3))
    times: dict[str, list[float]] = {name: [] for name in nets}
    for step in range(plan.warmup_steps + steps):
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=generator)
        windows = tokens[starts[:, None] + torch.arange(seq_len + 1)]
        for name, (net, optimizer) in nets.items():  # interleaved: both see the machine as it is
            elapsed = _step(net, optimizer, windows[:, :-1], windows[:, 1:], bf16)
            if step >= plan.warmup_steps:
                times[name].append(elapsed)
    per_step = batch * seq_len
    rates = {name: per_step / statistics.median(values) for name, values in times.items()}
    return {
        "vocab_train_tokens_per_s_softmax": rates["softmax"],
        "vocab_train_tokens_per_s_adaptive": rates["adaptive"],
        "vocab_adaptive_over_softmax": rates["adaptive"] / rates["softmax"],
        "vocab_adaptive_cutoffs": nets["adaptive"][0].adaptive.cutoffs[:-1],
        "vocab_train_precision": "bf16-mixed" if bf16 else "32-true",
    }


def measure_sampling_by_tokenizer(plan: Plan, tokenizers: dict[str, Any], heldout: str) -> dict[str, Any]:
    """1-stream sampling tokens/s and chars/s (tokens x the held-out text's characters per token)."""
    from rnnlm.generation import DecodeSettings, generate
    from rnnlm.models.network import RNNLM
    from rnnlm.models.output import resolve_output

    settings = DecodeSettings(strategy="sample", temperature=1.0)
    nets, chars_per_token = {}, {}
    for name, tokenizer in tokenizers.items():
        torch.manual_seed(0)
        output = resolve_output("auto", len(tokenizer))
        nets[name] = RNNLM(len(tokenizer), "lstm", VOCAB_HIDDEN, plan.num_layers, 0.0, plan.embedding_dim,
                           output=output).eval()
        chars_per_token[name] = len(heldout) / max(1, len(tokenizer.encode(heldout)))
        generate(nets[name], [1], 10, 1, settings, seed=0)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(3):  # interleaved repeats, medians
        for name, net in nets.items():
            start = time.perf_counter()
            generate(net, [1], plan.sample_length, 1, settings, seed=0)
            rates[name].append(plan.sample_length / (time.perf_counter() - start))
    result: dict[str, Any] = {}
    for name in nets:
        tokens_per_s = statistics.median(rates[name])
        result[f"vocab_sample_tokens_per_s_{name}"] = tokens_per_s
        result[f"vocab_sample_chars_per_s_{name}"] = tokens_per_s * chars_per_token[name]
        result[f"vocab_chars_per_token_{name}"] = chars_per_token[name]
        result[f"vocab_size_{name}"] = len(tokenizers[name])
        result[f"vocab_sample_char_over_{name}"] = statistics.median(rates["char"]) / tokens_per_s
    return result


def measure_vocabularies(plan: Plan, text: str, train_steps: int = 6) -> dict[str, Any]:
    """Both measurements on ``text``: tokenizers fitted on its first 90%, scored on the next 5%."""
    from rnnlm.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
    from rnnlm.training.precision import native_cpu_bf16

    train_text = text[: int(len(text) * 0.9)]
    heldout = text[int(len(text) * 0.9) : int(len(text) * 0.95)]
    tokenizers = {"char": CharTokenizer.fit(train_text), "bpe": BPETokenizer.fit(train_text, VOCAB_BPE),
                  "word": WordTokenizer.fit(train_text, VOCAB_WORDS)}
    word = tokenizers["word"]
    ids = word.encode(train_text)
    return {**measure_training_outputs(plan, ids, len(word), train_steps, native_cpu_bf16()),
            **measure_sampling_by_tokenizer(plan, tokenizers, heldout)}


def format_vocabularies(r: dict[str, Any]) -> str:
    """The measurements as lines of text."""
    lines = [
        f"training, {r['vocab_size_word']:,} words, {VOCAB_HIDDEN} hidden, {r['vocab_train_precision']}:",
        f"  full softmax      {r['vocab_train_tokens_per_s_softmax']:,.0f} tokens/s",
        f"  adaptive softmax  {r['vocab_train_tokens_per_s_adaptive']:,.0f} tokens/s "
        f"({r['vocab_adaptive_over_softmax']:.2f}x; cutoffs {r['vocab_adaptive_cutoffs']})",
        "sampling, 1 stream:",
    ]
    for name in ("char", "bpe", "word"):
        lines.append(f"  {name:<5} vocab {r[f'vocab_size_{name}']:>6,}  {r[f'vocab_sample_tokens_per_s_{name}']:>8,.0f} tokens/s "
                     f"{r[f'vocab_sample_chars_per_s_{name}']:>9,.0f} chars/s  (char model's tokens/s / this: "
                     f"{r[f'vocab_sample_char_over_{name}']:.2f})")
    return "\n".join(lines)
