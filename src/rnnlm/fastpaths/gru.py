"""A multilayer GRU for fp32 CPU training that keeps its matrix products large.

Why: ``nn.LSTM`` trains on the CPU through one fused oneDNN kernel per layer, but ``nn.GRU``
has none (oneDNN's GRU is not wired into PyTorch). Its fallback runs the cell step by step,
and its backward computes the recurrent weight gradient as two small products per time step
instead of one large one: a step becomes a long run of skinny ``aten::mm``/``aten::addmm``
calls that keep the cores poorly fed, so the GRU trains slower per token than the LSTM
despite fewer FLOPs (3 gates to 4; see docs/performance.md).

Here only what must be sequential is: per time step one product ``h @ W_hh.T`` forward and
one ``dgates @ W_hh`` backward, on oneDNN-packed weights. Everything else is one large
product per layer, through oneDNN too: the input projections of all time steps before the
loop, and the weight gradients ``dW_ih``, ``dW_hh`` (and their biases) after it. The
parameters stay those of the ``nn.GRU`` (same names, same checkpoints);
``tests/test_fastpaths.py`` checks outputs and gradients against it.

Chosen by :func:`rnnlm.fastpaths.recurrent_forward` for fp32 on the CPU outside
``torch.compile`` and autocast; GPUs keep cuDNN's GRU and ``bf16-mixed`` keeps ``nn.GRU``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.fastpaths.packed import PackedLinear, matmul_nt


def usable(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`gru_forward` should replace ``rnn(x, h0)`` for this call."""
    return (
        isinstance(rnn, nn.GRU)
        and rnn.batch_first
        and x.dim() == 3
        and x.size(0) > 0
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and rnn.weight_hh_l0.dtype == torch.float32
        and rnn.bias
        and not rnn.bidirectional
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class InputProjection(torch.autograd.Function):
    """``x @ W_ih.T + b_ih`` for all time steps at once (``x`` [N, I]), its three products on
    :func:`matmul_nt`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w_ih)
        return matmul_nt(x, w_ih).add_(b_ih)

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        x, w_ih = ctx.saved_tensors
        d_x = matmul_nt(d_out, w_ih.T) if ctx.needs_input_grad[0] else None
        d_w = matmul_nt(d_out.T, x.T) if ctx.needs_input_grad[1] else None
        d_b = d_out.sum(0) if ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b


class GRURecurrence(torch.autograd.Function):
    """``hs [T, B, H]`` from the precomputed input projections ``gi [T, B, 3H]`` (``b_ih``
    included), the initial state ``h0 [B, H]`` and ``W_hh [3H, H]``, ``b_hh [3H]``.

    PyTorch's gate order (r, z, n)::

        r, z = sigmoid(gi_rz + W_hrz h + b_hrz)
        n = tanh(gi_n + r * (W_hn h + b_hn))
        h' = n + z * (h - n)
    """

    @staticmethod
    def forward(ctx, gi: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        steps, batch, three_h = gi.shape
        hidden = three_h // 3
        project = PackedLinear(w_hh, b_hh, batch)
        hs = gi.new_empty(steps, batch, hidden)
        rz = gi.new_empty(steps, batch, 2 * hidden)
        n = gi.new_empty(steps, batch, hidden)
        hn = gi.new_empty(steps, batch, hidden)  # W_hn h + b_hn, which backward needs
        h = h0
        for t in range(steps):
            gh = project(h)
            torch.add(gi[t, :, : 2 * hidden], gh[:, : 2 * hidden], out=rz[t]).sigmoid_()
            hn[t] = gh[:, 2 * hidden :]
            torch.addcmul(gi[t, :, 2 * hidden :], rz[t, :, :hidden], hn[t], out=n[t]).tanh_()
            h = torch.lerp(n[t], h, rz[t, :, hidden:], out=hs[t])  # n + z * (h - n)
        ctx.save_for_backward(h0, w_hh, hs, rz, n, hn)
        return hs

    @staticmethod
    def backward(ctx, d_hs: torch.Tensor):
        h0, w_hh, hs, rz, n, hn = ctx.saved_tensors
        steps, batch, hidden = hs.shape
        r, z = rz[..., :hidden], rz[..., hidden:]
        h_prevs = torch.cat([h0[None], hs[:-1]])
        # Every factor that does not depend on the incoming gradient, for all steps at once.
        one_minus_z = 1 - z
        d_tanh = 1 - n * n
        hn_d_sigmoid_r = hn * r * (1 - r)
        h_minus_n_d_sigmoid_z = (h_prevs - n) * z * one_minus_z
        back_project = PackedLinear(w_hh.T, None, batch)  # dgates @ W_hh
        d_gh = d_hs.new_empty(steps, batch, 3 * hidden)  # d(W_hh h + b_hh)
        d_gi_n = d_hs.new_empty(steps, batch, hidden)  # d(gi_n); gi's r/z part equals gh's
        d_h = torch.zeros_like(h0)
        for t in range(steps - 1, -1, -1):
            d_h = d_h + d_hs[t]
            d_a = torch.mul(d_h * one_minus_z[t], d_tanh[t], out=d_gi_n[t])  # n's pre-activation
            torch.mul(d_a, hn_d_sigmoid_r[t], out=d_gh[t, :, :hidden])
            torch.mul(d_h, h_minus_n_d_sigmoid_z[t], out=d_gh[t, :, hidden : 2 * hidden])
            torch.mul(d_a, r[t], out=d_gh[t, :, 2 * hidden :])
            d_h = torch.addcmul(back_project(d_gh[t]), d_h, z[t])  # dgates @ W_hh + dh * z
        d_gi = torch.cat([d_gh[..., : 2 * hidden], d_gi_n], 2) if ctx.needs_input_grad[0] else None
        flat_d_gh = d_gh.reshape(-1, 3 * hidden)
        d_w_hh = matmul_nt(flat_d_gh.T, h_prevs.reshape(-1, hidden).T) if ctx.needs_input_grad[2] else None
        d_b_hh = flat_d_gh.sum(0) if ctx.needs_input_grad[3] else None
        return d_gi, d_h, d_w_hh, d_b_hh


def gru_forward(rnn: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None,
                weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn(x, h0)`` for a batch-first ``nn.GRU``, through :class:`GRURecurrence`; ``weights``
    (parameter name -> tensor) stand in for the module's own where given.

    Between layers it applies ``rnn.dropout`` in training mode, as ``nn.GRU`` does. The
    outputs are saved for backward: modifying them in place makes autograd refuse.
    """
    batch = x.size(0)
    if h0 is None:
        h0 = x.new_zeros(rnn.num_layers, batch, rnn.hidden_size)
    layer_input = x.transpose(0, 1)  # time-major: each step's rows are contiguous
    finals = []
    given = {id(getattr(rnn, name)): w for name, w in (weights or {}).items()}
    for layer in range(rnn.num_layers):
        if layer > 0 and rnn.dropout and rnn.training:
            layer_input = F.dropout(layer_input, rnn.dropout, training=True)
        w_ih, w_hh, b_ih, b_hh = (given.get(id(w), w) for w in rnn.all_weights[layer])
        steps = layer_input.size(0)
        gi = InputProjection.apply(layer_input.reshape(steps * batch, -1), w_ih, b_ih).view(steps, batch, -1)
        layer_input = GRURecurrence.apply(gi, h0[layer].contiguous(), w_hh, b_hh)
        finals.append(layer_input[-1])
    return layer_input.transpose(0, 1), torch.stack(finals)
