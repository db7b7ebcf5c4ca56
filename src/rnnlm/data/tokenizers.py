"""Character, word and byte-level BPE tokenizers whose whole state is plain data.

Both reserve id 0 for ``<unk>``: a character (or word) unseen in the training split maps
to it. ``to_dict()`` gives plain data that a checkpoint stores and ``from_dict`` rebuilds.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from rnnlm.utils.options import BPE_MIN_VOCAB, VOCAB, check_value

UNK = "<unk>"
_UTF8 = codecs.getincrementaldecoder("utf-8")
_CHUNK = 1 << 22  # code points encoded per vectorised step; bounds the temporary memory
# A word or punctuation mark takes the single space before it, as GPT-2's pre-tokenizer does:
# " the" is one token, so tokens are ~0.65x as many and samples keep their spaces. Other
# whitespace stays apart (a run's last character can still lend its space to the next word).
WORD_PATTERN = r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+"
LEGACY_WORD_PATTERN = r"\w+|[^\w\s]|\s+"  # checkpoints from before: every whitespace run a token
DEFAULT_MAX_VOCAB = 16384  # word tokenizer: covers 98.4% of the plays' train tokens
_WORD_CHUNK = 1 << 20  # characters split into words at a time
UNICODE_SIZE = 0x110000  # code points 0 ... U+10FFFF
MAX_START_CHARS = 1 << 20  # the text a document starts with (data.separator)


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

    def __init__(self, vocab: list[str], start: str = "\n\n"):
        if not vocab or vocab[0] != UNK:
            raise ValueError(f"a vocabulary starts with {UNK!r}")
        self.vocab = list(vocab)
        self.start = start  # text that begins a document: what an empty prompt primes with
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        self._characters: frozenset[str] | None = None

    def char_lengths(self) -> np.ndarray:
        """Characters of text each id stands for (float64, one per id): bits per character
        divide a text's bits by its characters as written. ``<unk>`` is 0 here: each one
        replaced text of its own length, which :meth:`encode_counted` gives."""
        lengths = np.array([len(token) for token in self.vocab], dtype=np.float64)
        lengths[0] = 0.0
        return lengths

    def encode_counted(self, pieces: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`encode_stream`'s parts, each with the characters of the text that each
        ``<unk>`` among its ids replaced (int64, in order)."""
        for ids in self.encode_stream(pieces):
            yield ids, np.ones(np.count_nonzero(ids == 0), dtype=np.int64)  # one character each

    def encode_with_chars(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The ids of ``text`` and the characters each stands for there (float64): they sum
        to ``len(text)``, whatever the vocabulary lacks."""
        parts = list(self.encode_counted([text]))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=self.dtype)
        chars = self.char_lengths()[ids]
        if parts:
            chars[ids == 0] = np.concatenate([p[1] for p in parts])
        return ids, chars

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def dtype(self) -> np.dtype:
        return smallest_int_dtype(len(self.vocab))

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self.vocab
        return "".join(vocab[int(i)] for i in ids)

    def piece(self, token: int, pending: bytes = b"") -> tuple[str, bytes]:
        """The text ``token`` adds after ``pending`` (the bytes of a character that earlier
        tokens began), and the bytes it leaves pending in turn. Explicit state, so a decoder
        can be copied (beam search reorders its beams)."""
        return self.vocab[token], b""

    def streamer(self) -> Callable[[int], str]:
        """``text(id)`` for ids produced one at a time, in order (sampling's streamed output)."""
        return self.vocab.__getitem__

    def characters(self) -> frozenset[str] | None:
        """Every character a decoded text can hold (``None``: any, as with bytes)."""
        if self._characters is None:
            self._characters = frozenset("".join(self.vocab))
        return self._characters

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

    def encode_context(self, text: str) -> np.ndarray:
        """The ids of ``text`` as it reads with more text after it (a prompt, a stop string).

        Where whitespace joins the word after it, text that ends in whitespace encodes
        differently from the same text mid-corpus: "\\n\\n" alone is one token, before a word
        "\\n", "\\n". The trailing whitespace is encoded as if a word followed (that word
        dropped), so the ids are those training saw; a single trailing space, which a word
        would have taken, stays a token of its own (rare in training: end prompts without it).
        """
        body = text.rstrip()
        tail = text[len(body) :]
        if not tail:
            return self.encode(text)
        probe = self.encode(tail + "x").tolist()
        while probe and not tail.startswith(self.decode(probe)):
            probe.pop()
        rest = tail[len(self.decode(probe)) :]
        parts = [self.encode(body), np.array(probe, dtype=self.dtype), self.encode(rest)]
        return np.concatenate(parts).astype(self.dtype, copy=False)

    @classmethod
    def fit(cls, text: str, max_vocab: int | None = None, min_freq: int = 1) -> Tokenizer:
        return cls.fit_stream([text], max_vocab, min_freq)

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> Tokenizer:
        """The vocabulary of ``"".join(pieces)``, counted piece by piece."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab), "start": self.start}

    def identity(self) -> dict[str, Any]:
        """What decides which text each id stands for and how text becomes ids: two tokenizers
        with equal identities read and write the same ids (resume compares them)."""
        return {"kind": self.kind, "tokens": self.vocab}

    @staticmethod
    def from_dict(state: Any) -> Tokenizer:
        """The tokenizer ``to_dict()`` described. The state comes from a file (a checkpoint, a
        cache entry), so every field is checked: a :class:`ValueError` says what is wrong."""
        if not isinstance(state, dict):
            raise ValueError(f"the tokenizer state is {type(state).__name__}, not a mapping")
        kind, start = state.get("kind"), state.get("start", "\n\n")
        if kind not in TOKENIZERS:
            raise ValueError(f"tokenizer kind {kind!r} is none of {', '.join(TOKENIZERS)}")
        if not isinstance(start, str) or len(start) > MAX_START_CHARS:
            raise ValueError(f"the tokenizer's start text is {type(start).__name__} {str(start)[:20]!r}, "
                             f"not text of at most {MAX_START_CHARS} characters")
        if kind == BPETokenizer.kind:
            model_json = state.get("model_json")
            if not isinstance(model_json, str):
                raise ValueError(f"the BPE tokenizer's model_json is {type(model_json).__name__}, not text")
            return BPETokenizer(model_json, start)
        vocab = state.get("vocab")  # (an "unk_chars" of older states is not needed: see char_lengths)
        if not isinstance(vocab, list) or not 2 <= len(vocab) <= VOCAB:
            raise ValueError(f"the {kind} vocabulary is not a list of 2 to {VOCAB:,} tokens")
        bad = next((i for i, t in enumerate(vocab) if not isinstance(t, str) or not t or (kind == "char" and i and len(t) != 1)), None)
        if bad is not None:
            need = "one character" if kind == "char" else "non-empty text"
            raise ValueError(f"token {bad} of the {kind} vocabulary is {vocab[bad]!r}, not {need}")
        if len(set(vocab)) != len(vocab):
            twice = next(t for t, n in Counter(vocab).items() if n > 1)
            raise ValueError(f"the {kind} vocabulary holds {twice!r} twice")
        if kind == WordTokenizer.kind:
            pattern = state.get("pattern", LEGACY_WORD_PATTERN)
            if pattern not in (WORD_PATTERN, LEGACY_WORD_PATTERN):  # a pattern runs on every prompt: only ours
                raise ValueError(f"the word tokenizer's pattern {str(pattern)[:40]!r} is not one rnnlm writes")
            return WordTokenizer(vocab, start, pattern)
        return CharTokenizer(vocab, start)


class CharTokenizer(Tokenizer):
    """Every Unicode code point is a token, so any script works and decoding is exact."""

    kind = "char"

    def __init__(self, vocab: list[str], start: str = "\n\n"):
        super().__init__(vocab, start)
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
            table = np.zeros(UNICODE_SIZE, dtype=self.dtype)
            table[[ord(c) for c in self.vocab[1:]]] = np.arange(1, len(self.vocab))
            self._table = table  # complete, or not at all
        for piece in pieces:
            for start in range(0, len(piece), _CHUNK):
                yield self._table[_code_points(piece[start : start + _CHUNK])]


class WordTokenizer(Tokenizer):
    """Words and punctuation marks with the space before them, and the other whitespace:
    decoding reproduces the text. ``pattern`` is the regular expression that splits it (kept
    in the state, so checkpoints with the older split go on encoding as they were trained)."""

    kind = "word"

    def __init__(self, vocab: list[str], start: str = "\n\n", pattern: str = WORD_PATTERN):
        super().__init__(vocab, start)
        self.pattern = pattern
        self._regex = re.compile(pattern)

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> WordTokenizer:
        """``max_vocab=None`` keeps the ``DEFAULT_MAX_VOCAB`` most frequent words."""
        counts: Counter[str] = Counter()
        regex = re.compile(WORD_PATTERN)
        for words in _words(pieces, regex):
            counts.update(words)
        return cls([UNK, *_ranked(counts.items(), DEFAULT_MAX_VOCAB if max_vocab is None else max_vocab, min_freq)])

    def split(self, text: str) -> list[str]:
        return self._regex.findall(text)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        get = self.index.get
        for words in _words(pieces, self._regex):
            yield np.fromiter((get(w, 0) for w in words), dtype=self.dtype, count=len(words))

    def encode_counted(self, pieces: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        get = self.index.get
        for words in _words(pieces, self._regex):
            ids = np.fromiter((get(w, 0) for w in words), dtype=self.dtype, count=len(words))
            yield ids, np.array([len(w) for w in words if w not in self.index], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pattern": self.pattern}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "pattern": self.pattern}


def _words(pieces: Iterable[str], regex: re.Pattern[str]) -> Iterator[list[str]]:
    """``regex.findall("".join(pieces))`` in lists of at most ~``_WORD_CHUNK`` characters' words:
    the last word of a chunk may go on in the next, so it is carried over (every other match
    ends where it would anyway: its end depends on the character after it, which the chunk
    holds). Small lists: a Python string per word costs ~55 bytes."""
    carry = ""
    for piece in pieces:
        for start in range(0, len(piece), _WORD_CHUNK):
            words = regex.findall(carry + piece[start : start + _WORD_CHUNK])
            carry = words.pop() if words else ""
            if words:
                yield words
    if carry:
        yield [carry]


class BPETokenizer(Tokenizer):
    """Byte-level BPE from the ``tokenizers`` library (GPT-2's pre-tokenization): any text
    encodes with no ``<unk>`` and decodes exactly. Id 0 is a ``<unk>`` that never occurs (the
    other tokenizers' convention; text that reads ``<unk>`` is encoded as text); ids 1-256 are
    the bytes, the rest learned merges. The whole state is the library's JSON string, plain
    data in a checkpoint."""

    kind = "bpe"
    DEFAULT_SIZE = 1024

    def __init__(self, model_json: str, start: str = "\n\n"):
        from tokenizers import Tokenizer as HFTokenizer

        self.model_json = model_json
        try:
            self._hf = HFTokenizer.from_str(model_json)
        except Exception as err:  # the library's own error type, its message names the JSON's fault
            raise ValueError(f"the BPE tokenizer's model_json does not load ({str(err).splitlines()[0][:120]})") from None
        self._hf.encode_special_tokens = True  # text that reads "<unk>" is text: its bytes, not id 0
        byte_of = {char: byte for byte, char in enumerate(_byte_level_chars())}
        size = self._hf.get_vocab_size()
        tokens = [self._hf.id_to_token(i) for i in range(size)]
        if not BPE_MIN_VOCAB <= size <= VOCAB or tokens[0] != UNK:
            raise ValueError(f"the BPE tokenizer has {size} tokens, id 0 {tokens[0]!r}: not {UNK!r} then at least the 256 bytes")
        bad = next((i for i, t in enumerate(tokens[1:], 1) if not t or any(c not in byte_of for c in t)), None)
        if bad is not None:
            raise ValueError(f"token {bad} of the BPE tokenizer is {tokens[bad]!r}, not byte-level text")
        self.token_bytes = [b"", *(bytes(byte_of[c] for c in t) for t in tokens[1:])]
        super().__init__([UNK, *(t.decode("utf-8", "replace") for t in self.token_bytes[1:])], start)

    @classmethod
    def fit_stream(cls, pieces: Iterable[str], max_vocab: int | None = None, min_freq: int = 1) -> BPETokenizer:
        """Learn ``max_vocab`` tokens (``DEFAULT_SIZE`` when ``None``; at least the 257 of
        ``<unk>`` and the bytes) from the text, streamed to the library's trainer."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        size = max_vocab or cls.DEFAULT_SIZE
        check_value("data.vocab_size", size)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.encode_special_tokens = True  # "<unk>" in the text is learned from as text
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=max(min_freq, 1), special_tokens=[UNK],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(_pretoken_chunks(pieces), trainer=trainer)
        return cls(hf.to_str())

    def split(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def unknown(self, text: str) -> list[str]:
        return []  # every byte is in the vocabulary

    def characters(self) -> frozenset[str] | None:
        return None

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes[int(i)] for i in ids).decode("utf-8", "replace")

    def piece(self, token: int, pending: bytes = b"") -> tuple[str, bytes]:
        decoder = _UTF8("replace")  # a character may span tokens
        decoder.setstate((pending, 0))
        text = decoder.decode(self.token_bytes[token])
        return text, decoder.getstate()[0]

    def streamer(self) -> Callable[[int], str]:
        decoder = _UTF8("replace")
        return lambda token: decoder.decode(self.token_bytes[token])

    def char_lengths(self) -> np.ndarray:
        """A token's characters are its bytes that start one (not UTF-8 continuation bytes):
        summed over a text's tokens, exactly its characters."""
        return np.array([sum((b & 0xC0) != 0x80 for b in t) for t in self.token_bytes], dtype=np.float64)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """Encoded a chunk at a time (see :func:`_pretoken_chunks`): the ids equal those of
        the whole text at once."""
        group: list[str] = []
        for chunk in _pretoken_chunks(pieces):
            group.append(chunk)
            if len(group) == _BPE_BATCH:
                yield from self._encoded(group)
                group = []
        yield from self._encoded(group)

    def _encoded(self, chunks: list[str]) -> Iterator[np.ndarray]:
        """The library encodes a batch on all cores."""
        for encoding in self._hf.encode_batch(chunks) if chunks else ():
            yield np.asarray(encoding.ids, dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_json": self.model_json, "start": self.start}

    def identity(self) -> dict[str, Any]:
        # Parsed, not the JSON text: the same merges may be written with other spacing or order of keys.
        merges = json.loads(self.model_json).get("model", {}).get("merges", [])
        return {"kind": self.kind, "tokens": self.token_bytes,
                "merges": [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]}


_BPE_CHUNK = 1 << 20  # characters encoded at a time
_BPE_BATCH = 8  # chunks handed to the library at once (it encodes them in parallel)
_BPE_MAX_CHUNK = 1 << 24  # a text with no safe cut is cut here anyway (a newline-free corpus)
_SAFE_CUT = re.compile(r"\S\n(?=\S)")


def _pretoken_chunks(pieces: Iterable[str]) -> Iterator[str]:
    """``"".join(pieces)`` in chunks of at least ``_BPE_CHUNK`` characters, each cut just after
    the first newline past that with text on both sides: GPT-2's pre-tokenizer never joins
    across one, so each chunk pre-tokenizes as it would within the whole text (a text with no
    such newline is cut at ``_BPE_MAX_CHUNK``)."""
    buffer, start = "", 0
    for piece in pieces:
        buffer = buffer[start:] + piece
        start = 0
        while len(buffer) - start > _BPE_CHUNK:
            match = _SAFE_CUT.search(buffer, start + _BPE_CHUNK - 2)
            if match is None and len(buffer) - start < _BPE_MAX_CHUNK:
                break
            cut = match.end() if match else start + _BPE_MAX_CHUNK
            yield buffer[start:cut]
            start = cut
    if len(buffer) > start:
        yield buffer[start:]


def _byte_level_chars() -> list[str]:
    """The printable stand-in for each byte 0-255 that byte-level BPE writes (GPT-2's table)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in keep:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
