"""Likelihood of a text under a model: loss, perplexity, bits per token, accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.errors import ConfigError


@torch.no_grad()
def score_ids(net: nn.Module, ids: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Predict each token from all tokens before it, carrying the state across chunks.

    The first token has no context, so ``len(ids) - 1`` tokens are scored.
    """
    if ids.numel() < 2:
        raise ConfigError("the text to score needs at least two tokens")
    device = next(net.parameters()).device
    ids = ids.to(device=device, dtype=torch.long)
    state, nll_sum, correct, count = None, 0.0, 0, 0
    for start in range(0, ids.numel() - 1, chunk):
        inputs = ids[start : start + chunk][None]
        targets = ids[start + 1 : start + 1 + chunk][None]
        inputs = inputs[:, : targets.size(1)]
        logits, state = net(inputs, state)
        flat = logits.reshape(-1, logits.size(-1)).float()
        nll_sum += float(F.cross_entropy(flat, targets.reshape(-1), reduction="sum"))
        correct += int((flat.argmax(-1) == targets.reshape(-1)).sum())
        count += targets.numel()
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "bpc": loss / math.log(2), "acc": correct / count, "tokens": count}
