"""Likelihood of a text under a model: loss, perplexity, bits per token, accuracy.

Training's evaluation (``models.module``) and sampling's score mode (``rnnlm.sampling``)
both use it, so it depends on neither: data <- models <- generation, with this below both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.errors import ConfigError


def _stateful_chunks(
    net: nn.Module, ids: torch.Tensor, lanes: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [n, vocab] as float, targets [n]) chunk by chunk, ``ids`` cut into ``lanes``
    contiguous lanes read side by side with the state carried; the ``lanes * (len // lanes)``
    tokens that fit are predicted, each from everything before it in its lane."""
    lane_len = (ids.numel() - 1) // lanes
    if lane_len < 1:
        raise ConfigError(f"the text to score needs at least {lanes + 1} tokens")
    device = next(net.parameters()).device
    ids = ids.to(device=device, dtype=torch.long)
    inputs = ids[: lanes * lane_len].view(lanes, lane_len)
    targets = ids[1 : lanes * lane_len + 1].view(lanes, lane_len)
    state = None
    for start in range(0, lane_len, chunk):
        logits, state = net(inputs[:, start : start + chunk], state)
        yield logits.reshape(-1, logits.size(-1)).float(), targets[:, start : start + chunk].reshape(-1)


@torch.no_grad()
def score_totals(net: nn.Module, ids: torch.Tensor, lanes: int = 1, chunk: int = 4096) -> tuple[float, int, int]:
    """Summed NLL (nats), correct top-1 guesses and scored tokens, state carried throughout.

    ``lanes=1`` scores the whole text as one sequence; more lanes score contiguous parts of
    it side by side as one batch (see ``_stateful_chunks``).
    """
    nll_sum, correct, count = 0.0, 0, 0
    for flat, target in _stateful_chunks(net, ids, lanes, chunk):
        nll_sum += float(F.cross_entropy(flat, target, reduction="sum"))
        correct += int((flat.argmax(-1) == target).sum())
        count += target.numel()
    return nll_sum, correct, count


SCALE_GRID = tuple(0.5 + 0.025 * i for i in range(41))  # 0.5 ... 1.5


@torch.no_grad()
def fit_logit_scale(
    net: nn.Module, ids: torch.Tensor, lanes: int = 4, chunk: int = 256, grid: Sequence[float] = SCALE_GRID
) -> tuple[float, float, float]:
    """The factor on the logits (1 / softmax temperature) that minimises the NLL of ``ids``.

    One stateful pass scores every ``grid`` value; a parabola through the best one and its
    neighbours refines it. Returns (scale, loss at scale 1, loss at the best grid value). The
    net's own ``logit_scale`` is set to 1 for the pass and left there: the caller sets it.
    """
    net.logit_scale.fill_(1.0)
    scales = (1.0, *grid)
    totals, count = torch.zeros(len(scales), dtype=torch.float64), 0
    for flat, target in _stateful_chunks(net, ids, lanes, chunk):
        picked = flat.gather(1, target[:, None]).squeeze(1)
        # One scale at a time: [scales, tokens, vocab] at once would not fit for word vocabularies.
        sums = torch.stack([(torch.logsumexp(flat * s, dim=-1) - picked * s).sum() for s in scales])
        totals += sums.double().cpu()
        count += target.numel()
    losses = (totals / count)[1:]
    best = int(losses.argmin())
    scale = float(grid[best])
    if 0 < best < len(grid) - 1:
        left, mid, right = (float(losses[best + d]) for d in (-1, 0, 1))
        curvature = left - 2 * mid + right
        if curvature > 0:
            scale += 0.5 * (grid[best + 1] - grid[best]) * (left - right) / curvature
    return scale, float(totals[0] / count), float(losses[best])


def score_ids(net: nn.Module, ids: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Loss, perplexity, bits and accuracy of a text read in one pass with the state carried.

    The first token has no context, so ``len(ids) - 1`` tokens are scored.
    """
    if ids.numel() < 2:
        raise ConfigError("the text to score needs at least two tokens")
    nll_sum, correct, count = score_totals(net, ids, 1, chunk)
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "bpc": loss / math.log(2), "acc": correct / count, "tokens": count}
