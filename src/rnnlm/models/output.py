"""The output layer: a full softmax, or ``torch.nn.AdaptiveLogSoftmaxWithLoss`` for large vocabularies.

An adaptive softmax (Grave et al., 2017) scores the frequent tokens in a head and the rare
ones in tail clusters with narrower projections; in training a token pays only for the head
and its own cluster, so most of the output layer's work goes. It needs frequent tokens at
low ids, which the char and word tokenizers give (their ids rank tokens by count).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_value

ADAPTIVE_ABOVE = 8192  # output=auto: an adaptive softmax for vocabularies larger than this
# The head holds the tokens that make up 70% of the training text, three tail clusters those
# up to 90%, 98% and the rest. On the plays' 30k words (600 steps, docs/tokenizers.md) this
# head of 232 words beat heads of 713 and 1,322 on validation bits per character, and ran faster.
COVERAGE = (0.7, 0.9, 0.98)


def resolve_output(output: str, vocab_size: int, adaptive_above: int = ADAPTIVE_ABOVE) -> str:
    """``softmax`` or ``adaptive``; ``auto`` picks adaptive above ``adaptive_above`` tokens."""
    check_value("model.output", output)
    if output == "auto":
        return "adaptive" if vocab_size > adaptive_above else "softmax"
    return output


def max_tails(hidden_size: int, div_value: float) -> int:
    """Tail clusters whose projection is at least one unit wide: cluster ``i`` (from 1) gets
    ``hidden_size // div_value ** i`` units, as ``AdaptiveLogSoftmaxWithLoss`` builds it."""
    tails = 0
    while int(hidden_size // (div_value ** (tails + 1))) >= 1:
        tails += 1
    return tails


def auto_cutoffs(vocab_size: int, counts: Sequence[int] | np.ndarray | None = None, tails: int = len(COVERAGE)) -> list[int]:
    """Cluster boundaries where the tokens, in id order, cover ``COVERAGE`` of ``counts``
    (each id's count in the training text), the first ``tails`` of them; without counts,
    frequencies that follow Zipf's law (1 / rank). Strictly increasing, each in
    [1, vocab_size - 1]; at least one."""
    if counts is None or float(np.sum(counts)) <= 0:
        weights = 1.0 / np.arange(1, vocab_size + 1)
    else:
        weights = np.zeros(vocab_size)
        given = np.asarray(counts, dtype=np.float64)[:vocab_size]
        weights[: len(given)] = given
    share = np.cumsum(weights) / weights.sum()
    cutoffs: list[int] = []
    for coverage in COVERAGE[: max(tails, 1)]:
        cut = min(int(np.searchsorted(share, coverage)) + 1, vocab_size - 1)
        if cut > (cutoffs[-1] if cutoffs else 0):
            cutoffs.append(cut)
    return cutoffs


def check_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """``cutoffs`` as the list ``AdaptiveLogSoftmaxWithLoss`` accepts, or a one-line error."""
    values = list(cutoffs)
    valid = (values and all(isinstance(c, int) and not isinstance(c, bool) for c in values)
             and values == sorted(set(values)) and 0 < values[0] and values[-1] < vocab_size)
    if not valid:
        raise ConfigError(f"model.adaptive_cutoffs={values!r}; give increasing integers in [1, {vocab_size - 1}] "
                          "(the vocabulary size minus one), or null to choose them from the token frequencies")
    return values


def cluster_shares(cutoffs: Sequence[int] | None, counts: Sequence[int] | np.ndarray | None) -> list[float] | None:
    """The fraction of ``counts`` in each tail cluster (training's cost of each), or ``None``."""
    if cutoffs is None or counts is None or float(np.sum(counts)) <= 0:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    bounds = [*cutoffs, len(counts)]
    return [float(counts[a:b].sum() / counts.sum()) for a, b in zip(bounds[:-1], bounds[1:])]
