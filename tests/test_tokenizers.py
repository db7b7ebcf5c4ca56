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
    assert tok.split("the cat,  x") == ["the", " ", "cat", ",", "  ", "x"]
    capped = WordTokenizer.fit(text, max_vocab=3)
    assert len(capped) == 3 and capped.vocab[0] == UNK and capped.vocab[1] == " "
    assert 0 in capped.encode(text).tolist()
    frequent = WordTokenizer.fit(text, min_freq=3)
    assert set(frequent.vocab) == {UNK, " ", "the"}


def test_ids_use_the_smallest_integer_type():
    assert CharTokenizer.fit("abc").encode("abc").dtype == np.uint8
    assert smallest_int_dtype(256) == np.uint8 and smallest_int_dtype(257) == np.int16
    assert smallest_int_dtype(40_000) == np.int32
