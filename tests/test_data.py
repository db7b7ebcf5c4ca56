import re

import pytest
import torch

from rnnlm.data import CorpusDataModule
from rnnlm.data.corpus import play_markdown_to_text, shakespeare_plays
from rnnlm.utils.errors import ConfigError, CorpusError


def make_dm(path, **kw):
    kw = {"seq_len": 16, "batch_size": 4, **kw}
    dm = CorpusDataModule(path=str(path), **kw)
    dm.setup("fit")
    return dm


def test_windows_are_shifted_by_one_and_regions_do_not_overlap(corpus_file):
    dm = make_dm(corpus_file)
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    sizes = [len(dm.tokens[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == dm.stats["tokens"]
    # contiguous regions of one tensor: train ends where val begins, val where test begins
    base = dm.tokens["train"]
    assert dm.tokens["val"].data_ptr() == base.data_ptr() + sizes[0] * base.element_size()
    assert dm.tokens["test"].data_ptr() == base.data_ptr() + (sizes[0] + sizes[1]) * base.element_size()
    # windows index into the region, never copy it
    ds = dm.datasets["train"]
    assert ds.tokens.data_ptr() == base.data_ptr()
    assert len(ds) == (sizes[0] - 17) // 16 + 1
    x, y = ds[3]
    assert torch.equal(x, base[48:64].long()) and torch.equal(y, base[49:65].long())


def test_train_batches_are_equal_sized_and_shuffled(corpus_file):
    dm = make_dm(corpus_file, batch_size=7)
    batches = list(dm.train_dataloader())
    assert all(b[0].shape == (7, 16) for b in batches)
    assert len(batches) == len(dm.datasets["train"]) // 7
    first = batches[0][0]
    assert not torch.equal(first, torch.stack([dm.datasets["train"][i][0] for i in range(7)]))


def test_stride_overlaps_windows(corpus_file):
    dm = make_dm(corpus_file, stride=4)
    x0, _ = dm.datasets["train"][0]
    x1, _ = dm.datasets["train"][1]
    assert torch.equal(x0[4:], x1[:-4])
    _, y0, chars = dm.datasets["val"][0]
    v1, *_ = dm.datasets["val"][1]
    assert y0[-1] == v1[0] and chars == len(y0)  # val windows tile their region: each token is scored once


def test_directory_corpus_with_glob_and_separator(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("alpha " * 200)
    (tmp_path / "two.txt").write_text("beta " * 200)
    (tmp_path / "skip.md").write_text("gamma " * 200)
    dm = make_dm(tmp_path, separator="\n\n")
    assert dm.stats["documents"] == 2
    assert "g" not in dm.tokenizer.vocab


def test_shakespeare_text_reads_like_a_play():
    plays = shakespeare_plays()
    assert len(plays) >= 30
    text = plays[0]
    assert "**" not in text and "#" not in text and "_Enter" not in text
    assert text.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens.")
    assert "\n\nTHESEUS:\nNow, fair Hippolyta, our nuptial hour\n" in text  # speaker, then the verse
    assert len(re.findall(r"(?m)^[A-Z][A-Z .']+:$", text)) > 400  # every speech starts with its speaker
    md = "# Title\n\n### SCENE I. A room.\n\n_Enter ROMEO_\n\n**ROMEO**  \nBut soft!  \nwhat light\n\n\n**JULIET**  \nAy me!\n"
    assert play_markdown_to_text(md) == "Title\n\nSCENE I. A room.\n\nEnter ROMEO\n\nROMEO:\nBut soft!\nwhat light\n\nJULIET:\nAy me!\n"


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.txt", None, r"missing\.txt does not exist; pass data\.path="),
        ("", None, r"no files under .* match '\*\.txt'; pass data\.glob="),
        ("empty.txt", "", r"empty\.txt is empty"),
        ("blank.txt", " \n\t\n", r"is empty \(or only whitespace\)"),
        ("short.txt", "tiny corpus " * 5, r"fewer than one window .* lower data\.seq_len"),
    ],
)
def test_bad_corpus_is_a_clear_error(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CorpusError, match=match):
        make_dm(path)


def test_batch_larger_than_windows_names_the_setting(tmp_path):
    (tmp_path / "c.txt").write_text("some text here " * 200)
    dm = make_dm(tmp_path / "c.txt", batch_size=1000)
    with pytest.raises(CorpusError, match=r"fewer than one batch of data\.batch_size=1000"):
        dm.train_dataloader()


def test_undecodable_bytes_strict_and_replace(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("café au lait " * 300).encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt: not valid UTF-8 at byte offset 3 .*encoding_errors=replace"):
        make_dm(path)
    dm = make_dm(path, encoding_errors="replace")
    assert dm.stats["replaced_bytes"] == 300


def test_bad_settings_are_config_errors(corpus_file):
    with pytest.raises(ConfigError, match="data.tokenizer='sentencepiece'"):
        CorpusDataModule(path=str(corpus_file), tokenizer="sentencepiece")
    with pytest.raises(ConfigError, match="data.seq_len=0"):
        CorpusDataModule(path=str(corpus_file), seq_len=0)
    with pytest.raises(ConfigError, match="data.splits"):
        CorpusDataModule(path=str(corpus_file), splits=[0.5, 0.5, 0.5])


def test_calibration_is_cut_from_the_start_of_the_train_split(corpus_file):
    whole = make_dm(corpus_file)
    dm = make_dm(corpus_file, calibration=0.02)
    train, cal = dm.tokens["train"], dm.tokens["calibration"]
    assert torch.equal(torch.cat([cal, train]), whole.tokens["train"])
    assert len(cal) == int(0.02 * sum(len(t) for t in whole.tokens.values()))
    assert torch.equal(dm.tokens["val"], whole.tokens["val"]) and dm.tokenizer.vocab == whole.tokenizer.vocab
    assert dm.stats["calibration_tokens"] == len(cal)
    with pytest.raises(ConfigError, match=r"data.calibration=0.95; .* below 0.9, e.g. 0.01"):
        CorpusDataModule(path=str(corpus_file), splits=[0.9, 0.1, 0.0], calibration=0.95)
    with pytest.raises(CorpusError, match=r"data.calibration=1e-05 holds 0 tokens, fewer than 256; raise it"):
        make_dm(corpus_file, calibration=1e-5)


def test_word_tokenizer_corpus(corpus_file):
    dm = make_dm(corpus_file, tokenizer="word", max_vocab=500)
    assert dm.vocab_size == 500
    x, *_ = dm.datasets["val"][0]
    assert len(dm.tokenizer.decode(x.tolist())) > 16


def test_lanes_order_continues_each_lane_in_the_next_batch(corpus_file):
    dm = make_dm(corpus_file, order="lanes", batch_size=4)
    first, second = list(dm.train_dataloader())[:2]
    # window i+1 of a lane starts where window i ended: the state can carry across batches
    assert torch.equal(first[1][:, -1], second[0][:, 0])
    region = dm.tokens["train"]
    lane_len = len(dm.datasets["train"]) // 4
    assert torch.equal(first[0][2], region[2 * lane_len * 16 : 2 * lane_len * 16 + 16].long())


def test_ranks_get_disjoint_equal_shares():
    from rnnlm.data.datamodule import WindowSampler

    for order in ("shuffle", "lanes"):
        shares = [list(WindowSampler(103, order, seed=1, rank=r, world_size=2, lanes=4)) for r in (0, 1)]
        assert len(shares[0]) == len(shares[1]) and not set(shares[0]) & set(shares[1])
    a = list(WindowSampler(50, "shuffle", seed=3))
    resumed = WindowSampler(50, "shuffle", seed=3)
    resumed.start = 20
    assert list(resumed) == a[20:] and list(resumed) == a  # the skip applies once


@pytest.mark.parametrize("in_memory_max", [1 << 22, 10], ids=["randperm", "computed"])
def test_shuffled_order_is_a_permutation_per_seed_and_epoch(monkeypatch, in_memory_max):
    from rnnlm.data import datamodule
    from rnnlm.data.datamodule import WindowSampler

    monkeypatch.setattr(datamodule, "IN_MEMORY_ORDER_MAX", in_memory_max)
    monkeypatch.setattr(datamodule, "ITER_CHUNK", 7)  # several chunks per epoch
    size = 1001
    shares = [list(WindowSampler(size, "shuffle", seed=5, rank=r, world_size=3)) for r in range(3)]
    assert all(len(share) == size // 3 for share in shares)
    union = [i for share in shares for i in share]
    assert len(set(union)) == len(union) == 3 * (size // 3) and set(union) <= set(range(size))
    assert shares[0] == list(WindowSampler(size, "shuffle", seed=5, rank=0, world_size=3))
    assert shares[0] != list(WindowSampler(size, "shuffle", seed=6, rank=0, world_size=3))
    next_epoch = WindowSampler(size, "shuffle", seed=5, rank=0, world_size=3)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != shares[0]
    resumed = WindowSampler(size, "shuffle", seed=5, rank=1, world_size=3)
    resumed.start = 40
    assert list(resumed) == shares[1][40:]
    whole = list(WindowSampler(size, "shuffle", seed=5))
    assert sorted(whole) == list(range(size)) and whole != sorted(whole)


def test_a_computed_order_holds_no_epoch_of_indices(monkeypatch):
    """Above the threshold the order is never materialised: torch.randperm is not called."""
    from rnnlm.data import datamodule
    from rnnlm.data.datamodule import WindowSampler

    monkeypatch.setattr(datamodule, "IN_MEMORY_ORDER_MAX", 1000)

    def refuse(*args, **kwargs):
        raise AssertionError("randperm drew the whole order")

    monkeypatch.setattr(datamodule.torch, "randperm", refuse)
    order = WindowSampler(5000, "shuffle", seed=1)
    assert len(set(order)) == 5000
