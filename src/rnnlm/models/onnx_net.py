"""An exported model (``python export.py``) run by ONNX Runtime behind the interface the decoding
engine and scoring use, so ``sample.py ckpt=<dir>/model.onnx`` is the same code as for a
checkpoint: ``net(tokens [batch, time], state) -> (logits [batch, time, vocab], state)``.

``rnnlm.json`` beside ``model.onnx`` says what the graph is (cell, sizes) and holds the
tokenizer; it is read as untrusted input, like a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.utils.errors import CheckpointError
from rnnlm.utils.options import check_args

FORMAT = "rnnlm-onnx/1"
META = "rnnlm.json"  # beside model.onnx
STATES = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",)}  # the graph's state inputs; outputs add "_out"
ONNX_HINT = "export the model again with `python export.py ckpt=<checkpoint> out=<dir>`"


def read_meta(path: Path) -> tuple[dict[str, Any], Tokenizer]:
    """``rnnlm.json`` beside ``path``, checked field by field, and its tokenizer."""
    meta_path = path.with_name(META)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {META} is not beside it (it holds the tokenizer); {ONNX_HINT}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{meta_path} does not read as JSON ({type(err).__name__}); {ONNX_HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an rnnlm export (format {FORMAT}); {ONNX_HINT}")
    try:
        check_args("model", cell=meta.get("cell"), hidden_size=meta.get("hidden_size"),
                   num_layers=meta.get("num_layers"), vocab_size=meta.get("vocab_size"))
        tokenizer = Tokenizer.from_dict(meta.get("tokenizer"))
    except ValueError as err:
        raise CheckpointError(f"{meta_path} is damaged: {err}; {ONNX_HINT}") from None
    if len(tokenizer) != meta["vocab_size"]:
        raise CheckpointError(f"{meta_path}: a vocabulary of {len(tokenizer)} tokens but the model predicts {meta['vocab_size']}")
    return meta, tokenizer


class OnnxNet(nn.Module):
    """``model.onnx`` on ONNX Runtime's CPU provider, called as :class:`~rnnlm.models.RNNLM` is."""

    def __init__(self, path: Path, meta: dict[str, Any], threads: int = 0):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice (the cores)
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # the runtime's own error types; its message names the fault
            raise CheckpointError(f"{path} does not load in ONNX Runtime ({str(err).splitlines()[0][:160]}); {ONNX_HINT}") from None
        self.cell, self.num_layers = meta["cell"], meta["num_layers"]
        self.hidden_size, self.vocab_size = meta["hidden_size"], meta["vocab_size"]
        self.states = STATES[self.cell]
        expected = ["tokens", *self.states]
        if [i.name for i in self.session.get_inputs()] != expected:
            raise CheckpointError(f"{path} takes {[i.name for i in self.session.get_inputs()]}, not {expected}; {ONNX_HINT}")
        # No weights of its own: this empty parameter tells the decoding engine its device (the CPU).
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None:
            zeros = torch.zeros(self.num_layers, tokens.size(0), self.hidden_size)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        parts = state if isinstance(state, tuple) else (state,)
        feeds = {"tokens": tokens.numpy().astype(np.int64, copy=False),
                 **{name: part.float().contiguous().numpy() for name, part in zip(self.states, parts)}}
        logits, *new = (torch.from_numpy(array) for array in self.session.run(None, feeds))
        return logits, (tuple(new) if self.cell == "lstm" else new[0])
