"""5. The lesson's training recipe against the default for the same wall time, in bits/char."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks.common import Plan, cycle, threads_limited
from benchmarks.data import corpus_text
from benchmarks.training import train_step


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
    from rnnlm.models.network import RNNLM

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
    ours = _train_for(plan.lesson_seconds, ours_net, cycle(loader))

    # Scoring runs one token per time step at batch 1: on one thread, so that threads do not
    # wait on each other at every step of the (possibly shared) machine.
    with torch.no_grad(), threads_limited(1):
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
