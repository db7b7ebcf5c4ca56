"""The output layer: full softmax or torch's adaptive softmax, and how the cutoffs are chosen."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnlm.models import RNNLM, LanguageModel
from rnnlm.models.output import auto_cutoffs, cluster_shares, resolve_output
from rnnlm.utils.errors import ConfigError


def test_adaptive_log_probabilities_sum_to_one_and_the_loss_is_the_full_computation():
    torch.manual_seed(0)
    net = RNNLM(200, hidden_size=16, num_layers=1, embedding_dim=8, output="adaptive", adaptive_cutoffs=[10, 50])
    tokens, targets = torch.randint(0, 200, (2, 9)), torch.randint(0, 200, (2, 9))
    log_probs, _ = net(tokens)  # training mode: no logit scale
    assert log_probs.shape == (2, 9, 200)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 9))
    loss, _ = net.loss(tokens, targets)  # each token's own cluster only
    full = F.cross_entropy(log_probs.reshape(-1, 200), targets.reshape(-1))
    by_hand = -log_probs.reshape(-1, 200).gather(1, targets.reshape(-1, 1)).mean()
    torch.testing.assert_close(loss, full)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert net.adaptive.head.weight.grad is not None and net.rnn.weight_hh_l0.grad is not None


def test_cutoffs_follow_the_token_frequencies():
    counts = np.array([0, 50, 30, 10, 5, 3, 1, 1])  # id 0 (<unk>) never seen
    # cumulative share: 0, .5, .8, .9, .95, .98, .99, 1: 70% needs ids 0-2, 90% ids 0-3, 98% ids 0-5
    assert auto_cutoffs(8, counts) == [3, 4, 6]
    assert cluster_shares([3, 4, 6], counts) == pytest.approx([0.1, 0.08, 0.02])
    zipf = auto_cutoffs(30_000)  # no counts: frequencies 1 / rank
    assert 0 < zipf[0] < zipf[1] < zipf[2] < 30_000
    assert auto_cutoffs(3, [0, 9, 1]) == [2] and auto_cutoffs(2, [0, 5]) == [1]  # at most vocab_size - 1


def test_output_choice_and_bad_settings():
    assert resolve_output("auto", 8193) == "adaptive" and resolve_output("auto", 8192) == "softmax"
    assert resolve_output("auto", 100, adaptive_above=50) == "adaptive"
    with pytest.raises(ConfigError, match=r"model.output='hierarchical' is not allowed: it must be one of auto, softmax, adaptive"):
        resolve_output("hierarchical", 10)
    with pytest.raises(ConfigError, match=r"model.adaptive_cutoffs=\[50, 20\]; give increasing integers in \[1, 99\]"):
        RNNLM(100, output="adaptive", adaptive_cutoffs=[50, 20])
    with pytest.raises(ConfigError, match=r"model.adaptive_cutoffs=\[10, 100\]"):
        RNNLM(100, output="adaptive", adaptive_cutoffs=[10, 100])
    with pytest.raises(ConfigError, match="tie_weights=true needs model.output=softmax"):
        RNNLM(100, embedding_dim=256, tie_weights=True, output="adaptive")
    with pytest.raises(ConfigError, match="adaptive_div_value=0.5"):
        RNNLM(100, output="adaptive", adaptive_div_value=0.5)
    with pytest.raises(ConfigError, match=r"makes 3 tail clusters, but with model.hidden_size=32 .* only 2 get a projection"):
        RNNLM(100, hidden_size=32, output="adaptive", adaptive_cutoffs=[10, 20, 50])
    assert len(RNNLM(100, hidden_size=32, output="adaptive").adaptive.tail) == 2  # automatic: as many as fit


def test_the_module_resolves_the_output_and_keeps_the_cutoffs_it_chose():
    from rnnlm.data.tokenizers import WordTokenizer

    tokenizer = WordTokenizer.fit(" ".join(f"w{i}" for i in range(120)))
    counts = np.arange(len(tokenizer))[::-1].copy()
    optimizer = torch.optim.AdamW
    model = LanguageModel(len(tokenizer), tokenizer.to_dict(), optimizer, output="auto", adaptive_above=100,
                          token_counts=lambda: counts, hidden_size=8, num_layers=1, embedding_dim=4)
    # 8 hidden units: one tail cluster gets 8 // 4 = 2 units, a second would get none
    assert model.hparams.output == "adaptive" and model.hparams.adaptive_cutoffs == auto_cutoffs(len(counts), counts, 1)
    assert len(model.hparams.adaptive_cutoffs) == 1
    assert "token_counts" not in model.hparams
    assert model.net.adaptive.cutoffs[:-1] == model.hparams.adaptive_cutoffs
    small = LanguageModel(len(tokenizer), tokenizer.to_dict(), optimizer, output="auto", hidden_size=8, num_layers=1)
    assert small.hparams.output == "softmax" and small.net.adaptive is None


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_adaptive_target_scores_equal_the_full_log_probabilities(scale):
    """Evaluation scores each target from the head and its own cluster; a calibrated scale
    renormalises over the whole vocabulary. Both equal log_softmax of forward's logits."""
    torch.manual_seed(1)
    net = RNNLM(150, hidden_size=16, num_layers=1, embedding_dim=6, output="adaptive", adaptive_cutoffs=[8, 40]).eval()
    net.logit_scale.fill_(scale)
    tokens = torch.randint(0, 150, (3, 10))
    with torch.no_grad():
        logits, reference_state = net(tokens)
        spread = torch.arange(0, 150, 5).view(3, 10)  # targets in every cluster...
        targets = torch.where(torch.arange(10) % 2 == 0, logits.argmax(-1), spread)  # ...and the top guesses
        log_probs, hits, state = net.target_scores(tokens, targets)
    full = logits.log_softmax(-1)
    torch.testing.assert_close(log_probs, full.gather(-1, targets[..., None]).squeeze(-1), atol=1e-5, rtol=0)
    assert torch.equal(hits, logits.argmax(-1) == targets)
    torch.testing.assert_close(state[0], reference_state[0])


def test_the_adaptive_layer_keeps_fp32_under_bf16_autocast_and_uses_every_unit_it_can():
    """Mixed precision: the LSTM may run in bf16, the adaptive softmax's log-probabilities and
    loss stay fp32 and equal the fp32 computation from the same hidden states."""
    from rnnlm.models.output import max_tails

    torch.manual_seed(2)
    net = RNNLM(120, "rnn", hidden_size=16, num_layers=1, embedding_dim=4, output="adaptive", adaptive_cutoffs=[10, 40])
    tokens, targets = torch.randint(0, 120, (2, 6)), torch.randint(0, 120, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = net.loss(tokens, targets)
        log_probs, _ = net(tokens)
        hidden, _ = net.features(tokens)
    assert loss.dtype == log_probs.dtype == torch.float32
    reference = net.adaptive(hidden.float().reshape(-1, 16), targets.reshape(-1)).loss
    torch.testing.assert_close(loss, reference)
    assert max_tails(1024, 4.0) == 5 and max_tails(3, 4.0) == 0  # 1024 // 4**5 = 1 unit
    assert len(RNNLM(30_000, hidden_size=1024, output="adaptive", adaptive_cutoffs=[50, 200, 800, 3000]).adaptive.tail) == 4
    with pytest.raises(ConfigError, match="model.hidden_size=3 is below model.adaptive_div_value=4.0"):
        RNNLM(100, hidden_size=3, output="adaptive")
