"""A checkpoint as ``model.onnx``: the network's forward pass over ``[batch, time]`` token ids
and its recurrent state, with the logits ``sample.py`` samples from (calibrated; an adaptive
softmax as its full log-probabilities), batch and time dynamic. Beside it ``rnnlm.json``: the
cell, the sizes and the tokenizer, plain data for any runtime.

PyTorch's TorchScript-based exporter writes ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as ONNX's own
LSTM/GRU/RNN operators; ``tests/test_export.py`` checks every cell and output against the
PyTorch module (the newer dynamo exporter needs ``onnxscript`` and has had recurrent-cell
errors, so it is not used)."""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnlm.fastpaths import torch_nn_only
from rnnlm.models.loading import LoadedModel
from rnnlm.models.network import RNNLM
from rnnlm.models.onnx_net import FORMAT, META, STATES
from rnnlm.utils.files import write_text, write_with

OPSET = 17
MODEL = "model.onnx"


class _Graph(nn.Module):
    """The network with its state as separate tensors, as an ONNX graph takes it."""

    def __init__(self, net: RNNLM):
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.net(tokens, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


def onnx_bytes(net: RNNLM) -> bytes:
    """The ONNX model of ``net`` in eval mode (checked by ``onnx.checker``)."""
    import onnx

    names = STATES[net.cell]
    graph = _Graph(net).eval()
    example = (torch.zeros(1, 2, dtype=torch.long), *(torch.zeros(net.num_layers, 1, net.hidden_size) for _ in names))
    dynamic = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"},
               **{n: {1: "batch"} for n in names}, **{f"{n}_out": {1: "batch"} for n in names}}
    buffer = io.BytesIO()
    was_training = net.training
    try:
        with torch_nn_only(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing an RNN with a given state
            torch.onnx.export(graph, example, buffer, input_names=["tokens", *names],
                              output_names=["logits", *(f"{n}_out" for n in names)], dynamic_axes=dynamic,
                              opset_version=OPSET, dynamo=False)
    finally:
        net.train(was_training)  # the exporter restores the wrapper's mode, which is not the net's
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return buffer.getvalue()


def quantized_int8(model: bytes) -> bytes:
    """Weights as int8 with ONNX Runtime's dynamic quantization (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="rnnlm-export-") as scratch:  # the quantizer works on files
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        source.write_bytes(model)
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return target.read_bytes()


def export_onnx(loaded: LoadedModel, out: Path, quantize: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` and ``rnnlm.json`` (with ``extra``) into ``out``; return what was written."""
    net = loaded.net
    model = onnx_bytes(net)
    if quantize == "int8":
        model = quantized_int8(model)
    out.mkdir(parents=True, exist_ok=True)
    write_with(out / MODEL, lambda handle: handle.write(model))
    meta = {"format": FORMAT, "cell": net.cell, "num_layers": net.num_layers, "hidden_size": net.hidden_size,
            "vocab_size": net.vocab_size, "states": list(STATES[net.cell]), "quantized": quantize,
            "global_step": loaded.global_step, "source": str(loaded.path), "tokenizer": loaded.tokenizer.to_dict(), **(extra or {})}
    write_text(out / META, json.dumps(meta, ensure_ascii=False))
    return {"model": out / MODEL, "bytes": len(model), "meta": meta}
