"""Likelihood of a text under a model: loss, perplexity, bits per token and per character, accuracy.

Training's evaluation (``models.module``), calibration (``rnnlm.calibration``) and sampling's
score mode (``rnnlm.sampling``) use it, so it depends on none of them: data <- models <- generation, with this below all three.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.errors import ConfigError


def stateful_chunks(
    net: nn.Module, ids: torch.Tensor, lanes: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [n, vocab] as float, targets [n]) chunk by chunk, ``ids`` cut into ``lanes``
    contiguous lanes read side by side with the state carried; the ``lanes * (len // lanes)``
    tokens that fit are predicted, each from everything before it in its lane."""
    lane_len = (ids.numel() - 1) // lanes
    if lane_len < 1:
        raise ConfigError(f"the text to score needs at least {lanes + 1} tokens")
    device = next(net.parameters()).device
    # Views of ``ids`` (a map of the prepared corpus, in its small integer type): only the
    # chunk at hand becomes ``long`` on the device, so memory does not grow with the text.
    inputs = ids[: lanes * lane_len].view(lanes, lane_len)
    targets = ids[1 : lanes * lane_len + 1].view(lanes, lane_len)
    state = None
    for start in range(0, lane_len, chunk):
        window = slice(start, start + chunk)
        logits, state = net(inputs[:, window].to(device=device, dtype=torch.long), state)
        yield logits.reshape(-1, logits.size(-1)).float(), targets[:, window].reshape(-1).to(device=device, dtype=torch.long)


@torch.no_grad()
def score_totals(net: nn.Module, ids: torch.Tensor, lanes: int = 1, chunk: int = 4096,
                 char_lengths: torch.Tensor | None = None) -> tuple[float, int, int, float]:
    """Summed NLL (nats), correct top-1 guesses, scored tokens and the characters they stand
    for (``char_lengths[id]``, see ``Tokenizer.char_lengths``; one per token when ``None``),
    state carried throughout.

    ``lanes=1`` scores the whole text as one sequence; more lanes score contiguous parts of
    it side by side as one batch (see ``stateful_chunks``).
    """
    nll_sum, correct, count, chars = 0.0, 0, 0, 0.0
    for flat, target in stateful_chunks(net, ids, lanes, chunk):
        nll_sum += float(F.cross_entropy(flat, target, reduction="sum"))
        correct += int((flat.argmax(-1) == target).sum())
        count += target.numel()
        chars += float(char_lengths.to(target.device)[target].sum()) if char_lengths is not None else target.numel()
    return nll_sum, correct, count, chars


def likelihood_figures(nll_sum: float, correct: int, count: int, chars: float) -> dict[str, float]:
    """Loss and perplexity per token, bits per token (``bpt``) and per character (``bpc``)."""
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "bpt": loss / math.log(2), "bpc": nll_sum / math.log(2) / chars,
            "acc": correct / count, "tokens": count, "chars": chars}


def score_ids(net: nn.Module, ids: torch.Tensor, chunk: int = 4096,
              char_lengths: torch.Tensor | None = None) -> dict[str, float]:
    """Loss, perplexity, bits per token and per character, and accuracy of a text read in one
    pass with the state carried. The first token has no context, so ``len(ids) - 1`` tokens
    are scored."""
    if ids.numel() < 2:
        raise ConfigError("the text to score needs at least two tokens")
    return likelihood_figures(*score_totals(net, ids, 1, chunk, char_lengths))
