"""What the playground shows of a model: each token's probability and its rivals, one unit's
activation along a text, and the units whose activation tracks a simple property of it."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.generation.decoding import DecodeSettings, sampling_probs
from rnnlm.models.evaluation import stateful_chunks
from rnnlm.models.network import RNNLM

TOP = 5  # candidates shown for each position
CHUNK = 512  # positions per forward: [CHUNK, vocab] probabilities stay small at 16k words
DECIMALS = 5  # probabilities sent to the page


def vocabulary_pieces(tokenizer: Tokenizer) -> list[str]:
    """Each id's text on its own, for showing candidates (a partial UTF-8 byte shows as U+FFFD)."""
    return [tokenizer.decode([i]) for i in range(len(tokenizer))]


def rounded(values: torch.Tensor, decimals: int = DECIMALS) -> list:
    """``values.tolist()`` to ``decimals`` places: what the page shows, in a third of the JSON."""
    return values.double().round(decimals=decimals).tolist()


def top_candidates(probs: torch.Tensor, k: int = TOP) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` most likely ids of each row of ``probs`` [N, V] and their (rounded) probabilities."""
    values, ids = probs.topk(min(k, probs.size(-1)), dim=-1)
    return ids.tolist(), rounded(values)


class TokenTable:
    """Each scored token's probability and the ``TOP`` candidates the model ranked highest
    (``prob``, ``top_ids``, ``top_probs``); with ``settings``, the same under the distribution
    sampling with them draws from (``sampled_*``). Fed chunk by chunk: see :meth:`add`."""

    def __init__(self, settings: DecodeSettings | None = None):
        self.settings = settings
        self.columns: dict[str, list] = {}

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One chunk's logits [..., V] and the targets [...] they predict."""
        logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        for start in range(0, targets.numel(), CHUNK):
            rows = slice(start, start + CHUNK)
            self._add("", logits[rows].float().softmax(-1), targets[rows])
            if self.settings is not None:
                self._add("sampled_", sampling_probs(logits[rows], self.settings), targets[rows])

    def _add(self, prefix: str, probs: torch.Tensor, targets: torch.Tensor) -> None:
        ids_k, probs_k = top_candidates(probs)
        for key, values in (("prob", rounded(probs.gather(-1, targets[:, None]).squeeze(-1))), ("top_ids", ids_k),
                            ("top_probs", probs_k)):
            self.columns.setdefault(prefix + key, []).extend(values)


@torch.no_grad()
def token_probabilities(net: nn.Module, ids: torch.Tensor, settings: DecodeSettings | None = None) -> dict[str, list]:
    """:class:`TokenTable` of every token of ``ids`` after the first, read as ``sample.py
    mode=score`` reads it (the state carried from the text's start)."""
    table = TokenTable(settings)
    for logits, targets in stateful_chunks(net, ids, 1, CHUNK):
        table.add(logits, targets)
    return table.columns


def _single_layers(rnn: nn.RNNBase) -> list[nn.RNNBase]:
    """One one-layer module per layer of ``rnn``, sharing its weights: each layer's outputs."""
    layers = []
    for layer in range(rnn.num_layers):
        single = type(rnn)(rnn.input_size if layer == 0 else rnn.hidden_size, rnn.hidden_size, 1, batch_first=True,
                           **({"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}))
        single.load_state_dict(dict(zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), rnn.all_weights[layer])))
        layers.append(single.to(rnn.weight_ih_l0.device).eval())
    return layers


def state_kinds(net: RNNLM) -> list[str]:
    """The states a unit has: an LSTM's hidden and cell state, a GRU's or RNN's hidden state."""
    return ["hidden", "cell"] if net.cell == "lstm" else ["hidden"]


@torch.no_grad()
def layer_states(net: RNNLM, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer, each state's value after every token of ``ids`` ([tokens, hidden] fp32,
    from the text's start): ``hidden``, and for an LSTM ``cell``, recovered exactly from the
    layer's gates (``nn.LSTM`` returns only the last one)."""
    x = net.embed(ids.to(next(net.parameters()).device, torch.long)[None])
    states = []
    for layer, single in enumerate(_single_layers(net.rnn)):
        hidden, _ = single(x)
        found = {"hidden": hidden[0].float()}
        if net.cell == "lstm":
            found["cell"] = _lstm_cells(net.rnn, layer, x[0], hidden[0])
        states.append(found)
        x = hidden
    return states


def _lstm_cells(rnn: nn.LSTM, layer: int, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The cell states of one LSTM layer, given its inputs and hidden states [T, *]: the gates
    of every step in one product (each step's previous hidden state is known), then the cell
    recurrence c = f * c + i * g, which is element-wise."""
    previous = torch.cat([hidden.new_zeros(1, hidden.size(1)), hidden[:-1]])
    w_ih, w_hh, b_ih, b_hh = (weight.float() for weight in rnn.all_weights[layer])
    gates = inputs.float() @ w_ih.T + b_ih + previous.float() @ w_hh.T + b_hh
    i, f, g, _ = gates.chunk(4, dim=1)
    i, f, g = i.sigmoid(), f.sigmoid(), g.tanh()
    cells = torch.empty_like(i)
    c = torch.zeros_like(i[0])
    for t in range(i.size(0)):
        c = torch.addcmul(f[t] * c, i[t], g[t])
        cells[t] = c
    return cells


# Simple properties of text, per character: what "find cells" looks for.
SPEAKER_LINE = re.compile(r"^[A-Z][A-Z '.,&-]*:?$")


def _inside(text: str, opening: str, closing: str) -> np.ndarray:
    depth, out = 0, np.zeros(len(text))
    for i, ch in enumerate(text):
        if ch in opening:
            depth += 1
        out[i] = depth > 0
        if ch in closing:
            depth = max(depth - 1, 0)
    return out


def _in_quotes(text: str) -> np.ndarray:
    inside, out = False, np.zeros(len(text))
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
            out[i] = 1.0
        else:
            out[i] = inside
    return out


def _line_position(text: str) -> np.ndarray:
    out, column = np.zeros(len(text)), 0
    for i, ch in enumerate(text):
        out[i] = column
        column = 0 if ch == "\n" else column + 1
    return out


def _speaker_name(text: str) -> np.ndarray:
    """1 on the characters of a line that names a speaker: capitals only, as the plays print
    them (``HERMIA:``)."""
    out, start = np.zeros(len(text)), 0
    for line in text.split("\n"):
        if SPEAKER_LINE.match(line) and sum(ch.isalpha() for ch in line) >= 2:
            out[start : start + len(line)] = 1.0
        start += len(line) + 1
    return out


def _in_word(text: str) -> np.ndarray:
    return np.array([ch.isalpha() for ch in text], dtype=np.float64)


PROPERTIES: dict[str, tuple[str, Callable[[str], np.ndarray]]] = {
    "quotes": ('inside "double quotes"', _in_quotes),
    "brackets": ("inside (round) or [square] brackets", lambda text: _inside(text, "([", ")]")),
    "line_position": ("characters since the line began", _line_position),
    "speaker": ("on a speaker's name (a line of capitals: HERMIA:)", _speaker_name),
    "word": ("on a letter (inside a word)", _in_word),
}


def token_ends(pieces: Sequence[str]) -> np.ndarray:
    """The index of the last character of each token's text (the one before it, for a piece
    that adds no character)."""
    return np.maximum(np.cumsum([len(p) for p in pieces]) - 1, 0)


def rank_units(states: list[dict[str, torch.Tensor]], pieces: Sequence[str], top: int = 8) -> dict[str, dict]:
    """For each property in :data:`PROPERTIES`: the ``top`` units (layer, state, unit) whose
    activation after each token correlates most strongly (Pearson, either sign) with the
    property at that token's last character. A property that never varies in the text gets
    no units and says so."""
    text = "".join(pieces)
    ends = token_ends(pieces)
    columns, names = [], []
    for layer, found in enumerate(states):
        for kind, values in found.items():
            columns.append(values.cpu().double())
            names += [(layer, kind, unit) for unit in range(values.size(1))]
    activations = torch.cat(columns, dim=1)
    centred = activations - activations.mean(0)
    spread = centred.norm(dim=0)
    ranked = {}
    for key, (description, measure) in PROPERTIES.items():
        prop = torch.from_numpy(measure(text)[ends] if text else np.zeros(0))
        prop = prop - prop.mean() if prop.numel() else prop
        if prop.numel() < 3 or float(prop.norm()) == 0:
            ranked[key] = {"description": description, "units": [], "note": "the text never changes in this property"}
            continue
        corr = (centred.T @ prop) / (spread * prop.norm()).clamp(min=1e-12)
        corr[spread == 0] = 0.0
        best = corr.abs().topk(min(top, corr.numel())).indices.tolist()
        ranked[key] = {"description": description, "units": [
            {"layer": names[i][0], "state": names[i][1], "unit": names[i][2], "corr": round(float(corr[i]), 4)} for i in best]}
    return ranked

