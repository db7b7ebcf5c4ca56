from rnnlm.data.corpus import read_corpus
from rnnlm.data.datamodule import CorpusDataModule, WindowDataset
from rnnlm.data.tokenizers import CharTokenizer, Tokenizer, WordTokenizer

__all__ = ["CharTokenizer", "CorpusDataModule", "Tokenizer", "WindowDataset", "WordTokenizer", "read_corpus"]
