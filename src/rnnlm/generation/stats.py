"""Numbers that show cycling (low temperature) and noise (high temperature) in samples."""

from __future__ import annotations

from collections.abc import Sequence


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of samples (1.0 = nothing repeats)."""
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(samples: Sequence[Sequence[int]], n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same sample."""
    repeated = total = 0
    for sample in samples:
        seen: set[tuple[int, ...]] = set()
        for gram in _ngrams(sample, n):
            repeated += gram in seen
            seen.add(gram)
            total += 1
    return repeated / total if total else 0.0


def sample_statistics(samples: Sequence[Sequence[int]], nll: Sequence[float]) -> dict[str, float]:
    finite = [x for x in nll if x == x]
    return {
        "nll_per_token": sum(finite) / len(finite) if finite else float("nan"),
        **{f"distinct_{n}": distinct_n(samples, n) for n in (1, 2, 3)},
        "repetition_4": repetition_rate(samples, 4),
    }
