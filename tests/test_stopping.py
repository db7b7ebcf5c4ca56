"""stop=: a stream ends once its text after the prompt contains the string, for every tokenizer
and strategy, its text cut where the string ends."""

import pytest
import torch

from rnnlm.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from rnnlm.generation import DecodeSettings, generate
from rnnlm.generation.stopping import TextStreams, check_stop, text_pieces, through_stop
from rnnlm.models import RNNLM
from rnnlm.utils.errors import ConfigError

TEXT = "the cat sat on the mat. héllo wörld — the end.\n\n" * 20
TOKENIZERS = {
    "char": lambda: CharTokenizer.fit(TEXT),
    "word": lambda: WordTokenizer.fit(TEXT),
    "bpe": lambda: BPETokenizer.fit(TEXT, 300),
}


def net_for(tokenizer, seed=0):
    torch.manual_seed(seed)
    return RNNLM(len(tokenizer), "gru", hidden_size=16, num_layers=1, embedding_dim=8).eval()


def first_stop(tokenizer, tokens, start=5):
    """A stop string that begins inside the generated text, not at a token boundary where
    the tokenizer allows it (the second character of a multi-character piece)."""
    text = tokenizer.decode(tokens)
    return text[start : start + 2]


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("strategy", ["sample", "greedy"])
def test_sampling_stops_where_the_text_first_holds_the_string(kind, strategy):
    tokenizer = TOKENIZERS[kind]()
    net = net_for(tokenizer)
    settings = DecodeSettings(strategy=strategy, temperature=1.5)
    full = generate(net, [1], 80, 3, settings, seed=0, text=TextStreams(tokenizer, 3))
    stop = first_stop(tokenizer, full.tokens[0])
    pieces: list[list[str]] = [[], [], []]
    cut = generate(net, [1], 80, 3, settings, seed=0, text=TextStreams(tokenizer, 3, stop),
                   on_step=lambda step: [p.append(s) for p, s in zip(pieces, step)])
    for short, long, streamed in zip(cut.tokens, full.tokens, pieces):
        whole = tokenizer.decode(long)
        assert long[: len(short)] == short
        if stop in whole:  # ends at the first token whose text completes the string
            assert stop in tokenizer.decode(short) and stop not in tokenizer.decode(short[:-1])
            assert "".join(streamed) == through_stop(whole, stop) and "".join(streamed).endswith(stop)
        else:
            assert short == long
    assert stop in tokenizer.decode(cut.tokens[0])


def test_a_stop_string_inside_a_merged_token_ends_the_stream():
    tokenizer = BPETokenizer.fit(TEXT, 300)
    ids = tokenizer.encode(" the cat").tolist()
    assert len(ids) == 2  # " the", " cat": "e" is inside the first token
    stream = TextStreams(tokenizer, 1, "e")
    assert stream([ids[0]]) == [" the"] and stream.ended == [True] and stream([ids[1]]) == [""]
    assert text_pieces(tokenizer, ids, "h") == [" th", ""]


def test_a_word_stop_matches_inside_a_token():
    tokenizer = WordTokenizer.fit(TEXT)
    ids = tokenizer.encode("the cat sat").tolist()
    assert len(ids) == 3 and check_stop(tokenizer, "ca") == "ca"  # " cat" is the token
    assert text_pieces(tokenizer, ids, "ca") == ["the", " ca", ""]


def test_a_character_split_across_bpe_tokens_is_matched_once_complete():
    tokenizer = BPETokenizer.fit("abc " * 50, 300)  # é is two bytes, each its own token
    ids = tokenizer.encode("aé").tolist()
    assert len(ids) == 3
    assert text_pieces(tokenizer, ids, "é") == ["a", "", "é"]


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_beam_search_sets_aside_beams_whose_text_reaches_the_string(kind):
    tokenizer = TOKENIZERS[kind]()
    net = net_for(tokenizer, 1)
    settings = DecodeSettings(strategy="beam", beam_width=4)
    full = generate(net, [1], 30, 2, settings, text=TextStreams(tokenizer, 2))
    stop = first_stop(tokenizer, full.tokens[0], 2)
    cut = generate(net, [1], 30, 2, settings, text=TextStreams(tokenizer, 2, stop))
    for tokens in cut.tokens:
        text = tokenizer.decode(tokens)
        if stop in text:
            assert stop not in tokenizer.decode(tokens[:-1])  # nothing generated past it
    assert any(stop in tokenizer.decode(t) for t in cut.tokens)



def test_beam_search_returns_each_beam_once_when_beams_end():
    tokenizer = CharTokenizer.fit("ab" * 20)
    for seed in range(6):
        torch.manual_seed(seed)
        net = RNNLM(len(tokenizer), "gru", hidden_size=8, num_layers=1, embedding_dim=4).eval()
        out = generate(net, [1], 10, 3, DecodeSettings(strategy="beam", beam_width=3), text=TextStreams(tokenizer, 1, "b"))
        assert len({tuple(t) for t in out.tokens}) == len(out.tokens), out.tokens


@pytest.mark.parametrize(("kind", "stop", "message"), [
    ("char", "🎭", r"stop='🎭' has 1 character\(s\) that no token of the checkpoint's vocabulary contains: '🎭'"),
    ("word", "x" * 1001, r"stop= has 1,001 characters; it must have at most 1,000"),
    ("char", 5, r"stop=5 must be text \(quote it: stop='5'\)"),
])
def test_stop_strings_a_model_cannot_produce_are_refused(kind, stop, message):
    with pytest.raises(ConfigError, match=message):
        check_stop(TOKENIZERS[kind](), stop)


def test_bpe_can_produce_any_stop_string():
    assert check_stop(TOKENIZERS["bpe"](), "🎭") == "🎭"
