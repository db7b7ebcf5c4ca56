"""Character and word tokenizers whose whole state is a list of strings.

Both reserve id 0 for ``<unk>``: a character (or word) unseen in the training split maps
to it. ``to_dict()`` gives plain data that a checkpoint stores and ``from_dict`` rebuilds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

UNK = "<unk>"
_CHUNK = 1 << 22  # code points encoded per vectorised step; bounds the temporary memory
_WORD = re.compile(r"\w+|[^\w\s]|\s+")
_WORD_CHUNK = 1 << 20  # characters split into words at a time
UNICODE_SIZE = 0x110000  # code points 0 ... U+10FFFF


def smallest_int_dtype(vocab_size: int) -> np.dtype:
    """The narrowest integer type that holds every id (the corpus is stored in it)."""
    for dtype in (np.uint8, np.int16, np.int32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _ranked(counts: Iterable[tuple[str, int]], max_vocab: int | None, min_freq: int) -> list[str]:
    """Tokens by falling count (ties by the token), trimmed by ``min_freq`` and ``max_vocab``."""
    kept = sorted(((t, c) for t, c in counts if c >= min_freq), key=lambda tc: (-tc[1], tc[0]))
    if max_vocab is not None:
        kept = kept[: max(max_vocab - 1, 0)]  # one slot is <unk>
    return [t for t, _ in kept]


class Tokenizer:
    """Shared behaviour; subclasses define ``kind``, ``fit``, ``encode`` and ``split``."""

    kind: str

    def __init__(self, vocab: list[str], start: str = "\n\n", unk_chars: float = 1.0):
        if not vocab or vocab[0] != UNK:
            raise ValueError(f"a vocabulary starts with {UNK!r}")
        self.vocab = list(vocab)
        self.start = start  # text that begins a document: what an empty prompt primes with
        self.unk_chars = float(unk_chars)  # mean characters of what <unk> replaced in the train split
        self.index = {tok: i for i, tok in enumerate(self.vocab)}

    def char_lengths(self) -> np.ndarray:
        """Characters of text each id stands for (float64, one per id): bits per character
        divide a text's bits by the sum of these over its tokens. ``<unk>`` counts as the mean
        length of the tokens it replaced when the vocabulary was fitted."""
        lengths = np.array([len(token) for token in self.vocab], dtype=np.float64)
        lengths[0] = self.unk_chars
        return lengths

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def dtype(self) -> np.dtype:
        return smallest_int_dtype(len(self.vocab))

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self.vocab
        return "".join(vocab[int(i)] for i in ids)

    def unknown(self, text: str) -> list[str]:
        """The distinct pieces of ``text`` that the vocabulary lacks, in order of appearance."""
        return list(dict.fromkeys(p for p in self.split(text) if p not in self.index))

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        parts = list(self.encode_stream([text]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """The ids of ``"".join(pieces)``, part by part, whatever the pieces' boundaries."""
        raise NotImplementedError

    @classmethod
    def fit(cls, text: str, max_vocab: int | None = None, min_freq: int = 1) -> Tokenizer:
        return cls.fit_stream([text], max_vocab, min_freq)

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> Tokenizer:
        """The vocabulary of ``"".join(pieces)``, counted piece by piece."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab), "start": self.start, "unk_chars": self.unk_chars}

    @staticmethod
    def from_dict(state: dict[str, Any]) -> Tokenizer:
        kinds = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer)}
        if state.get("kind") not in kinds:
            raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}")
        # Checkpoints written before unk_chars existed: one character per <unk>.
        return kinds[state["kind"]](list(state["vocab"]), state.get("start", "\n\n"), state.get("unk_chars", 1.0))


class CharTokenizer(Tokenizer):
    """Every Unicode code point is a token, so any script works and decoding is exact."""

    kind = "char"

    def __init__(self, vocab: list[str], start: str = "\n\n", unk_chars: float = 1.0):
        super().__init__(vocab, start, 1.0)  # <unk> replaces one character
        self._table: np.ndarray | None = None  # id of every code point, built on first use

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> CharTokenizer:
        counts = np.zeros(UNICODE_SIZE, dtype=np.int64)
        for piece in pieces:
            for start in range(0, len(piece), _CHUNK):
                cps = _code_points(piece[start : start + _CHUNK])
                counts[: int(cps.max()) + 1 if len(cps) else 0] += np.bincount(cps)
        present = np.nonzero(counts)[0]
        ranked = _ranked(((chr(cp), int(counts[cp])) for cp in present), max_vocab, min_freq)
        return cls([UNK, *ranked])

    def split(self, text: str) -> list[str]:
        return list(text)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        if self._table is None:  # 1.1 M entries of the id type: one gather encodes a chunk
            self._table = np.zeros(UNICODE_SIZE, dtype=self.dtype)
            self._table[[ord(c) for c in self.vocab[1:]]] = np.arange(1, len(self.vocab))
        for piece in pieces:
            for start in range(0, len(piece), _CHUNK):
                yield self._table[_code_points(piece[start : start + _CHUNK])]


class WordTokenizer(Tokenizer):
    """Words, single punctuation marks and whitespace runs: decoding reproduces the text."""

    kind = "word"

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for words in _words(pieces):
            counts.update(words)
        vocab = [UNK, *_ranked(counts.items(), max_vocab, min_freq)]
        kept = set(vocab)
        dropped = [(len(word), count) for word, count in counts.items() if word not in kept]
        replaced = sum(count for _, count in dropped)
        unk_chars = sum(length * count for length, count in dropped) / replaced if replaced else 1.0
        return cls(vocab, unk_chars=unk_chars)

    def split(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        get = self.index.get
        for words in _words(pieces):
            yield np.fromiter((get(w, 0) for w in words), dtype=self.dtype, count=len(words))


def _words(pieces: Iterable[str]) -> Iterator[list[str]]:
    """``_WORD.findall("".join(pieces))`` in lists of at most ~``_WORD_CHUNK`` characters' words:
    the last word of a chunk may go on in the next, so it is carried over (every other match
    ends where it would anyway). Small lists: a Python string per word costs ~55 bytes."""
    carry = ""
    for piece in pieces:
        for start in range(0, len(piece), _WORD_CHUNK):
            words = _WORD.findall(carry + piece[start : start + _WORD_CHUNK])
            carry = words.pop() if words else ""
            if words:
                yield words
    if carry:
        yield [carry]


TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer}


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
