"""Prepare once, map everywhere: the prepared tokens, the cache, and a prepare killed or doubled."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnnlm.data import corpus as corpus_module
from rnnlm.data import prepare as prepare_module
from rnnlm.data.corpus import read_corpus
from rnnlm.data.datamodule import CorpusDataModule
from rnnlm.data.prepare import META, CorpusSettings, load, prepare
from rnnlm.data.tokenizers import TOKENIZERS
from rnnlm.utils.errors import CorpusError
from rnnlm.utils.files import DiskError
from tests.processes import ROOT, run, started

TEXTS = {
    "a/one.txt": "\n\nFirst document, with a leading blank line.\nAnd an ending.\n\n\n",
    "a/two.txt": "Zweite Datei: Grüße, naïve café — «quotes» and 循环神经网络.\n" * 40,
    "b/empty.txt": "",
    "b/newlines.txt": "\n\n\n",
    "c/three.txt": "ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 60 + "   trailing spaces   ",
}


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def settings(path: Path, tokenizer: str = "char", train_fraction: float = 0.9, **kwargs) -> CorpusSettings:
    values = {"glob": "*.txt", "separator": "\n\n", "encoding_errors": "strict", "max_vocab": None, "min_freq": 1} | kwargs
    return CorpusSettings(str(path), tokenizer=tokenizer, train_fraction=train_fraction, **values)


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
def test_prepared_tokens_equal_the_in_memory_encoding(corpus_dir, tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(corpus_module, "READ_BYTES", 7)  # pieces that cut words and UTF-8 sequences
    text, _ = read_corpus(corpus_dir)
    assert text == "\n\n".join(TEXTS[name].strip("\n") for name in sorted(TEXTS))  # the documents, joined
    expected_tokenizer = TOKENIZERS[tokenizer].fit(text[: int(len(text) * 0.9)])
    cuts = [0, int(len(text) * 0.9), int(len(text) * 0.95), len(text)]  # each split encoded on its own
    parts = [expected_tokenizer.encode(text[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    expected = np.concatenate(parts)
    prepared = prepare(settings(corpus_dir, tokenizer), tmp_path / "cache")
    assert prepared.tokenizer.vocab == expected_tokenizer.vocab
    assert prepared.ids.dtype == expected.dtype and np.array_equal(prepared.ids, expected)
    assert prepared.split_starts == (len(parts[0]), len(parts[0]) + len(parts[1]))
    assert load(prepared.directory).split_starts == prepared.split_starts
    assert prepared.facts == {"documents": 5, "replaced_bytes": 0, "chars": len(text)}
    in_memory = prepare(settings(corpus_dir, tokenizer), None)
    assert np.array_equal(in_memory.ids, expected) and in_memory.directory is None


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_every_tokenizer_validates_on_the_same_characters(corpus_dir, tmp_path, tokenizer):
    """Splits are cut by characters, so a word or BPE model scores the very text a character model does."""
    text, _ = read_corpus(corpus_dir)
    options = {"vocab_size": 300} if tokenizer == "bpe" else {}
    dm = CorpusDataModule(path=str(corpus_dir), seq_len=4, batch_size=1, splits=[0.7, 0.2, 0.1], tokenizer=tokenizer,
                          cache_dir=str(tmp_path / "cache"), **options)
    dm.setup()
    n = len(text)
    cuts = [0, int(n * 0.7), int(n * (0.7 + 0.2)), n]  # as prepare computes them
    for split, start, stop in zip(("train", "val", "test"), cuts[:-1], cuts[1:]):
        assert np.array_equal(dm.tokens[split].numpy(), dm.tokenizer.encode(text[start:stop])), split
    assert dm.tokenizer.decode(dm.tokens["train"].tolist()) == text[: int(n * 0.7)]  # no <unk> where it was fitted


def test_the_data_module_maps_the_prepared_splits(corpus_dir, tmp_path):
    text, _ = read_corpus(corpus_dir)
    ids = TOKENIZERS["char"].fit(text[: int(len(text) * 0.8)]).encode(text)
    dm = CorpusDataModule(path=str(corpus_dir), seq_len=8, batch_size=2, splits=[0.8, 0.1, 0.1], calibration=0.05,
                          cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    n = len(ids)
    bounds = {"calibration": (0, int(n * 0.05)), "train": (int(n * 0.05), int(n * 0.8)),
              "val": (int(n * 0.8), int(n * 0.9)), "test": (int(n * 0.9), n)}
    for split, (start, stop) in bounds.items():
        assert np.array_equal(dm.tokens[split].numpy(), ids[start:stop]), split
        assert dm.stats.get(f"{split}_unk", 0) == int((ids[start:stop] == 0).sum())
    assert isinstance(dm.cache_entry, Path) and (dm.cache_entry / META).is_file()
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == (2, 8) and np.array_equal(inputs[:, 1:].numpy(), targets[:, :-1].numpy())


def test_the_cache_is_reused_until_what_makes_the_tokens_changes(corpus_dir, tmp_path):
    cache = tmp_path / "cache"
    first = prepare(settings(corpus_dir), cache)
    assert not first.reused and prepare(settings(corpus_dir), cache).reused
    entries = {first.directory}
    for changed in (settings(corpus_dir, "word"), settings(corpus_dir, train_fraction=0.8),
                    settings(corpus_dir, separator="\n"), settings(corpus_dir, max_vocab=10)):
        prepared = prepare(changed, cache)
        assert not prepared.reused and prepared.directory not in entries
        entries.add(prepared.directory)
    file = corpus_dir / "a" / "one.txt"
    file.write_text("Changed text, changed size.\n", encoding="utf-8")
    changed = prepare(settings(corpus_dir), cache)
    assert not changed.reused and changed.directory not in entries
    assert changed.facts["chars"] != first.facts["chars"]
    stat = file.stat()  # the same size, a later modification time
    file.write_text("Changed text, chanGed size.\n", encoding="utf-8")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    edited = prepare(settings(corpus_dir), cache)
    assert not edited.reused
    stat = file.stat()  # the same size and modification time, as cp -p or touch -r leave it
    file.write_text("Changed text, chanGed sizE.\n", encoding="utf-8")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    restamped = prepare(settings(corpus_dir), cache)
    assert not restamped.reused and restamped.directory != edited.directory
    assert restamped.tokenizer.decode(restamped.ids[:40]).startswith("Changed text, chanGed sizE.")
    assert not list(cache.glob("*.partial-*"))


def test_a_symlinked_corpus_maps_the_same_entry(corpus_dir, tmp_path):
    cache = tmp_path / "cache"
    first = prepare(settings(corpus_dir), cache)
    link = tmp_path / "link"
    link.symlink_to(corpus_dir, target_is_directory=True)
    again = prepare(settings(link), cache)
    assert again.reused and again.directory == first.directory


PREPARE = """
import sys
from pathlib import Path
from rnnlm.data import corpus
from rnnlm.data.prepare import CorpusSettings, prepare
corpus.READ_BYTES = int(sys.argv[3])
settings = CorpusSettings(sys.argv[1], "*.txt", "\\n\\n", "strict", "char", None, 1, 0.9)
prepared = prepare(settings, sys.argv[2])
print(prepared.directory.name, len(prepared.ids))
"""


def big_corpus(path: Path, megabytes: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    line = "ROMEO: But, soft! what light through yonder window breaks? Grüße 循环\n"
    (path / "big.txt").write_text(line * (megabytes * 1_000_000 // len(line.encode())), encoding="utf-8")
    return path


def test_a_prepare_killed_midway_is_not_taken_for_complete(tmp_path):
    corpus, cache = big_corpus(tmp_path / "corpus", 6), tmp_path / "cache"
    with started([sys.executable, "-c", PREPARE, str(corpus), str(cache), "512"], cwd=tmp_path) as proc:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.partial-*/tokens.bin")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the prepare ended before it could be killed"
        proc.kill()
        proc.wait(timeout=30)
    assert list(cache.glob("*.partial-*")) and not [p for p in cache.iterdir() if p.is_dir() and ".partial-" not in p.name]
    prepared = prepare(settings(corpus), cache)  # prepares anew, and clears what the killed one left
    assert not prepared.reused and len(prepared.ids) == prepared.facts["chars"]
    assert not list(cache.glob("*.partial-*"))


def test_two_prepares_of_one_corpus_at_once_both_succeed_with_the_same_files(tmp_path):
    corpus, cache = big_corpus(tmp_path / "corpus", 1), tmp_path / "cache"
    args = [sys.executable, "-c", PREPARE, str(corpus), str(cache), str(1 << 14)]
    with started(args, cwd=tmp_path, stdout=-1, stderr=-1) as one, started(args, cwd=tmp_path, stdout=-1, stderr=-1) as two:
        outputs = [proc.communicate(timeout=300) for proc in (one, two)]
        codes = [one.returncode, two.returncode]
    assert codes == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert json.loads((entry / META).read_text())["tokens"] == int(outputs[0][0].split()[1])


MEMORY = """
import sys
from rnnlm.data import corpus
from rnnlm.data.prepare import CorpusSettings, prepare

