"""Likelihood of a text under a model: loss, perplexity, bits per token, accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.errors import ConfigError


@torch.no_grad()
def score_totals(net: nn.Module, ids: torch.Tensor, lanes: int = 1, chunk: int = 4096) -> tuple[float, int, int]:
    """Summed NLL (nats), correct top-1 guesses and scored tokens, state carried throughout.

    The text is cut into ``lanes`` contiguous lanes scored side by side as one batch (the
    ``lanes * (len // lanes)`` tokens that fit); each token is predicted from everything
    before it in its lane. ``lanes=1`` scores the whole text as one sequence.
    """
    lane_len = (ids.numel() - 1) // lanes
    if lane_len < 1:
        raise ConfigError(f"the text to score needs at least {lanes + 1} tokens")
    device = next(net.parameters()).device
    ids = ids.to(device=device, dtype=torch.long)
    inputs = ids[: lanes * lane_len].view(lanes, lane_len)
    targets = ids[1 : lanes * lane_len + 1].view(lanes, lane_len)
    state, nll_sum, correct = None, 0.0, 0
    for start in range(0, lane_len, chunk):
        logits, state = net(inputs[:, start : start + chunk], state)
        flat = logits.reshape(-1, logits.size(-1)).float()
        target = targets[:, start : start + chunk].reshape(-1)
        nll_sum += float(F.cross_entropy(flat, target, reduction="sum"))
        correct += int((flat.argmax(-1) == target).sum())
    return nll_sum, correct, lanes * lane_len


def score_ids(net: nn.Module, ids: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Loss, perplexity, bits and accuracy of a text read in one pass with the state carried.

    The first token has no context, so ``len(ids) - 1`` tokens are scored.
    """
    if ids.numel() < 2:
        raise ConfigError("the text to score needs at least two tokens")
    nll_sum, correct, count = score_totals(net, ids, 1, chunk)
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "bpc": loss / math.log(2), "acc": correct / count, "tokens": count}
