"""Prepare once, map everywhere: a corpus encoded into a token file in a cache dir.

Preparing counts the corpus's characters (from the bytes of UTF-8 files), then streams it
twice, a chunk at a time, so memory is bounded by the chunk and the vocabulary, never by the
corpus: it fits the tokenizer on the first ``splits[0]`` of the characters (the train split),
then encodes everything into ``tokens.bin`` (the ids in the smallest integer type, as
nanoGPT's ``prepare.py`` writes ``train.bin``). A run then only maps that file
(``numpy.memmap``): every run and every DDP rank shares the page cache's one copy.

The cache entry's name is a hash of everything that changes the tokens (each file's path,
size and modification time; the glob, separator, encoding errors; the tokenizer and its
settings; the train fraction). It is written under a temporary name and renamed when
complete, so a prepare killed midway leaves nothing a later run takes for complete, and two
runs preparing the same corpus at once both end with the same files. Each time an entry is
mapped its files are checked against each other (:func:`load`); a damaged one is prepared again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from rnnlm.data import corpus as _corpus
from rnnlm.data import tokenizers as _tokenizers
from rnnlm.data.corpus import (
    CharCutter,
    Source,
    StreamFacts,
    corpus_layout,
    count_chars,
    empty_corpus,
    file_bytes,
    stream_corpus,
)
from rnnlm.data.tokenizers import TOKENIZERS, Tokenizer
from rnnlm.utils.errors import ConfigError, CorpusError
from rnnlm.utils.files import disk_error, fsync_dir

log = logging.getLogger(__name__)

FORMAT = 4  # of the files below; part of the cache key (4: the characters each <unk> replaced)
BLOCK = 1 << 20  # <unk> is counted per block of this many tokens, so any region's count is quick
TOKENS, META, BLOCKS = "tokens.bin", "meta.json", "blocks.npy"  # blocks: [<unk> count, largest id] per block
UNK_CHARS = "unk_chars.npy"  # the characters of the text each <unk> replaced, in order
PROGRESS_MIN_BYTES = 32 << 20  # smaller corpora prepare in about a second: no progress bar
# The code that turns text into tokens: a change to it prepares anew.
CODE_VERSION = hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in (_corpus, _tokenizers))).hexdigest()[:12]


@dataclass(frozen=True)
class CorpusSettings:
    """Everything that decides the tokens of a corpus."""

    path: str | None
    glob: str
    separator: str
    encoding_errors: str
    tokenizer: str
    max_vocab: int | None
    min_freq: int
    train_fraction: float
    vocab_size: int | None = None  # the BPE vocabulary to learn (tokenizer=bpe)
    val_fraction: float = 0.05  # the characters after the train split that validate
    val_path: str | None = None  # split files: the validation text (path: the train text)
    test_path: str | None = None  # and the test text, if any


@dataclass
class PreparedCorpus:
    tokenizer: Tokenizer
    ids: np.ndarray  # a read-only map of tokens.bin, or an array (no cache dir)
    facts: dict[str, int]
    unk_blocks: np.ndarray
    directory: Path | None
    reused: bool
    # Where the val and test splits start in ``ids``: each split is encoded on its own from
    # the same characters whatever the tokenizer, so char, word and BPE models score one text.
    split_starts: tuple[int, int]
    unk_chars: np.ndarray  # the characters each <unk> of ``ids`` replaced (int64, in order)
    split_files: bool = False  # the splits came as files (else cut from one text by data.splits)

    def unknown_in(self, start: int, stop: int) -> int:
        """``<unk>`` tokens among ``ids[start:stop]``: whole blocks from the counts, the ends counted."""
        first, last = -(-start // BLOCK), stop // BLOCK
        if first >= last:
            return int(np.count_nonzero(self.ids[start:stop] == 0))
        return (int(self.unk_blocks[first:last].sum()) + int(np.count_nonzero(self.ids[start : first * BLOCK] == 0))
                + int(np.count_nonzero(self.ids[last * BLOCK : stop] == 0)))

    def unknown_chars(self, start: int, stop: int) -> UnknownChars:
        """Where the ``<unk>`` of ``ids[start:stop]`` are and the characters each replaced."""
        positions = np.flatnonzero(self.ids[start:stop] == 0)
        first = self.unknown_in(0, start)
        return UnknownChars(positions, self.unk_chars[first : first + len(positions)])


class UnknownChars:
    """The text each ``<unk>`` of a region replaced, by position: bits per character count the
    text as written, so an ``<unk>`` adds the characters it stands for there."""

    def __init__(self, positions: np.ndarray, chars: np.ndarray):
        self.positions = positions  # sorted, within the region
        self.cumulative = np.concatenate([[0.0], np.cumsum(chars, dtype=np.float64)])

    def within(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """The characters of the ``<unk>`` in each range ``[starts[i], stops[i])``."""
        return self.cumulative[np.searchsorted(self.positions, stops)] - self.cumulative[np.searchsorted(self.positions, starts)]


def layout_of(settings: CorpusSettings) -> dict[str, list[Source]]:
    """The corpus's documents: ``{"all": ...}`` cut by ``data.splits``, or split files."""
    return corpus_layout(settings.path, settings.glob, settings.val_path, settings.test_path)


