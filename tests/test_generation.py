import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.data.tokenizers import CharTokenizer
from rnnlm.generation import DecodeSettings, distinct_n, generate, repetition_rate, score_ids
from rnnlm.generation.decoding import prime
from rnnlm.generation.prompt import encode_prompt
from rnnlm.models import RNNLM
from rnnlm.utils.errors import ConfigError


class TableLM(nn.Module):
    """A bigram model from a fixed table of next-token logits (rows: previous token)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, tokens, state=None):
        batch = tokens.size(0)
        return self.table[tokens], torch.zeros(1, batch, 1) if state is None else state


def random_lstm(seed=0, vocab=13):
    torch.manual_seed(seed)
    return RNNLM(vocab, "lstm", hidden_size=24, num_layers=2, embedding_dim=8).eval()


def test_stateful_step_matches_rerunning_the_prefix():
    net = random_lstm()
    seq = torch.randint(0, 13, (1, 30))
    full, _ = net(seq)
    logits, state = prime(net, seq[0, :10].tolist(), torch.device("cpu"))
    torch.testing.assert_close(logits, full[:, 9], atol=1e-5, rtol=0)
    for t in range(10, 30):
        out, state = net(seq[:, t : t + 1], state)
        torch.testing.assert_close(out[:, -1], full[:, t], atol=1e-5, rtol=0)


def test_greedy_equals_naive_rerun_and_beam_width_one():
    net = random_lstm(1)
    prompt = [1, 2, 3]
    greedy = generate(net, prompt, 25, settings=DecodeSettings(strategy="greedy")).tokens[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(25):
            seq.append(int(net(torch.tensor([seq]))[0][0, -1].argmax()))
    assert greedy == seq[3:]
    assert generate(net, prompt, 25, settings=DecodeSettings(temperature=0)).tokens[0] == greedy
    beam1 = generate(net, prompt, 25, settings=DecodeSettings(strategy="beam", beam_width=1)).tokens[0]
    assert beam1 == greedy


def bigram_trap() -> TableLM:
    """Greedy takes A (0.6) then faces a flat choice; B (0.4) leads to C with 0.99."""
    probs = torch.full((5, 5), 1e-6)
    probs[0, 1], probs[0, 2] = 0.6, 0.4  # start -> A | B
    probs[1, 2:5] = 1 / 3  # A -> B, C, D equally
    probs[2, 3], probs[2, 4] = 0.99, 0.01  # B -> C (rows sum to 1)
    probs[3:, 0] = 1.0
    return TableLM(probs.log())


def test_beam_search_finds_the_more_likely_sequence():
    net = bigram_trap()
    greedy = generate(net, [0], 2, settings=DecodeSettings(strategy="greedy"))
    beam = generate(net, [0], 2, 2, settings=DecodeSettings(strategy="beam", beam_width=3))
    assert greedy.tokens[0] == [1, 2]
    assert beam.tokens[0] == [2, 3]
    assert beam.scores[0] == pytest.approx(math.log(0.4 * 0.99), abs=1e-4)
    assert beam.scores[0] > beam.scores[1]
    stochastic = generate(net, [0], 2, settings=DecodeSettings(strategy="stochastic_beam", beam_width=4), seed=0)
    assert stochastic.tokens[0] == [2, 3]


def fixed_logits(logits):
    return TableLM(torch.as_tensor(logits).float().expand(len(logits), -1).clone())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_tempered_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    result = generate(fixed_logits(logits), [0], 1, 20_000, DecodeSettings(temperature=temperature), seed=0)
    freq = torch.bincount(torch.tensor([t[0] for t in result.tokens]), minlength=5).float() / 20_000
    torch.testing.assert_close(freq, F.softmax(logits / temperature, -1), atol=0.015, rtol=0)


def test_top_k_and_top_p_never_leave_their_set():
    logits = torch.tensor([3.0, 2.5, 2.0, 0.0, -0.5, -1.0, -3.0])
    net = fixed_logits(logits)
    top3 = generate(net, [0], 20, 200, DecodeSettings(top_k=3, temperature=1.5), seed=0).tokens
    assert {t for s in top3 for t in s} == {0, 1, 2}
    probs = F.softmax(logits, -1)  # [0.48, 0.29, 0.18, ...]: the 0.85 nucleus is {0, 1, 2}
    assert probs[:2].sum() < 0.85 <= probs[:3].sum()
    nucleus = generate(net, [0], 20, 200, DecodeSettings(top_p=0.85), seed=1).tokens
    assert {t for s in nucleus for t in s} == {0, 1, 2}


def test_same_seed_same_samples_and_batch_streams_differ():
    net = random_lstm(2)
    a = generate(net, [1], 40, 4, DecodeSettings(temperature=1.0), seed=7).tokens
    b = generate(net, [1], 40, 4, DecodeSettings(temperature=1.0), seed=7).tokens
    c = generate(net, [1], 40, 4, DecodeSettings(temperature=1.0), seed=8).tokens
    assert a == b and a != c and len({tuple(s) for s in a}) == 4


def test_score_equals_direct_cross_entropy():
    net = random_lstm(4)
    ids = torch.randint(0, 13, (200,))
    result = score_ids(net, ids, chunk=37)
    with torch.no_grad():
        direct = F.cross_entropy(net(ids[None, :-1])[0][0], ids[1:])
    assert result["loss"] == pytest.approx(float(direct), abs=1e-5)
    assert result["tokens"] == 199 and result["bpc"] == pytest.approx(float(direct) / math.log(2), abs=1e-5)
    chars = torch.rand(200) * 3 + 0.5  # characters each token stands for, as words or subwords do
    per_char = score_ids(net, ids, chunk=37, chars=chars)
    assert per_char["bpt"] == pytest.approx(result["bpc"], abs=1e-6)
    assert per_char["bpc"] == pytest.approx(float(direct) * 199 / math.log(2) / float(chars[1:].sum()), rel=1e-5)


def test_sample_statistics():
    assert distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert distinct_n([[1, 1, 1, 1]], 2) == pytest.approx(1 / 3)
    assert repetition_rate([[1, 2, 1, 2, 1, 2]], 2) == pytest.approx(3 / 5)
    assert repetition_rate([[1, 2, 3, 4, 5]], 2) == 0.0


@pytest.mark.parametrize(
    "settings, match",
    [
        (DecodeSettings(temperature=-0.1), r"temperature=-0.1 is not allowed: it must be a finite number >= 0 and <= 100"),
        (DecodeSettings(top_p=0.0), r"top_p=0.0 is not allowed: it must be a finite number > 0 and <= 1"),
        (DecodeSettings(top_p=1.5), r"top_p=1.5"),
        (DecodeSettings(top_k=0), r"top_k=0 is not allowed: it must be an integer >= 1"),
        (DecodeSettings(top_k=14), r"top_k=14 is above the vocabulary's 13 tokens"),
        (DecodeSettings(strategy="beam", beam_width=0), r"beam_width=0 is not allowed: it must be an integer >= 1 and <= 1024"),
        (DecodeSettings(strategy="beam", length_penalty=10**30), r"length_penalty=1000000000000000000000000000000 is not allowed"),
        (DecodeSettings(temperature=10**30), r"temperature=1000000000000000000000000000000 is not allowed"),
        (DecodeSettings(strategy="nucleus"), r"strategy='nucleus' is not allowed: it must be one of greedy, sample, beam, stochastic_beam"),
    ],
)
def test_bad_decode_settings(settings, match):
    with pytest.raises(ConfigError, match=match):
        settings.validate(13)


def test_prompt_with_unknown_characters(caplog):
    tok = CharTokenizer.fit("hello world\n")
    with pytest.raises(ConfigError, match=r"2 char\(s\) not in the checkpoint's vocabulary: 'X', '🎭'; .*unknown=replace"):
        encode_prompt(tok, "hello X🎭", unknown="error")
    with caplog.at_level("WARNING"):
        ids = encode_prompt(tok, "hello X")  # the default: <unk>, and a warning naming what
    assert ids[-1] == 0 and "1 char(s) not in the checkpoint's vocabulary: 'X'; mapped to <unk>" in caplog.text
    assert encode_prompt(tok, "") == tok.encode("\n\n").tolist()


def test_fit_logit_scale_undoes_an_overconfident_output_layer():
    from rnnlm.models.calibration import fit_logit_scale
    from rnnlm.models.evaluation import score_totals

    net = random_lstm(seed=3)
    with torch.no_grad():  # peakier predictions than at initialisation: a sharper optimum
        net.decoder.weight.mul_(4)
    # Text drawn from the model itself: the model is calibrated for it, the best scale is ~1.
    ids = torch.tensor(generate(net, [0], 4000, 1, DecodeSettings(temperature=1.0), seed=0).tokens[0])
    calibrated, _, _ = fit_logit_scale(net, ids, lanes=1)
    assert calibrated == pytest.approx(1.0, abs=0.1)
    with torch.no_grad():  # the same logits made 1.6x sharper: over-confident
        net.decoder.weight.mul_(1.6)
        net.decoder.bias.mul_(1.6)
    scale, loss_raw, loss = fit_logit_scale(net, ids, lanes=1)
    assert scale == pytest.approx(calibrated / 1.6, abs=0.01) and loss < loss_raw - 0.005
    assert net.logit_scale.item() == 1.0  # the caller sets the result
    count = len(ids) - 1
    assert loss_raw == pytest.approx(score_totals(net, ids, 1, 256)[0] / count, rel=1e-5)
    net.logit_scale.fill_(scale)
    assert score_totals(net, ids, 1, 256)[0] / count <= loss + 1e-4  # the refined scale: as good as the grid's best


def test_stochastic_beam_respects_top_k_and_length_zero():
    net = random_lstm(6)
    greedy = generate(net, [1], 15, settings=DecodeSettings(strategy="greedy")).tokens[0]
    beams = generate(net, [1], 15, 3, DecodeSettings(strategy="stochastic_beam", beam_width=5, top_k=1), seed=0)
    assert beams.tokens[0] == greedy  # one token allowed per step: only the greedy path survives
    empty = generate(net, [1], 0, 3, DecodeSettings(strategy="beam", beam_width=4))
    assert empty.tokens == [[], [], []]


def test_sample_one_draws_what_multinomial_draws():
    from rnnlm.generation.decoding import sample_one

    probs = torch.rand(8, 30).softmax(-1)
    mine = sample_one(probs, torch.Generator().manual_seed(3))
    theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1)
    assert torch.equal(mine, theirs)
