"""One decoding step of an :class:`RNNLM` without ``nn.LSTM``'s per-call overhead.

Generating one token per call, ``nn.LSTM``/``nn.GRU`` spend most of their time in setup
(weight packing, workspace allocation) rather than arithmetic. This step function runs the
same cell equations on weights arranged once for it:

- the first layer's input projection is folded into a per-token table
  (``embedding @ W_ih0.T + biases``), so embedding lookup and first matmul become one gather;
- each deeper layer does a single ``addmm`` on ``[x, h] @ [W_ih; W_hh].T``;
- weights are pre-transposed and contiguous.

It takes and returns the state in ``nn.LSTM``/``nn.GRU``/``nn.RNN``'s layout, so the decoding
loop can switch between the two freely; ``tests/test_generation.py`` checks it matches the
module within 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnlm.models.rnn import RNNLM


class FastStep(nn.Module):
    """``step(tokens [B], state) -> (logits [B, V], state)`` for an RNNLM in eval mode."""

    def __init__(self, net: RNNLM):
        super().__init__()
        rnn, self.cell, self.num_layers = net.rnn, net.cell, net.num_layers
        with torch.no_grad():
            inputs = net.embedding.weight if net.embedding is not None else torch.eye(net.vocab_size)
            w_ih0, b_ih0, b_hh0 = rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
            table = inputs.to(w_ih0.dtype) @ w_ih0.T + b_ih0
            if self.cell != "gru":  # GRU keeps b_hh apart: it sits inside r * (W_hn h + b_hn)
                table = table + b_hh0
            self.register_buffer("table", table.contiguous())
            self.register_buffer("w_hh0", rnn.weight_hh_l0.T.contiguous())
            self.register_buffer("b_hh0", b_hh0.clone())
            for layer in range(1, self.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
                if self.cell == "gru":
                    self.register_buffer(f"w_ih{layer}", w_ih.T.contiguous())
                    self.register_buffer(f"b_ih{layer}", b_ih.clone())
                    self.register_buffer(f"w_hh{layer}", w_hh.T.contiguous())
                    self.register_buffer(f"b_hh{layer}", b_hh.clone())
                else:
                    self.register_buffer(f"w{layer}", torch.cat([w_ih, w_hh], 1).T.contiguous())
                    self.register_buffer(f"b{layer}", (b_ih + b_hh).clone())
            self.register_buffer("w_out", net.decoder.weight.T.contiguous())
            self.register_buffer("b_out", net.decoder.bias.clone())

    @staticmethod
    def supports(net: nn.Module) -> bool:
        rnn = getattr(net, "rnn", None)
        return isinstance(net, RNNLM) and not rnn.bidirectional and rnn.bias and rnn.proj_size == 0 and not net.training

    def _lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    @staticmethod
    def _gru(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def forward(self, tokens: torch.Tensor, state):
        batch = tokens.size(0)
        if state is None:
            zeros = self.w_out.new_zeros(self.num_layers, batch, self.w_out.size(0))
            state = (zeros, zeros.clone()) if self.cell == "lstm" else zeros
        hs = state[0] if self.cell == "lstm" else state
        cs = state[1] if self.cell == "lstm" else None
        new_h, new_c = [], []
        x = None
        for layer in range(self.num_layers):
            h = hs[layer]
            if self.cell == "gru":
                if layer == 0:
                    gi = self.table.index_select(0, tokens)
                    gh = torch.addmm(self.b_hh0, h, self.w_hh0)
                else:
                    gi = torch.addmm(getattr(self, f"b_ih{layer}"), x, getattr(self, f"w_ih{layer}"))
                    gh = torch.addmm(getattr(self, f"b_hh{layer}"), h, getattr(self, f"w_hh{layer}"))
                x = self._gru(gi, gh, h)
            else:
                if layer == 0:
                    gates = torch.addmm(self.table.index_select(0, tokens), h, self.w_hh0)
                else:
                    gates = torch.addmm(getattr(self, f"b{layer}"), torch.cat([x, h], 1), getattr(self, f"w{layer}"))
                if self.cell == "lstm":
                    x, c = self._lstm(gates, cs[layer])
                    new_c.append(c)
                else:
                    x = torch.tanh(gates)
            new_h.append(x)
        logits = torch.addmm(self.b_out, x, self.w_out)
        h_stack = torch.stack(new_h)
        return logits, ((h_stack, torch.stack(new_c)) if self.cell == "lstm" else h_stack)