def _identity(layout: dict[str, list[Source]]) -> list[Any]:
    return [[part, [s.identity() for s in sources]] for part, sources in layout.items()]


def cache_name(settings: CorpusSettings, layout: dict[str, list[Source]]) -> str:
    """``<corpus>-<tokenizer>-<hash>``: readable, and new whenever the tokens would differ."""
    root = str(Path(settings.path).expanduser().resolve()) if settings.path else None  # a symlink: the same entry
    identity = {"format": FORMAT, "code": CODE_VERSION, "unicode": unicodedata.unidata_version,
                "settings": {**asdict(settings), "path": root}, "sources": _identity(layout)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    stem = Path(root).name if root else "shakespeare"
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:40] or "corpus"
    return f"{stem}-{settings.tokenizer}-{digest}"


def prepare(settings: CorpusSettings, cache_dir: str | Path | None) -> PreparedCorpus:
    """The corpus's tokens: mapped from the cache when prepared before, else prepared now
    (into ``cache_dir``; in memory when it is ``None``).

    One process prepares an entry at a time: the others (a second run, the other ranks of an
    ``srun``/``torchrun`` job) wait on its lock file and then map what it wrote."""
    started = time.perf_counter()
    layout = layout_of(settings)
    if cache_dir is None:
        return _encode(settings, layout, None)
    root = Path(cache_dir).expanduser()
    final = root / cache_name(settings, layout)
    found = load(final)
    if isinstance(found, PreparedCorpus):
        return found
    lock = FileLock(root / f"{final.name}.lock")
    try:
        root.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("corpus: waiting for another process preparing %s", final)
            lock.acquire()
    except OSError as err:
        raise CorpusError(f"data.cache_dir={root} cannot be written ({err.strerror}); pass data.cache_dir=<a writable dir>") from None
    try:  # one process prepares an entry; the others waited above and map what it wrote
        found = load(final)
        if isinstance(found, PreparedCorpus):  # prepared while this process waited
            return found
        if final.exists():  # an entry that does not check out (a copy cut short, a disk fault, an edit): prepare anew
            log.warning("corpus: %s is damaged (%s); preparing it again", final, found)
            shutil.rmtree(final, ignore_errors=True)
        for stale in root.glob(f"{final.name}.partial-*"):  # this process holds the lock: nobody writes these
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by a prepare that did not finish", stale)
        partial = root / f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}"
        try:
            partial.mkdir()
            _encode(settings, layout, partial)
            os.rename(partial, final)
            fsync_dir(root)
        except OSError as err:
            raise disk_error(None, err, directory=root, elsewhere="data.cache_dir") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone after the rename, or ours to drop
        log.info("corpus: prepared %s in %.1f s", final, time.perf_counter() - started)
    finally:
        lock.release()
    prepared = load(final)
    if not isinstance(prepared, PreparedCorpus):  # what this process just wrote reads back wrong: the disk
        raise CorpusError(f"the corpus cache entry {final} reads back damaged ({prepared}) just after it was written; "
                          "check the disk, or pass data.cache_dir=<another disk>")
    prepared.reused = False
    return prepared


