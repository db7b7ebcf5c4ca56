"""One decoding step of an :class:`RNNLM` without ``nn.LSTM``'s per-call overhead.

Generating one token per call, ``nn.LSTM``/``nn.GRU`` spend most of their time in setup
(weight packing, workspace allocation) rather than arithmetic. This step function runs the
same cell equations on weights arranged once for it:

- the first layer's input projection is folded into a per-token table
  (``embedding @ W_ih0.T + biases``), so embedding lookup and first matmul become one gather;
- each deeper LSTM/RNN layer does a single projection of ``[x, h]`` by ``[W_ih; W_hh]``;
- LSTM gate rows are reordered to (i, f, o, g), so one ``sigmoid`` covers three gates;
- on a CPU with oneDNN, the weights are packed once in oneDNN's blocked layout
  (:class:`~rnnlm.fastpaths.packed.PackedLinear`); elsewhere the step uses ``addmm`` on
  pre-transposed weights.

It takes and returns the state in ``nn.LSTM``/``nn.GRU``/``nn.RNN``'s layout, so the decoding
loop can switch between the two freely; ``tests/test_fastpaths.py`` checks it matches the
module within 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnlm.fastpaths.packed import PackedLinear


def _ifog(t: torch.Tensor) -> torch.Tensor:
    """PyTorch's LSTM gate blocks (i, f, g, o) along dim 0, reordered to (i, f, o, g)."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat([i, f, o, g])


class PackedAdaptive:
    """``AdaptiveLogSoftmaxWithLoss.log_prob(x) * scale`` with its matrices packed once: the
    head's log-probabilities for the shortlist, and each tail cluster's plus the head's
    log-probability of that cluster."""

    def __init__(self, adaptive: nn.AdaptiveLogSoftmaxWithLoss, scale: torch.Tensor, batch_hint: int):
        # addmm, not oneDNN: for these narrow matrices oneDNN's per-call cost outweighs its
        # packing (docs/tokenizers.md has the measurement).
        head = adaptive.head
        self.head = PackedLinear(head.weight, head.bias, batch_hint, onednn=False)
        self.tails = [(PackedLinear(project.weight, None, batch_hint, onednn=False),
                       PackedLinear(classes.weight, None, batch_hint, onednn=False)) for project, classes in adaptive.tail]
        self.bounds = [0, *adaptive.cutoffs]  # cutoffs end with the vocabulary size
        self.shortlist, self.vocab_size, self.scale = adaptive.shortlist_size, adaptive.n_classes, scale.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        head = torch.log_softmax(self.head(x), dim=1)
        out = x.new_empty(x.size(0), self.vocab_size)
        out[:, : self.shortlist] = head[:, : self.shortlist]
        for i, (project, classes) in enumerate(self.tails):
            cluster = torch.log_softmax(classes(project(x)), dim=1)
            out[:, self.bounds[i + 1] : self.bounds[i + 2]] = cluster + head[:, self.shortlist + i, None]
        return out.mul_(self.scale)


class FastStep:
    """``step(tokens [B], state) -> (logits [B, V], state)`` for an RNNLM in eval mode.

    ``batch_hint`` is the number of rows the step will usually see (oneDNN picks its weight
    blocking for it); any batch size works.
    """

    def __init__(self, net: nn.Module, batch_hint: int = 1):
        rnn, self.cell, self.num_layers = net.rnn, net.cell, net.num_layers
        self.hidden_size = net.hidden_size
        order = _ifog if self.cell == "lstm" else (lambda t: t)
        with torch.no_grad():
            inputs = net.embedding.weight if net.embedding is not None else torch.eye(net.vocab_size, device=rnn.weight_ih_l0.device)
            w_ih0, w_hh0, b_ih0, b_hh0 = rnn.all_weights[0]
            table = inputs.to(w_ih0.dtype) @ order(w_ih0).T + order(b_ih0)
            if self.cell == "gru":  # GRU keeps b_hh apart: it sits inside r * (W_hn h + b_hn)
                self.hh0 = PackedLinear(w_hh0, b_hh0, batch_hint)
            else:
                table = table + order(b_hh0)
                self.hh0 = PackedLinear(order(w_hh0), torch.zeros_like(b_hh0), batch_hint)
            self.table = table.contiguous()
            self.deeper: list[tuple[PackedLinear, ...]] = []
            for layer in range(1, self.num_layers):
                w_ih, w_hh, b_ih, b_hh = rnn.all_weights[layer]
                if self.cell == "gru":
                    self.deeper.append((PackedLinear(w_ih, b_ih, batch_hint), PackedLinear(w_hh, b_hh, batch_hint)))
                else:
                    self.deeper.append((PackedLinear(order(torch.cat([w_ih, w_hh], 1)), order(b_ih + b_hh), batch_hint),))
            scale = net.logit_scale
            adaptive = getattr(net, "adaptive", None)
            if adaptive is not None:
                self.out = PackedAdaptive(adaptive, scale, batch_hint)
            else:
                self.out = PackedLinear(net.decoder.weight * scale, net.decoder.bias * scale, batch_hint)

    @staticmethod
    def supports(net: nn.Module) -> bool:
        """An :class:`~rnnlm.models.RNNLM` (its parts, looked up by name: this package sits
        below ``models``) in eval mode whose recurrent module has the plain layout."""
        rnn = getattr(net, "rnn", None)
        parts = all(hasattr(net, name) for name in ("embedding", "logit_scale", "cell", "vocab_size"))
        output = getattr(net, "adaptive", None) is not None or isinstance(getattr(net, "decoder", None), nn.Linear)
        return (isinstance(rnn, (nn.LSTM, nn.GRU, nn.RNN)) and parts and output and not net.training
                and not rnn.bidirectional and rnn.bias and getattr(rnn, "proj_size", 0) == 0)

    def _lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_size
        ifo = torch.sigmoid(gates[:, : 3 * hidden])
        g = torch.tanh(gates[:, 3 * hidden :])
        c = torch.addcmul(ifo[:, hidden : 2 * hidden] * c, ifo[:, :hidden], g)
        return ifo[:, 2 * hidden :] * torch.tanh(c), c

    @staticmethod
    def _gru(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def __call__(self, tokens: torch.Tensor, state):
        batch = tokens.size(0)
        if state is None:
            zeros = self.table.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros.clone()) if self.cell == "lstm" else zeros
        hs, cs = state if self.cell == "lstm" else (state, None)
        new_h, new_c = [], []
        x = self.table.index_select(0, tokens)  # layer 0's input projection, biases included
        for layer in range(self.num_layers):
            h = hs[layer]
            if self.cell == "gru":
                if layer == 0:
                    gi, gh = x, self.hh0(h)
                else:
                    ih, hh = self.deeper[layer - 1]
                    gi, gh = ih(x), hh(h)
                x = self._gru(gi, gh, h)
            else:
                if layer == 0:
                    gates = self.hh0(h).add_(x)
                else:
                    gates = self.deeper[layer - 1][0](torch.cat([x, h], 1))
                if self.cell == "lstm":
                    x, c = self._lstm(gates, cs[layer])
                    new_c.append(c)
                else:
                    x = torch.tanh(gates)
            new_h.append(x)
        logits = self.out(x)
        h_stack = torch.stack(new_h)
        return logits, ((h_stack, torch.stack(new_c)) if self.cell == "lstm" else h_stack)
