"""Generated text, token by token, and ``stop=``: a stream ends once the text it has produced
after the prompt contains the stop string, its text cut where the string ends.

Matched on text, not token ids: a token may hold several characters (a word, a BPE merge)
with the string's end among them, or only part of a character (a BPE byte). Each stream
keeps the bytes of a character it has begun and the last characters that could begin a
match, so a step costs the same however long the stream."""

from __future__ import annotations

from collections.abc import Sequence

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.utils.errors import ConfigError

MAX_STOP_CHARS = 1000  # each step searches the stream's last characters for it


def check_stop(tokenizer: Tokenizer, stop: str) -> str:
    """``stop`` if a model with this vocabulary can produce it, else a one-line :class:`ConfigError`."""
    if not isinstance(stop, str):
        raise ConfigError(f"stop={stop!r} must be text (quote it: stop='{stop}')")
    try:
        stop.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(f"stop= is not valid text: a lone UTF-16 surrogate at character {err.start}") from None
    if len(stop) > MAX_STOP_CHARS:
        raise ConfigError(f"stop= has {len(stop):,} characters; it must have at most {MAX_STOP_CHARS:,}")
    alphabet = tokenizer.characters()
    missing = [c for c in dict.fromkeys(stop) if alphabet is not None and c not in alphabet]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20])
        raise ConfigError(f"stop={stop!r} has {len(missing)} character(s) that no token of the checkpoint's vocabulary "
                          f"contains: {shown}; choose a stop string made of text the model was trained on")
    return stop


class TextStreams:
    """The text each of ``streams`` streams adds with each token, ending a stream once its text
    contains ``stop`` (checked with :func:`check_stop`; empty: never): the piece that completes
    the string is cut where it ends, later pieces are empty and :attr:`ended` says so."""

    def __init__(self, tokenizer: Tokenizer, streams: int, stop: str = ""):
        self.tokenizer = tokenizer
        self.stop = stop
        self.pending = [b""] * streams  # bytes of a character the stream has begun
        self.tails = [""] * streams  # its last len(stop) - 1 characters: where a match can begin
        self.ended = [False] * streams

    def __call__(self, tokens: Sequence[int]) -> list[str]:
        """Each stream's text for its next token (``tokens[i]`` for stream ``i``)."""
        pieces = []
        keep = len(self.stop) - 1
        for i, token in enumerate(tokens):
            if self.ended[i]:
                pieces.append("")
                continue
            piece, self.pending[i] = self.tokenizer.piece(int(token), self.pending[i])
            if self.stop:
                text = self.tails[i] + piece
                at = text.find(self.stop)
                if at >= 0:  # no earlier text held it, so it ends in this piece
                    piece = piece[: at + len(self.stop) - len(self.tails[i])]
                    self.ended[i] = True
                else:
                    self.tails[i] = text[-keep:] if keep else ""
            pieces.append(piece)
        return pieces

    def select(self, index: Sequence[int]) -> None:
        """Keep the streams at ``index``, in that order (beam search reorders its beams)."""
        self.pending = [self.pending[i] for i in index]
        self.tails = [self.tails[i] for i in index]
        self.ended = [self.ended[i] for i in index]


def through_stop(text: str, stop: str) -> str:
    """A stream's whole text up to where ``stop`` first ends (all of it if ``stop`` is empty or
    absent): the text the pieces of :class:`TextStreams` join to."""
    at = text.find(stop) if stop else -1
    return text if at < 0 else text[: at + len(stop)]


def text_pieces(tokenizer: Tokenizer, tokens: Sequence[int], stop: str = "") -> list[str]:
    """The text each of one stream's ``tokens`` adds, cut where ``stop`` ends."""
    stream = TextStreams(tokenizer, 1, stop)
    return [stream([token])[0] for token in tokens]