def status_mb(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":")) / 1024

corpus.READ_BYTES = 1 << 17
before = status_mb("VmRSS")
prepare(CorpusSettings(sys.argv[1], "*.txt", "\\n\\n", "strict", sys.argv[3], None, 1, 0.9), sys.argv[2])
print(status_mb("VmHWM") - before)
"""


@pytest.mark.parametrize("tokenizer", ["char", "word"])
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS/VmHWM from /proc")
def test_preparing_holds_a_chunk_not_the_corpus(tmp_path, tokenizer):
    """A 16 MB corpus read 128 kB at a time: its text alone would take 32 MB as a Python
    string (two bytes a character: it holds 循环); preparing grows memory by what the
    vocabulary and one chunk need, the same for a corpus of any size."""
    corpus = big_corpus(tmp_path / "corpus", 16)
    result = run([sys.executable, "-c", MEMORY, str(corpus), str(tmp_path / "cache"), tokenizer], cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mb = float(result.stdout.split()[-1])
    assert growth_mb < 24, growth_mb


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_bytes_that_are_not_utf8_are_refused_or_replaced_as_in_memory(tmp_path, monkeypatch, errors):
    monkeypatch.setattr(corpus_module, "READ_BYTES", 5)
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "ok.txt").write_text("Grüße aus 循环.\n" * 20, encoding="utf-8")
    (root / "bad.txt").write_bytes(b"\xef\xbb\xbfBOM first, then bad \xff\xfe bytes and a \xef\xbf\xbd kept.\n" * 30)
    if errors == "strict":
        with pytest.raises(CorpusError, match=r"bad.txt: not valid UTF-8 at byte offset 23 \(byte 0xff\)"):
            prepare(settings(root, encoding_errors="strict"), tmp_path / "cache")
        assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
        return
    text, facts = read_corpus(root, encoding_errors="replace")
    prepared = prepare(settings(root, encoding_errors="replace"), tmp_path / "cache")
    assert np.array_equal(prepared.ids, TOKENIZERS["char"].fit(text[: int(len(text) * 0.9)]).encode(text))
    assert prepared.facts["replaced_bytes"] == facts["replaced_bytes"] == 60



def test_an_entry_cut_short_is_prepared_again_and_a_full_disk_is_one_error(corpus_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare(settings(corpus_dir), cache)
    expected = np.array(first.ids)
    tokens = first.directory / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-10])  # a copy cut short
    again = prepare(settings(corpus_dir), cache)
    assert not again.reused and np.array_equal(again.ids, expected)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module, "_write_synced", full)
    with pytest.raises(DiskError, match=r"disk full.*free disk space \(or pass data.cache_dir=<another disk>\)"):
        prepare(settings(corpus_dir, "word"), cache)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [first.directory.name]  # nothing partial is left


def edit_meta(change):
    def damage(entry: Path) -> None:
        meta = json.loads((entry / META).read_text())
        change(meta)
        (entry / META).write_text(json.dumps(meta))
    return damage


def changed_id(value):
    """One id (not its block's largest) set to ``value``: an <unk> the entry never had."""
    def damage(entry: Path) -> None:
        meta = json.loads((entry / META).read_text())
        ids = np.memmap(entry / "tokens.bin", dtype=meta["dtype"], mode="r+")
        ids[3] = value
        ids.flush()
    return damage


def set_id(entry: Path) -> None:
    """One id raised to the vocabulary's size (its type holds it)."""
    meta = json.loads((entry / META).read_text())
    ids = np.memmap(entry / "tokens.bin", dtype=meta["dtype"], mode="r+")
    ids[3] = len(meta["tokenizer"]["vocab"])
    ids.flush()


DAMAGE = {  # a cache entry's files are untrusted: each of these is found and the entry prepared again
    "ids overwritten with 0xFF at the same size": lambda e: (e / "tokens.bin").write_bytes(b"\xff" * (e / "tokens.bin").stat().st_size),
    "one id past the vocabulary": set_id,
    "one id turned into <unk>": changed_id(0),
    "the vocabulary shortened": edit_meta(lambda m: m["tokenizer"]["vocab"].pop()),
    "the block counts replaced by text": lambda e: (e / "blocks.npy").write_text("not numpy"),
    "the block counts a pickled object": lambda e: np.save(e / "blocks.npy", np.array([{}], dtype=object), allow_pickle=True),
    "splits out of order": edit_meta(lambda m: m.update(split_starts=[5, 3])),
    "splits past the end": edit_meta(lambda m: m.update(split_starts=[5, 10**9])),
    "meta.json not JSON": lambda e: (e / META).write_text("{not json"),
    "meta.json a list": lambda e: (e / META).write_text("[]"),
    "a damaged tokenizer": edit_meta(lambda m: m["tokenizer"].update(kind="gpt")),
    "the dtype changed": edit_meta(lambda m: m.update(dtype="int64")),
    "facts not counts": edit_meta(lambda m: m.update(facts={"chars": "many"})),
    "tokens.bin removed": lambda e: (e / "tokens.bin").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_entry_is_prepared_again(corpus_dir, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    first = prepare(settings(corpus_dir), cache)
    expected, directory = np.array(first.ids), first.directory
    del first
    DAMAGE[damage](directory)
    with caplog.at_level(logging.WARNING):
        again = prepare(settings(corpus_dir), cache)
    assert not again.reused and np.array_equal(again.ids, expected)
    assert f"corpus: {directory} is damaged (" in caplog.text


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
def test_each_blocks_largest_id_is_recorded_as_encoded_and_verified(corpus_dir, tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(prepare_module, "BLOCK", 7)  # many blocks, ending inside the encoder's chunks
    entry = prepare(settings(corpus_dir, tokenizer), tmp_path / "cache").directory
    blocks = np.load(entry / "blocks.npy")
    ids = np.array(load(entry).ids)
    assert len(blocks) == len(ids) // 7 + 1 > 100
    assert blocks[:-1, 1].tolist() == [int(ids[i : i + 7].max()) for i in range(0, len(ids) // 7 * 7, 7)]
    assert blocks[:, 0].sum() == np.count_nonzero(ids == 0)


def test_a_prepare_waits_for_the_lock_another_process_holds(corpus_dir, tmp_path, caplog):
    """The lock is an flock on ``<entry>.lock``: a process holding it (here a child) makes the
    next prepare wait, then map what it finds or prepare the entry itself."""
    import logging

    cache = tmp_path / "cache"
    cache.mkdir()
    name = prepare_module.cache_name(settings(corpus_dir), prepare_module.layout_of(settings(corpus_dir)))
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(1.5)")
    with started([sys.executable, "-c", code, str(cache / f"{name}.lock")], tmp_path, stdout=subprocess.PIPE) as holder:
        assert holder.stdout.readline().strip() == "held"
        caplog.set_level(logging.INFO, logger="rnnlm.data.prepare")
        prepared = prepare(settings(corpus_dir), cache)
        assert not prepared.reused and prepared.ids.size > 0
        assert "waiting for another process preparing" in caplog.text


def test_a_cache_dir_that_cannot_be_made_is_one_line(corpus_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CorpusError, match=r"data.cache_dir=.*a-file/cache cannot be written \(Not a directory\); pass"):
        prepare(settings(corpus_dir), tmp_path / "a-file" / "cache")


@pytest.mark.slow
def test_sigterm_while_preparing_cleans_up_and_says_so(tmp_path):
    """Outside Lightning's loops SIGTERM would kill the process mid-write; it ends like Ctrl-C."""
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    corpus = tmp_path / "big.txt"
    corpus.write_text(" ".join(rng.choice(words, size=6_000_000)), encoding="utf-8")  # ~35 MB: seconds to encode
    cache = tmp_path / "cache"
    command = [sys.executable, str(ROOT / "train.py"), "prepare_only=true", "data=text", f"data.path={corpus}",
               "data.tokenizer=word", f"data.cache_dir={cache}", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"]
    with started(command, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.partial-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: SIGTERM while preparing the corpus")
    assert not list(cache.glob("*.partial-*")) and not any(p.is_dir() for p in cache.iterdir())


def test_an_empty_separator_prepares_and_reads_back(corpus_dir, tmp_path):
    prepared = prepare(settings(corpus_dir, separator=""), tmp_path / "cache")  # documents run into each other
    assert prepared.tokenizer.start == "" and isinstance(load(prepared.directory), type(prepared))