def load(directory: Path) -> PreparedCorpus | str:
    """Map a cache entry, or say what is wrong with it (missing, cut short, damaged). Its files
    are untrusted: meta.json must agree with the files, the splits be in order, every id in
    [0, vocabulary size), and each block's largest id and ``<unk>`` count as recorded when it
    was prepared (one pass over the map, a fraction of a second per GB)."""
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        blocks = np.load(directory / BLOCKS, allow_pickle=False)
        unk_chars = np.load(directory / UNK_CHARS, allow_pickle=False)
        size = (directory / TOKENS).stat().st_size
    except FileNotFoundError as err:
        return f"{Path(err.filename).name} is missing"
    except (OSError, ValueError, EOFError) as err:
        return f"a file does not read ({type(err).__name__}: {str(err)[:80]})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"{META} is not of format {FORMAT}"
    try:
        tokenizer = Tokenizer.from_dict(meta.get("tokenizer"))
    except ValueError as err:
        return f"its tokenizer: {err}"
    tokens, starts, facts = meta.get("tokens"), meta.get("split_starts"), meta.get("facts")
    dtype = tokenizer.dtype
    if not isinstance(tokens, int) or tokens < 0 or meta.get("dtype") != dtype.name or size != tokens * dtype.itemsize:
        return f"{TOKENS} holds {size} bytes, not {meta.get('tokens')!r} ids of {meta.get('dtype')!r} for a vocabulary of {len(tokenizer)}"
    if not (isinstance(starts, list) and len(starts) == 2 and all(isinstance(i, int) for i in starts)
            and 0 <= starts[0] <= starts[1] <= tokens):
        return f"its split_starts {str(starts)[:40]} are not two token positions in order"
    if not isinstance(facts, dict) or not all(isinstance(facts.get(k), int) for k in ("documents", "replaced_bytes", "chars")):
        return "its facts are not counts"
    if blocks.dtype != np.int64 or blocks.shape != (tokens // BLOCK + 1, 2) or not ((blocks[:, 0] >= 0) & (blocks[:, 0] <= BLOCK)).all():
        return f"{BLOCKS} does not describe {tokens} ids"
    if unk_chars.dtype != np.int64 or unk_chars.shape != (int(blocks[:, 0].sum()),) or (unk_chars < 1).any():
        return f"{UNK_CHARS} does not give a length for each of the {int(blocks[:, 0].sum())} <unk>"
    # Copy-on-write map: reading costs page cache only, and torch gets a writable array.
    ids = np.memmap(directory / TOKENS, dtype=dtype, mode="c", shape=(tokens,)) if tokens else np.zeros(0, dtype)
    largest, smallest, zeros = block_stats(ids)
    if (not np.array_equal(largest, blocks[:, 1]) or not np.array_equal(zeros, blocks[:, 0]) or (smallest < 0).any()
            or (tokens and int(blocks[:, 1].max()) >= len(tokenizer))):
        return f"{TOKENS} holds ids other than those prepared (a block's largest id or <unk> count differs, or an id is "\
               f"negative or at least {len(tokenizer)}, the vocabulary size)"
    return PreparedCorpus(tokenizer, ids, facts, blocks[:, 0], directory, reused=True, split_starts=(starts[0], starts[1]),
                          unk_chars=unk_chars, split_files=meta.get("split_files") is True)


def block_stats(ids: np.ndarray, rows: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each block of ``BLOCK`` ids: its largest and smallest id and its ``<unk>`` (0) count (an
    empty last block: -1, 0, 0), read ``rows`` blocks at a time so the temporaries stay small."""
    count = len(ids) // BLOCK + 1
    largest, smallest, zeros = np.full(count, -1, np.int64), np.zeros(count, np.int64), np.zeros(count, np.int64)
    for first in range(0, count, rows):
        part = ids[first * BLOCK : (first + rows) * BLOCK]
        for i in range(0, len(part), BLOCK):
            block = part[i : i + BLOCK]
            largest[first + i // BLOCK], smallest[first + i // BLOCK] = block.max(), block.min()
            zeros[first + i // BLOCK] = np.count_nonzero(block == 0)
    return largest, smallest, zeros


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _progress(sources: list[Source], label: str, facts: StreamFacts, pieces: Iterable[str]) -> Iterator[str]:
    """Pass ``pieces`` through, with a progress bar of the bytes read (MB/s, ETA) for large corpora."""
    total = file_bytes(sources)
    if total < PROGRESS_MIN_BYTES:
        yield from pieces
        return
    from tqdm import tqdm

    before = facts.bytes_read  # what other splits read into the same facts
    with tqdm(total=total, desc=f"prepare: {label}", unit="B", unit_scale=True, mininterval=1.0, leave=False) as bar:
        for piece in pieces:
            bar.update(facts.bytes_read - before - bar.n)
            yield piece
        bar.update(total - bar.n)


def _any_text(sources: list[Source], settings: CorpusSettings) -> bool:
    """Whether the corpus holds a character besides whitespace (read only when the train split has none)."""
    facts = StreamFacts()
    return any(facts.nonblank for _ in stream_corpus(sources, settings.separator, settings.encoding_errors, facts))


def _split_texts(settings: CorpusSettings, layout: dict[str, list[Source]], total_chars: int,
                 facts: StreamFacts, label: str) -> list[Iterator[str]]:
    """The train, val and test text, three streams of pieces to read in that order: each split
    file on its own, or one text cut at the characters ``data.splits`` puts the bounds at."""
    def read(sources: list[Source]) -> Iterator[str]:
        return _progress(sources, label, facts, stream_corpus(sources, settings.separator, settings.encoding_errors, facts))

    if "all" not in layout:
        return [read(layout[split]) for split in ("train", "val", "test")]
    bounds = (int(total_chars * settings.train_fraction), int(total_chars * (settings.train_fraction + settings.val_fraction)))
    cutter = CharCutter(read(layout["all"]))
    return [cutter.take(bounds[0]), cutter.take(bounds[1] - bounds[0]), cutter.take(None)]


def _encode(settings: CorpusSettings, layout: dict[str, list[Source]], directory: Path | None) -> PreparedCorpus | None:
    """Count the characters, fit on the train split, encode into memory (returned) or ``directory``."""
    sources = [source for part in layout.values() for source in part]
    total_chars = sum(count_chars(part, settings.separator, settings.encoding_errors) for part in layout.values() if part)
    fitting = StreamFacts()
    train_text = _split_texts(settings, layout, total_chars, fitting, "1/2 vocabulary")[0]
    size = settings.vocab_size if settings.tokenizer == "bpe" else settings.max_vocab
    tokenizer = TOKENIZERS[settings.tokenizer].fit_stream(train_text, size, settings.min_freq)
    tokenizer.start = settings.separator
    if "all" not in layout:  # split files: each must hold text
        for split in ("train", "val", "test"):
            if layout[split] and not _any_text(layout[split], settings):
                raise CorpusError(f"the {split} split ({', '.join(s.name for s in layout[split])}) is empty (or only "
                                  f"whitespace); pass a file with text as data.{'path' if split == 'train' else split + '_path'}")
    elif not fitting.nonblank and not _any_text(sources, settings):
        raise empty_corpus(settings.path)
    if len(tokenizer) < 2:
        raise ConfigError(
            f"the vocabulary holds only <unk> (data.max_vocab={settings.max_vocab}, data.min_freq={settings.min_freq}): "
            "no token of the train split is kept; set data.max_vocab >= 2 (or null) and a data.min_freq "
            "that some tokens reach"
        )

    encoding = StreamFacts()
    unk_blocks: Counter[int] = Counter()  # <unk> tokens per block of BLOCK ids, where there are any
    unk_chars: list[np.ndarray] = []  # the characters each <unk> replaced
    largest: dict[int, int] = {}  # each block's largest id, from the ids as encoded (not as read back)
    count, parts, split_starts = 0, [], []
    segments = _split_texts(settings, layout, total_chars, encoding, "2/2 encoding")
    with (directory / TOKENS).open("wb") if directory is not None else contextlib.nullcontext() as out:
        for index, segment in enumerate(segments):
            if index:
                split_starts.append(count)  # where the val (then test) split starts
            for ids, replaced in tokenizer.encode_counted(segment):
                unk_chars.append(replaced)
                hit, hits = np.unique((np.flatnonzero(ids == 0) + count) // BLOCK, return_counts=True)
                unk_blocks.update(dict(zip(hit.tolist(), hits.tolist())))
                start = 0
                while start < len(ids):  # the chunk's piece of each block it spans
                    block = (count + start) // BLOCK
                    end = min(len(ids), (block + 1) * BLOCK - count)
                    largest[block] = max(largest.get(block, -1), int(ids[start:end].max()))
                    start = end
                count += len(ids)
                if out is not None:
                    out.write(memoryview(np.ascontiguousarray(ids)).cast("B"))  # raises on a full disk, unlike tofile
                else:
                    parts.append(ids)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    unk = np.zeros(count // BLOCK + 1, dtype=np.int64)
    unk[list(unk_blocks)] = list(unk_blocks.values())
    if encoding.chars != total_chars:  # a prepare only goes wrong here if the files changed meanwhile
        raise CorpusError(f"the corpus changed while it was prepared ({total_chars} characters counted, "
                          f"{encoding.chars} encoded); prepare again once it no longer changes")
    facts = {"documents": encoding.documents, "replaced_bytes": encoding.replaced_bytes, "chars": encoding.chars}
    if directory is None:
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=tokenizer.dtype)
        return PreparedCorpus(tokenizer, ids, facts, unk, None, reused=False, split_starts=tuple(split_starts),
                              unk_chars=np.concatenate([np.zeros(0, np.int64), *unk_chars]), split_files="all" not in layout)
    maxima = np.full(count // BLOCK + 1, -1, dtype=np.int64)
    maxima[list(largest)] = list(largest.values())
    buffer = io.BytesIO()
    np.save(buffer, np.stack([unk, maxima], axis=1))
    _write_synced(directory / BLOCKS, buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, np.concatenate([np.zeros(0, np.int64), *unk_chars]))
    _write_synced(directory / UNK_CHARS, buffer.getvalue())
    meta: dict[str, Any] = {"format": FORMAT, "tokenizer": tokenizer.to_dict(), "dtype": tokenizer.dtype.name,
                            "tokens": count, "split_starts": split_starts, "facts": facts, "settings": asdict(settings),
                            "sources": _identity(layout), "split_files": "all" not in layout}
    _write_synced(directory / META, json.dumps(meta).encode())  # last: with the sizes, it marks the entry complete
    fsync_dir(directory)
    return None
