import pytest
import torch

from rnnlm.errors import ConfigError
from rnnlm.models import RNNLM


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding_dim", [8, None])
def test_forward_shapes_and_state(cell, embedding_dim):
    net = RNNLM(11, cell, hidden_size=12, num_layers=2, embedding_dim=embedding_dim)
    tokens = torch.randint(0, 11, (3, 5))
    logits, state = net(tokens)
    assert logits.shape == (3, 5, 11)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2, 3, 12)
    # the state carries: feeding the halves in turn equals feeding the whole
    first, state = net(tokens[:, :2])
    second, _ = net(tokens[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_tied_weights_share_one_matrix():
    net = RNNLM(20, "gru", hidden_size=16, num_layers=1, embedding_dim=16, tie_weights=True)
    assert net.decoder.weight is net.embedding.weight
    with pytest.raises(ConfigError, match="tie_weights=true needs model.embedding_dim"):
        RNNLM(20, hidden_size=16, embedding_dim=8, tie_weights=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cell": "transformer"}, r"model.cell='transformer'; use one of \['gru', 'lstm', 'rnn'\]"),
        ({"hidden_size": "abc"}, r"model.hidden_size='abc'; it must be a positive integer"),
        ({"num_layers": 0}, r"model.num_layers=0"),
        ({"dropout": 1.5}, r"model.dropout=1.5"),
        ({"embedding_dim": None, "onehot_max_vocab": 10}, r"one-hot input with a vocabulary of 50 .* set model.embedding_dim"),
    ],
)
def test_bad_model_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RNNLM(50, **kwargs)


def test_memory_report_counts_the_input_matrix():
    onehot = RNNLM(30, "lstm", hidden_size=8, num_layers=1, embedding_dim=None).memory_report()
    assert onehot["params_input"] == 30 * 4 * 8
    emb = RNNLM(30, "lstm", hidden_size=8, num_layers=1, embedding_dim=5).memory_report()
    assert emb["params_input"] == 30 * 5


def test_warmup_cosine_schedule():
    from rnnlm.models.schedules import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, min_ratio=0.1)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
