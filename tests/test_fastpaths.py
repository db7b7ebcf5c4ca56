"""Each fast path against the ``torch.nn`` module it replaces, and the one place that picks it."""

import pytest
import torch
import torch.nn.functional as F

from rnnlm import fastpaths
from rnnlm.fastpaths import gru
from rnnlm.fastpaths.decode import FastStep
from rnnlm.fastpaths.gru import gru_forward, usable
from rnnlm.fastpaths.packed import PackedLinear, matmul_nt
from rnnlm.models import RNNLM


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "addmm"])
@pytest.mark.parametrize("rows, bias", [(1, True), (5, True), (3, False)])
def test_packed_linear_matches_f_linear(onednn, rows, bias):
    torch.manual_seed(1)
    weight, b = torch.randn(40, 24), torch.randn(40) if bias else None
    x = torch.randn(rows, 24)
    with torch.backends.mkldnn.flags(enabled=onednn):
        packed = PackedLinear(weight, b, batch_hint=4)
        got = packed(x)
    assert (packed.packed is not None) == (onednn and torch.backends.mkldnn.is_available())
    torch.testing.assert_close(got, F.linear(x, weight, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(matmul_nt(x, weight), x @ weight.T, atol=1e-5, rtol=1e-5)


def test_the_dispatch_keeps_torch_nn_where_no_path_applies():
    lstm = torch.nn.LSTM(6, 8, batch_first=True)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(fastpaths.recurrent_forward(lstm, x, None)[0], lstm(x)[0])
    net = RNNLM(11, "lstm", hidden_size=8, num_layers=1, embedding_dim=4)
    assert not isinstance(fastpaths.decoding_step(net.train()), FastStep)  # training mode: the module
    assert isinstance(fastpaths.decoding_step(net.eval()), FastStep)
    with fastpaths.torch_nn_only():
        assert not isinstance(fastpaths.decoding_step(net), FastStep)
    assert fastpaths.ENABLED


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "addmm"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_gru_path_matches_nn_gru_outputs_and_gradients(num_layers, onednn):
    torch.manual_seed(3)
    gru = torch.nn.GRU(7, 16, num_layers, batch_first=True)
    x = torch.randn(4, 9, 7, requires_grad=True)
    h0 = torch.randn(num_layers, 4, 16, requires_grad=True)
    assert usable(gru, x)

    def outputs_and_grads(forward):
        for t in [x, h0, *gru.parameters()]:
            t.grad = None
        out, h_n = forward(x, h0)
        (out.square().sum() + h_n.sin().sum()).backward()
        return [out, h_n, x.grad, h0.grad] + [p.grad for p in gru.parameters()]

    assert not usable(torch.nn.GRU(7, 16, num_layers), x)  # time-major modules keep nn.GRU
    assert not usable(gru, x[0]) and not usable(gru, x[:0])  # unbatched, empty batch
    expected = outputs_and_grads(gru)
    with torch.backends.mkldnn.flags(enabled=onednn):
        got = outputs_and_grads(lambda inp, h: gru_forward(gru, inp, h))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_a_gru_model_takes_the_fast_path_where_it_applies_and_nn_gru_elsewhere(monkeypatch):
    calls = []
    original = gru.gru_forward
    monkeypatch.setattr(gru, "gru_forward", lambda *a: calls.append(1) or original(*a))
    net = RNNLM(11, "gru", hidden_size=12, num_layers=2, dropout=0.5, embedding_dim=8)
    tokens = torch.randint(0, 11, (3, 6))
    net.dropout = torch.nn.Identity()  # leave only the dropout between the GRU's layers
    net.train()
    train_a, _ = net(tokens)
    train_b, _ = net(tokens)
    assert not torch.allclose(train_a, train_b)  # dropout between layers is applied in training
    net.eval()
    fast, _ = net(tokens)
    assert len(calls) == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(tokens)  # autocast: nn.GRU's own path
    assert len(calls) == 3
    calls.clear()
    with fastpaths.torch_nn_only():
        slow, _ = net(tokens)
    assert not calls
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("cell", "embedding_dim", "hidden_size"),
    [(cell, emb, 24) for cell in ("lstm", "gru", "rnn") for emb in (8, None)]
    + [("lstm", 64, 512), ("gru", 64, 512)],  # the benchmark's size, where oneDNN's blocking differs
)
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "addmm"])
def test_decoding_step_matches_the_module(cell, embedding_dim, hidden_size, onednn):
    torch.manual_seed(5)
    net = RNNLM(13, cell, hidden_size=hidden_size, num_layers=3, embedding_dim=embedding_dim).eval()
    net.logit_scale.fill_(0.8)  # a calibrated model: the packed output layer must apply it too
    with torch.backends.mkldnn.flags(enabled=onednn):
        step = FastStep(net, batch_hint=4)
    assert (step.out.packed is not None) == (onednn and torch.backends.mkldnn.is_available())
    seq = torch.randint(0, 13, (4, 12))
    with torch.no_grad(), fastpaths.torch_nn_only():  # the reference: nn.LSTM / nn.GRU / nn.RNN
        full, _ = net(seq)
        _, state = net(seq[:, :5])
        _, reference = net(seq)
    with torch.no_grad():
        for t in range(5, 12):
            logits, state = step(seq[:, t], state)
            if t < 11:
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
        for mine, theirs in zip(state if isinstance(state, tuple) else [state], reference if isinstance(reference, tuple) else [reference]):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "addmm"])
def test_decoding_step_with_an_adaptive_softmax_matches_the_module(onednn):
    torch.manual_seed(6)
    net = RNNLM(300, "lstm", hidden_size=24, num_layers=2, embedding_dim=8, output="adaptive",
                adaptive_cutoffs=[20, 100]).eval()
    net.logit_scale.fill_(0.9)
    assert FastStep.supports(net)
    with torch.backends.mkldnn.flags(enabled=onednn):
        step = FastStep(net, batch_hint=3)
    seq = torch.randint(0, 300, (3, 8))
    with torch.no_grad(), fastpaths.torch_nn_only():
        full, state = net(seq[:, :4])
        full, _ = net(seq)
    with torch.no_grad():
        for t in range(4, 7):
            logits, state = step(seq[:, t], state)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
