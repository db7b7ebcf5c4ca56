"""Corpora in split files: train/valid/test files (WikiText, Penn Treebank) read as those splits,
the vocabulary from the train file only, each split exactly its file's text."""

from pathlib import Path

import numpy as np
import pytest

from rnnlm.data import CorpusDataModule
from rnnlm.training.train import train
from rnnlm.utils.errors import CorpusError
from tests.conftest import TINY, compose_config

TRAIN = "The king is dead. Long live the king!\n" * 60
VALID = "The queen is here; the king is not.\n" * 12
TEST = "A knight — Zoë — rides to the castle.\n" * 12  # —, Z, ö, ë: not in the train file


def write(directory: Path, names: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in names.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def data_module(tmp_path: Path, **kwargs) -> CorpusDataModule:
    dm = CorpusDataModule(seq_len=16, batch_size=4, cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
def test_a_directory_of_named_files_is_read_as_its_splits(tmp_path, tokenizer):
    # Sorted by name these read test, train, valid: as one text the model would train on the test file.
    root = write(tmp_path / "wikitext", {"wiki.test.tokens": TEST, "wiki.train.tokens": TRAIN, "wiki.valid.tokens": VALID})
    extra = {"vocab_size": 300} if tokenizer == "bpe" else {}
    dm = data_module(tmp_path, path=str(root), glob="*.tokens", tokenizer=tokenizer, **extra)
    for split, text in (("train", TRAIN), ("val", VALID), ("test", TEST)):
        ids, chars = dm.tokenizer.encode_with_chars(text.strip("\n"))
        assert np.array_equal(dm.tokens[split].numpy(), ids), split  # each split is exactly its file
        assert chars.sum() == len(text.strip("\n"))
    assert dm.has_test and dm.split_files
    if tokenizer == "char":  # the vocabulary is the train file's: the test file's new characters are <unk>
        assert "ë" not in dm.tokenizer.vocab and dm.stats["test_unk"] == sum(c not in TRAIN for c in TEST.strip("\n")) > 0
        assert dm.stats["train_unk"] == 0 and dm.stats["val_unk"] == sum(c not in TRAIN for c in VALID.strip("\n"))


def test_split_files_named_by_option_and_a_missing_test(tmp_path):
    root = write(tmp_path / "files", {"a.txt": TRAIN, "b.txt": VALID, "c.txt": TEST})
    dm = data_module(tmp_path, path=str(root / "a.txt"), val_path=str(root / "b.txt"), test_path=str(root / "c.txt"))
    assert [len(dm.tokens[s]) for s in ("train", "val", "test")] == [len(t.strip("\n")) for t in (TRAIN, VALID, TEST)]
    no_test = data_module(tmp_path, path=str(root / "a.txt"), val_path=str(root / "b.txt"))
    assert not no_test.has_test and len(no_test.tokens["test"]) == 0


@pytest.mark.parametrize(("files", "options", "message"), [
    ({"train.txt": TRAIN, "test.txt": TEST}, {}, r"holds split files \(test: test.txt; train: train.txt\); a split-files directory needs"),
    ({"train.txt": TRAIN, "valid.txt": VALID}, {"val_path": "valid.txt"}, r"valid.txt is both in the train text \(data.path\) and the val text"),
    ({"train.txt": TRAIN, "train.md": TRAIN, "valid.txt": VALID}, {}, r"train: train.md, train.txt"),
    ({"train.txt": TRAIN, "valid.txt": "\n\n  \n"}, {}, r"the val split \(.*valid.txt\) is empty \(or only whitespace\); pass a file with text as data.val_path"),
    ({"a.txt": TRAIN}, {"val_path": "missing.txt"}, r"corpus path .*missing.txt does not exist"),
    ({"a.txt": TRAIN}, {"test_path": "a.txt"}, r"split files take the train text in data.path= and the validation text in data.val_path="),
])
def test_a_missing_or_empty_split_is_one_line(tmp_path, files, options, message):
    root = write(tmp_path / "corpus", files)
    path = str(root / "a.txt") if "a.txt" in files else str(root)
    options = {k: str(root / v) for k, v in options.items()}
    with pytest.raises(CorpusError, match=message):
        data_module(tmp_path, path=path, **options)


def test_a_test_file_among_chapters_is_still_one_text(tmp_path):
    root = write(tmp_path / "book", {"chapter1.txt": TRAIN, "test.txt": VALID})  # no train file: not split files
    dm = data_module(tmp_path, path=str(root))
    assert not dm.split_files and sum(len(dm.tokens[s]) for s in ("train", "val", "test")) == len(TRAIN.strip("\n")) + 2 + len(VALID.strip("\n"))


def test_train_on_a_directory_of_split_files_reports_the_test_file(tmp_path):
    root = write(tmp_path / "wikitext", {"wiki.train.tokens": TRAIN * 4, "wiki.valid.tokens": VALID, "wiki.test.tokens": TEST})
    cfg = compose_config("train", [*TINY, "data=wikitext2", f"data.path={root}", "data.seq_len=8", "data.batch_size=8",
                                   "trainer.max_steps=10", "callbacks.sample_text=null"], tmp_path / "run")
    metrics, objects = train(cfg)
    assert objects["datamodule"].tokenizer.kind == "word" and "test/bpc" in metrics and "test/bpc_stateful" in metrics
