"""Likelihood of a text under a model: loss, perplexity, bits per token and per character, accuracy;
what validation (``module.py``), calibration and ``sample.py mode=score`` all report."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from rnnlm.utils.errors import ConfigError


def lane_windows(net: nn.Module, ids: torch.Tensor, lanes: int, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) [lanes, <= chunk] as ``long`` on the net's device, chunk by chunk:
    ``ids`` cut into ``lanes`` contiguous lanes read side by side; the ``lanes * (len // lanes)``
    tokens that fit are predicted, each from everything before it in its lane."""
    lane_len = (ids.numel() - 1) // lanes
    if lane_len < 1:
        raise ConfigError(f"the text to score needs at least {lanes + 1} tokens")
    device = next(net.parameters()).device
    # Views of ``ids`` (a map of the prepared corpus, in its small integer type): only the
    # chunk at hand becomes ``long`` on the device, so memory does not grow with the text.
    inputs = ids[: lanes * lane_len].view(lanes, lane_len)
    targets = ids[1 : lanes * lane_len + 1].view(lanes, lane_len)
    for start in range(0, lane_len, chunk):
        window = slice(start, start + chunk)
        yield (inputs[:, window].to(device=device, dtype=torch.long),
               targets[:, window].to(device=device, dtype=torch.long))


def stateful_chunks(
    net: nn.Module, ids: torch.Tensor, lanes: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [n, vocab] as float, targets [n]) chunk by chunk over :func:`lane_windows`,
    the state carried."""
    state = None
    for inputs, targets in lane_windows(net, ids, lanes, chunk):
        logits, state = net(inputs, state)
        yield logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)


def logit_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability (fp32) of each target under ``logits`` and whether it was the top guess."""
    log_probs = logits.float().log_softmax(-1)
    return log_probs.gather(-1, targets[..., None]).squeeze(-1), logits.argmax(-1) == targets


@torch.no_grad()
def score_totals(net: nn.Module, ids: torch.Tensor, lanes: int = 1, chunk: int = 4096,
                 char_lengths: torch.Tensor | None = None,
                 each_chunk: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[float, int, int, float]:
    """Summed NLL (nats), correct top-1 guesses, scored tokens and the characters they stand
    for (``char_lengths[id]``, see ``Tokenizer.char_lengths``; one per token when ``None``),
    state carried throughout.

    ``lanes=1`` scores the whole text as one sequence; more lanes score contiguous parts of
    it side by side as one batch (see ``lane_windows``). ``each_chunk(logits, targets)``
    sees every chunk's logits as they are scored (a softmax output's totals are then the
    same to the bit; an adaptive one's full log-probabilities, not its clusters, are scored).
    """
    nll_sum, correct, count, chars, state = 0.0, 0, 0, 0.0, None
    for inputs, targets in lane_windows(net, ids, lanes, chunk):
        if each_chunk is None and hasattr(net, "target_scores"):
            # The net's own scores: an adaptive softmax scores without the whole vocabulary.
            log_probs, hits, state = net.target_scores(inputs, targets, state)
        else:
            logits, state = net(inputs, state)
            log_probs, hits = logit_scores(logits, targets)
            if each_chunk is not None:
                each_chunk(logits, targets)
        nll_sum -= float(log_probs.double().sum())
        correct += int(hits.sum())
        count += targets.numel()
        chars += float(char_lengths.to(targets.device)[targets].sum()) if char_lengths is not None else targets.numel()
    return nll_sum, correct, count, chars


def score_ids(net: nn.Module, ids: torch.Tensor, chunk: int = 4096, chars: torch.Tensor | None = None,
              each_chunk: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """Loss, perplexity, bits per token and per character, and accuracy of a text read in one
    pass with the state carried (``chars[i]``: the characters ``ids[i]`` stands for, one each
    when ``None``; ``each_chunk``: see :func:`score_totals`). The first token has no context,
    so ``len(ids) - 1`` tokens are scored."""
    if ids.numel() < 2:
        raise ConfigError("the text to score needs at least two tokens")
    nll_sum, correct, count, _ = score_totals(net, ids, 1, chunk, None, each_chunk)
    chars = float(chars[1 : count + 1].sum()) if chars is not None else count
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "bpt": loss / math.log(2), "bpc": nll_sum / math.log(2) / chars,
            "acc": correct / count, "tokens": count, "chars": chars}
