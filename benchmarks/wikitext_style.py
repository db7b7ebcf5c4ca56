"""Split files as WikiText ships them, from plain text: ``python -m benchmarks.wikitext_style SRC DST``.

SRC holds ``train.txt``, ``valid.txt`` and ``test.txt``; DST gets the same three files with
one paragraph per line (paragraphs are separated by a blank line), words and marks split by
spaces (``cat's`` becomes ``cat ' s``, where WikiText writes ``cat 's``), a hyphen inside a word
written `` @-@ ``, curly quotes made straight, underscores (italics) as spaces, and every word
seen fewer than ``--min-count`` times in train (3, as WikiText-2) written ``<unk>`` in all three.
pytorch/examples' word_language_model builds its vocabulary from every string of the three
files, so on raw books it has a vocabulary of every spelling; on these files it has
WikiText-2's kind (docs/results.md, "10 MB as WikiText").
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "valid", "test")
WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
HYPHEN_IN_WORD = re.compile(r"(?<=\w)-(?=\w)")
HYPHEN = "\x00"  # stands for an inner hyphen while splitting: not a word character, not a mark of the text
STRAIGHT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "_": " "})


def paragraphs(text: str) -> Iterator[list[str]]:
    """The tokens of each paragraph of ``text``."""
    for paragraph in re.split(r"\n\s*\n", text.translate(STRAIGHT)):
        tokens = WORD_OR_MARK.findall(HYPHEN_IN_WORD.sub(f" {HYPHEN} ", paragraph))
        if tokens:
            yield ["@-@" if t == HYPHEN else t for t in tokens]


def convert(texts: dict[str, str], min_count: int = 3) -> dict[str, str]:
    """``{split: text}`` -> ``{split: WikiText-style text}``; the vocabulary is train's."""
    split = {name: list(paragraphs(text)) for name, text in texts.items()}
    counts = collections.Counter(t for paragraph in split["train"] for t in paragraph)
    known = {t for t, n in counts.items() if n >= min_count}
    return {name: "".join(" " + " ".join(t if t in known else "<unk>" for t in p) + " \n" for p in paragraphs_)
            for name, paragraphs_ in split.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a directory holding train.txt, valid.txt and test.txt")
    parser.add_argument("dst", type=Path, help="where the WikiText-style files go (created)")
    parser.add_argument("--min-count", type=int, default=3, help="train occurrences a word needs to keep its spelling")
    args = parser.parse_args(argv)
    missing = [name for name in SPLITS if not (args.src / f"{name}.txt").is_file()]
    if missing:
        parser.error(f"{args.src} lacks {', '.join(f'{m}.txt' for m in missing)}")
    if not 1 <= args.min_count <= 10**9:
        parser.error("--min-count takes 1 to 1,000,000,000")
    converted = convert({name: (args.src / f"{name}.txt").read_text(encoding="utf-8") for name in SPLITS},
                        args.min_count)
    args.dst.mkdir(parents=True, exist_ok=True)
    for name, text in converted.items():
        (args.dst / f"{name}.txt").write_text(text, encoding="utf-8")
        print(f"{args.dst / f'{name}.txt'}: {len(text):,} characters, {len(text.split()):,} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
