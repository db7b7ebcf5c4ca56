"""The continuous cache (Grave, Joulin and Usunier, 2017, "Improving Neural Language Models
with a Continuous Cache"): while a text is read, the words that followed the recent hidden
states most like the current one get extra probability.

    p(w | h_t) = (1 - lambda) p_model(w | h_t) + lambda p_cache(w | h_t)
    p_cache(w | h_t) = sum over i in the last ``size`` positions with x_(i+1) = w of
                       exp(theta h_t . h_i), divided by the same sum over all of them

``h_i`` is the output layer's input at position ``i`` and ``x_(i+1)`` the token that followed
it, known before position ``i + 1`` is predicted, so nothing of a target is seen before it
is scored. The network is not trained for it: ``theta`` (how sharply the most similar states
win) and ``lambda`` (the cache's share) are chosen on the validation split from
:data:`THETAS` x :data:`LAMBDAS`, and the test figure is reported beside the model's own
(``test/bpc_cache`` beside ``test/bpc_stateful``), never in its place: the cache adapts to
the text it scores, as a reader does, which a model's own figure does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rnnlm.models.evaluation import lane_windows
from rnnlm.utils.errors import ConfigError

THETAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0)  # the best: ~5 for 1 MB of WikiText-2
LAMBDAS = tuple(round(0.05 * i, 2) for i in range(13))  # 0 (no cache) ... 0.6
LANE_TOKENS = 8  # x size: the fewest tokens a lane holds, so the cache is full for most of it
CHUNK = 256  # tokens per lane scored at once: [lanes, CHUNK, size + CHUNK] similarities
MOST_LANES = 64  # lanes read side by side: at rnnlm.utils.options.CACHE, [64, CHUNK, 10,256] similarities, a few at once: ~3-4 GB


@dataclass(frozen=True)
class CacheFit:
    """The cache's settings and the loss (nats per token) they gave on the text they were chosen on."""

    theta: float
    lam: float
    loss: float


def cache_lanes(tokens: int, size: int, most: int = MOST_LANES) -> int:
    """Lanes to read ``tokens`` in: as many as ``most`` allows while each holds ``LANE_TOKENS x
    size`` tokens (a cache starts empty at the head of each lane), at least one."""
    return max(1, min(most, (tokens - 1) // (LANE_TOKENS * size)))


@torch.no_grad()
def cache_totals(net: nn.Module, ids: torch.Tensor, size: int, lanes: int = 1,
                 thetas: tuple[float, ...] = THETAS, lambdas: tuple[float, ...] = LAMBDAS,
                 chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats, float64 ``[len(thetas), len(lambdas)]``) of ``ids`` read in ``lanes``
    contiguous lanes with the state carried (``evaluation.lane_windows``), the model mixed
    with a cache of each lane's last ``size`` positions at each grid point; and the targets
    scored ``[lanes, tokens per lane]`` (to count their characters). ``lambda = 0`` gives the
    model alone."""
    state, keys, values = None, None, None
    totals = torch.zeros(len(thetas), len(lambdas), dtype=torch.float64)
    lam = torch.tensor(lambdas, dtype=torch.float32, device=next(net.parameters()).device)
    log_lam, log_rest = lam.log()[:, None, None], torch.log1p(-lam)[:, None, None]  # log 0 = -inf: no cache
    scored = []
    for inputs, targets in lane_windows(net, ids, lanes, chunk):
        hidden, state = net.features(inputs, state)
        logits = net.scaled_logits(hidden).float()
        log_model = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)  # [lanes, c]
        del logits  # [lanes, c, vocab]: the largest tensor here for a large vocabulary
        # On a GPU, fp32 matmuls run in TF32 (rnnlm.training.precision): errors of ~1e-2 in a dot
        # product, times theta up to 30, would move the cache's weights; fp64 keeps them exact.
        hidden = hidden.to(torch.float64 if hidden.is_cuda else torch.float32)
        scored.append(targets.cpu())
        if keys is None:
            keys, values = hidden[:, :0], targets[:, :0]
        keys, values = torch.cat([keys, hidden], 1), torch.cat([values, targets], 1)
        held, c = keys.size(1) - hidden.size(1), hidden.size(1)
        similarity = (hidden @ keys.transpose(1, 2)).float()  # [lanes, c, held + c]
        position = torch.arange(held + c, device=keys.device)[None, :] - held  # each key's, from the chunk's start
        query = torch.arange(c, device=keys.device)[:, None]
        visible = (position < query) & (position >= query - size)  # the last `size` before it
        follows = values[:, None, :] == targets[:, :, None]  # the key's next token is this target
        for i, theta in enumerate(thetas):
            logits = (theta * similarity).masked_fill(~visible, -math.inf)
            norm = logits.logsumexp(-1)
            hit = logits.masked_fill(~follows, -math.inf).logsumexp(-1)
            log_cache = torch.where(norm > -math.inf, hit - norm, -math.inf)  # empty cache: p = 0
            mixed = torch.logaddexp(log_rest + log_model, log_lam + log_cache)  # [lambdas, lanes, c]
            totals[i] -= mixed.double().sum((1, 2)).cpu()
        keys, values = keys[:, -size:], values[:, -size:]
    return totals, torch.cat(scored, 1)


def best_fit(totals: torch.Tensor, count: int, thetas: tuple[float, ...] = THETAS,
             lambdas: tuple[float, ...] = LAMBDAS) -> CacheFit:
    """The grid point of least loss among :func:`cache_totals`' totals over ``count`` tokens."""
    best = int(totals.argmin())
    i, j = divmod(best, totals.size(1))
    return CacheFit(float(thetas[i]), float(lambdas[j]), float(totals[i, j]) / count)


def score_with_cache(net: nn.Module, ids: torch.Tensor, chars: torch.Tensor, size: int, theta: float,
                     lam: float) -> dict[str, float]:
    """``mode=score``'s figures with the cache: loss, perplexity and bits per character of a
    text read in one pass (as ``evaluation.score_ids``; ``chars[i]``: the characters ``ids[i]``
    stands for) with a cache of ``size`` positions mixed in at ``theta`` and ``lam``."""
    if not hasattr(net, "features"):
        raise ConfigError("cache_size needs a checkpoint (.ckpt): an exported model gives its logits only, "
                          "not the hidden states the cache holds")
    nll, targets = cache_totals(net, ids, size, 1, (theta,), (lam,))
    count = targets.numel()
    loss = float(nll[0, 0]) / count
    return {"loss_cache": loss, "ppl_cache": math.exp(loss), "bpc_cache": float(nll[0, 0]) / math.log(2) / float(chars[1: count + 1].sum())}
