"""A pseudo-random permutation of ``range(n)`` that is computed at the positions asked for.

Why: ``torch.randperm(n)`` holds the whole order, 4 bytes a window, so a rank's memory grows
with the corpus (31 MB for a 1 GB corpus at ``seq_len`` 128, in every rank). Here the order
is a keyed bijection: a balanced Feistel network on the smallest even number of bits that
covers ``n``, with cycle-walking (a value ``>= n`` is permuted again until it falls inside,
which keeps it a bijection of ``range(n)``; the domain is at most 4 n, so a few walks at
most). Evaluating a block of positions needs memory for that block only.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's multipliers


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class LazyPermutation:
    """``perm[positions]`` of a permutation of ``range(n)`` fixed by ``seed``."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"a permutation of {n} elements")
        self.n = n
        half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self._half = np.uint64(half_bits)
        self._mask = np.uint64((1 << half_bits) - 1)
        rng = np.random.Generator(np.random.PCG64(seed))
        self._keys = rng.integers(0, 2**63, size=ROUNDS, dtype=np.int64).astype(np.uint64)

    def _permute_domain(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << self._half) | right

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted values at ``positions`` (integers in ``[0, n)``), as int64."""
        out = self._permute_domain(np.asarray(positions, dtype=np.uint64))
        outside = np.nonzero(out >= self.n)[0]
        while len(outside):
            out[outside] = self._permute_domain(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int64)
