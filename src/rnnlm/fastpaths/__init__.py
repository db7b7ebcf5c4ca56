"""Fast paths: code that runs in place of ``torch.nn``'s recurrent modules where it is faster.

The rest of the package calls the two functions below, and they alone choose:

==========================  =====================================  ==============================  ==========================================
path                        replaces                               when                            why
==========================  =====================================  ==============================  ==========================================
:mod:`.gru` (training)      ``nn.GRU(x, h0)``, forward + backward  fp32 on the CPU, no autocast,   ``nn.GRU`` has no fused CPU kernel; its
                                                                   no ``torch.compile``            fallback runs skinny products per step
:mod:`.decode` (decoding)   ``RNNLM(tokens[:, None], state)``      an RNNLM in eval mode           a one-token call of ``nn.LSTM`` is mostly
                                                                                                   setup (weight packing, workspaces)
:mod:`.packed` (both)       ``x @ W.T + b``, many calls, few rows  CPU with oneDNN                 MKL re-packs the weight on every call
==========================  =====================================  ==============================  ==========================================

Each has an equality test against the module it replaces in ``tests/test_fastpaths.py``;
docs/performance.md has the measurements. :func:`torch_nn_only` turns them off (the
benchmark's before/after).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from rnnlm.fastpaths import gru
from rnnlm.fastpaths.decode import FastStep

ENABLED = True


def recurrent_forward(rnn: nn.RNNBase, inputs: torch.Tensor, state: Any,
                      weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
    """``rnn(inputs, state)``, or the fast path that computes the same for this call.
    ``weights`` (parameter name -> tensor) replace the module's own for this call."""
    if ENABLED and gru.usable(rnn, inputs):
        return gru.gru_forward(rnn, inputs, state, weights)
    if weights is not None:
        return torch.func.functional_call(rnn, weights, (inputs, state))
    return rnn(inputs, state)


def decoding_step(net: nn.Module, batch_hint: int = 1) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]:
    """``step(tokens [B], state) -> (logits [B, V], state)`` for decoding one token at a time:
    :class:`FastStep` where it applies, else one call of the module per token.
    ``batch_hint``: the rows a step will usually see (oneDNN picks its blocking for it)."""
    if ENABLED and FastStep.supports(net):
        return FastStep(net, batch_hint)

    def module_step(tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = net(tokens[:, None], state)
        return out[:, -1], state

    return module_step


@contextlib.contextmanager
def torch_nn_only() -> Iterator[None]:
    """Within this block every call runs ``torch.nn``'s own modules."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before
