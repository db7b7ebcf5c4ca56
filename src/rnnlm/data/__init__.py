from typing import Any

from rnnlm.data.corpus import read_corpus
from rnnlm.data.tokenizers import CharTokenizer, Tokenizer, WordTokenizer

__all__ = ["CharTokenizer", "CorpusDataModule", "Tokenizer", "WindowDataset", "WordTokenizer", "read_corpus"]


def __getattr__(name: str) -> Any:
    """The DataModule on first use: preparing a corpus (``rnnlm.data.prepare``) needs numpy
    only, and importing Lightning takes seconds."""
    if name in ("CorpusDataModule", "WindowDataset"):
        from rnnlm.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
