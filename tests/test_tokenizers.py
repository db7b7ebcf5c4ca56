import numpy as np
import pytest

from rnnlm.data.tokenizers import UNK, CharTokenizer, Tokenizer, WordTokenizer, smallest_int_dtype

TEXTS = {
    "ascii": "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "chinese": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "mixed": "ROMEO: 你好, wörld! — naïve café 🎭\n\ttabs  and  spaces",
}


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("cls", [CharTokenizer, WordTokenizer])
def test_round_trip(cls, name):
    text = TEXTS[name]
    tok = cls.fit(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert 0 not in ids.tolist()  # everything was seen while fitting


def test_char_unseen_maps_to_unk_and_state_round_trips():
    tok = CharTokenizer.fit("abcabc")
    ids = tok.encode("abz")
    assert ids.tolist()[2] == 0 and tok.decode(ids) == "ab" + UNK
    again = Tokenizer.from_dict(tok.to_dict())
    assert again.vocab == tok.vocab and again.encode("cab").tolist() == tok.encode("cab").tolist()
    assert tok.unknown("abzyz") == ["z", "y"]


def test_word_pieces_and_vocab_limits():
    text = "the cat, the dog.\n\nthe end"
    tok = WordTokenizer.fit(text)
    # A word takes the one space before it; other whitespace stays apart, minus the space it lends.
    assert tok.split("the cat,  x\n\n  y") == ["the", " cat", ",", " ", " x", "\n\n ", " y"]
    capped = WordTokenizer.fit(text, max_vocab=3)
    assert capped.vocab == [UNK, "\n", "the"]
    assert 0 in capped.encode(text).tolist()
    frequent = WordTokenizer.fit(text, min_freq=2)
    assert set(frequent.vocab) == {UNK, "\n", "the"}


def test_word_tokens_keep_their_spaces_and_the_default_vocabulary_is_capped():
    text = "To be, or not to be: that is the question.\n" * 3
    tok = WordTokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text and " question" in tok.vocab
    assert len(tok.encode(text)) == 3 * 14  # 10 words, 3 marks, a newline; LEGACY_WORD_PATTERN makes 23
    from rnnlm.data import tokenizers

    many = " ".join(f"w{i}" for i in range(tokenizers.DEFAULT_MAX_VOCAB + 50))
    assert len(WordTokenizer.fit(many)) == tokenizers.DEFAULT_MAX_VOCAB
    assert len(WordTokenizer.fit(many, max_vocab=10**6)) == tokenizers.DEFAULT_MAX_VOCAB + 51


def test_word_state_keeps_its_split_and_old_checkpoints_keep_theirs():
    tok = WordTokenizer.fit("the cat sat")
    assert Tokenizer.from_dict(tok.to_dict()).split("a cat") == ["a", " cat"]
    old_state = {"kind": "word", "vocab": [UNK, " ", "the", "cat"], "start": "\n\n"}  # written before "pattern"
    old = Tokenizer.from_dict(old_state)
    assert old.split("the cat") == ["the", " ", "cat"] and old.encode("the cat").tolist() == [2, 1, 3]


def test_word_encoding_in_chunks_equals_the_whole_text(monkeypatch):
    import random

    from rnnlm.data import tokenizers

    rng = random.Random(0)
    alphabet = ["a", "b", "z9", " ", " ", "  ", "\n", "\n\n", "\t", ",", "—", "é", "🎭", "你"]
    text = "".join(rng.choice(alphabet) for _ in range(3000))
    tok = WordTokenizer.fit(text)
    whole = tok.encode(text)
    assert tok.decode(whole) == text
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(tokenizers, "_WORD_CHUNK", chunk)
        cuts = sorted(rng.sample(range(len(text)), 40))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert np.array_equal(np.concatenate(list(tok.encode_stream(pieces))), whole), chunk
        assert WordTokenizer.fit_stream(pieces).vocab == tok.vocab


def test_ids_use_the_smallest_integer_type():
    assert CharTokenizer.fit("abc").encode("abc").dtype == np.uint8
    assert smallest_int_dtype(256) == np.uint8 and smallest_int_dtype(257) == np.int16
    assert smallest_int_dtype(40_000) == np.int32


@pytest.mark.parametrize("name", TEXTS)
def test_bpe_encodes_any_text_exactly_with_no_unk(name):
    from rnnlm.data.tokenizers import BPETokenizer

    tok = BPETokenizer.fit(TEXTS["ascii"] * 20, 300)
    assert len(tok) == 300 and tok.vocab[0] == UNK
    text = TEXTS[name]
    ids = tok.encode(text)  # Chinese and emoji were never seen: they are bytes
    assert tok.decode(ids) == text and 0 not in ids.tolist() and tok.unknown(text) == []
    assert tok.char_lengths()[ids].sum() == len(text)  # bits per character divide by this
    step = tok.streamer()  # one token at a time, a character split across tokens held back
    assert "".join(step(int(i)) for i in ids) == text
    assert len(tok.encode("Before we proceed")) < len("Before we proceed") / 2  # merges learned


def test_bpe_state_is_plain_data_and_streamed_encoding_equals_whole(monkeypatch, tmp_path):
    import random

    import torch

    from rnnlm.data import tokenizers
    from rnnlm.data.tokenizers import BPETokenizer

    text = "".join(TEXTS.values()) * 30
    tok = BPETokenizer.fit(text, 400)
    torch.save({"tokenizer": tok.to_dict()}, tmp_path / "t.pt")
    again = Tokenizer.from_dict(torch.load(tmp_path / "t.pt", weights_only=True)["tokenizer"])
    assert np.array_equal(again.encode(text), tok.encode(text))
    monkeypatch.setattr(tokenizers, "_BPE_CHUNK", 50)  # many chunks, cut only where it is safe
    monkeypatch.setattr(tokenizers, "_BPE_BATCH", 3)
    rng = random.Random(0)
    cuts = sorted(rng.sample(range(len(text)), 80))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    whole = np.asarray(tok._hf.encode(text).ids)
    assert np.array_equal(np.concatenate(list(tok.encode_stream(pieces))), whole)


@pytest.mark.parametrize("cls", [WordTokenizer, "bpe"])
def test_text_ending_in_whitespace_encodes_as_it_reads_before_more_text(cls):
    """A prompt or separator that ends in whitespace: the ids training saw there, not those of
    text that stops (a word takes the space before it, so "\\n\\n" alone would be one rare token)."""
    from rnnlm.data.tokenizers import BPETokenizer

    text = "ACT I\n\nSCENE I. Rome.\n\nFirst Citizen: Before we proceed any further, hear me speak.\n\n" * 20
    tok = BPETokenizer.fit(text, 300) if cls == "bpe" else cls.fit(text)
    for context in ("\n\n", "ACT I\n\n", " Rome.\n", " speak.", "ACT I\n\nSCENE"):
        ids = tok.encode_context(context).tolist()
        assert tok.decode(ids) == context and 0 not in ids
        following = "SCENE" if context[-1].isspace() else " I"  # a word right after it
        assert tok.encode(context + following).tolist()[: len(ids)] == ids, context
    assert tok.encode_context("\n\n").tolist() == tok.encode("\n\nSCENE").tolist()[:2]
    if cls is WordTokenizer:  # alone, "\n\n" is one piece, seen once in training: at the very end
        assert len(tok.encode("\n\n")) == 1
    spaced = tok.encode_context(" hear me ").tolist()  # a trailing space stays, as its own token
    assert spaced[:-1] == tok.encode(" hear me").tolist() and tok.decode(spaced[-1:]) in (" ", UNK)
