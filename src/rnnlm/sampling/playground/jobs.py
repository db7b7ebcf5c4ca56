"""The playground's work, off the event loop: generation as a stream of events, scoring, the
cell view and the cell finder. Each takes a :class:`PlaygroundModel` and plain values, and
returns (or yields) JSON-ready data."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from rnnlm.generation.decoding import DecodeSettings, beam_search, is_greedy, sampling_probs, steps
from rnnlm.generation.plan import DecodePlan, score_text, text_ids
from rnnlm.generation.stopping import TextStreams, text_pieces
from rnnlm.sampling.playground.analysis import (
    TokenTable,
    rank_units,
    rounded,
    token_probabilities,
    top_candidates,
)
from rnnlm.sampling.playground.catalogue import PlaygroundModel
from rnnlm.utils.errors import ConfigError


def generation_events(model: PlaygroundModel, plan: DecodePlan, num_samples: int, seed: int,
                      cancelled: threading.Event) -> Iterator[dict[str, Any]]:
    """``{"type": "step", ...}`` per decoding step (each stream's new text, the probability
    of its token at T=1 and under the sampling distribution, and the top candidates of both),
    then ``{"type": "done", ...}``. Beam search, whose beams are reordered until the end,
    yields one ``{"type": "beam", ...}`` per sample instead. A stream whose text reaches the
    plan's stop string ends there: its later steps have ``ids[i]`` ``None``. Ends early once
    ``cancelled`` or every stream has ended."""
    start = time.perf_counter()
    first_ms = None
    tokenizer, net = model.loaded.tokenizer, model.net
    if plan.settings.beam:
        result = beam_search(net, plan.ids, plan.length, num_samples, plan.settings, seed,
                             TextStreams(tokenizer, 1, plan.stop), should_stop=cancelled.is_set)
        for i, tokens in enumerate(result.tokens):
            if cancelled.is_set():  # its client left: no tables for nobody
                break
            details = token_probabilities(net, torch.tensor(plan.ids + tokens)) if tokens else {"prob": [], "top_ids": [], "top_probs": []}
            tail = slice(len(details["prob"]) - len(tokens), None)
            yield {"type": "beam", "stream": i, "ids": tokens, "pieces": text_pieces(tokenizer, tokens, plan.stop),
                   "p": details["prob"][tail], "top": [details["top_ids"][tail], details["top_probs"][tail]]}
        first_ms = (time.perf_counter() - start) * 1000
        generated, nll_per_token = sum(len(t) for t in result.tokens), result.nll
    else:
        nll = torch.zeros(num_samples, dtype=torch.float64)
        counts = torch.zeros(num_samples, dtype=torch.float64)
        text = TextStreams(tokenizer, num_samples, plan.stop)
        greedy = is_greedy(plan.settings)
        for tokens, logits in steps(net, plan.ids, plan.length, num_samples, plan.settings, seed):
            if cancelled.is_set() or all(text.ended):
                break
            active = torch.tensor([not e for e in text.ended], dtype=torch.float64)
            log_probs = logits.float().log_softmax(-1)
            raw = log_probs.exp()
            adjusted = raw if greedy else sampling_probs(logits, plan.settings)
            rows = torch.arange(num_samples)
            chosen_raw, chosen_adjusted = raw[rows, tokens], adjusted[rows, tokens]
            nll -= log_probs[rows, tokens].double().cpu() * active  # as sample.py's: the log-softmax, finite
            counts += active
            top, atop = top_candidates(raw), top_candidates(adjusted)
            if greedy:  # the distribution greedy decoding draws from: all on the top token
                atop = ([row[:1] for row in top[0]], [[1.0] for _ in top[0]])
                chosen_adjusted = torch.ones_like(chosen_raw)
            ids = [None if e else t for e, t in zip(text.ended, tokens.tolist())]
            if first_ms is None:
                first_ms = (time.perf_counter() - start) * 1000
            yield {"type": "step", "ids": ids, "pieces": text(tokens.tolist()),
                   "p": rounded(chosen_raw), "q": rounded(chosen_adjusted), "top": top, "atop": atop}
        generated, nll_per_token = int(counts.sum()), (nll / counts.clamp(min=1)).tolist()
    seconds = time.perf_counter() - start
    yield {"type": "done", "seed": seed, "tokens": generated, "seconds": round(seconds, 4),
           "first_ms": None if first_ms is None else round(first_ms, 2), "stopped": cancelled.is_set(),
           "nll_per_token": [round(n, 5) for n in nll_per_token],
           "tokens_per_s": round(generated / seconds, 1) if seconds > 0 else None}


def score_job(model: PlaygroundModel, text: str, settings: DecodeSettings, unknown: str) -> dict[str, Any]:
    """``sample.py mode=score``'s figures for ``text`` plus each token's probability and rivals,
    at T=1 and under ``settings`` (what sampling with them would have drawn from)."""
    start = time.perf_counter()
    tokenizer = model.loaded.tokenizer
    ids, chars = text_ids(model.loaded, text, unknown)
    table = TokenTable(None if is_greedy(settings) else settings)
    figures = score_text(model.loaded, ids, chars, each_chunk=table.add)  # one pass for both
    details, sampled = table.columns, table.settings
    result = {"figures": figures, "ids": ids.tolist(), "pieces": text_pieces(tokenizer, ids.tolist()),
              "p": details["prob"], "top": [details["top_ids"], details["top_probs"]],
              "unknown": tokenizer.unknown(text)[:20]}
    if sampled is not None:
        result["q"] = details.get("sampled_prob", [])
        result["atop"] = [details.get("sampled_top_ids", []), details.get("sampled_top_probs", [])]
    result["server_ms"] = round((time.perf_counter() - start) * 1000, 2)
    return result


def _states(model: PlaygroundModel, text: str, unknown: str) -> tuple[list[str], list[dict[str, torch.Tensor]]]:
    ids, _ = text_ids(model.loaded, text, unknown)
    if ids.numel() == 0:
        raise ConfigError("the text is empty: paste some text to look inside the model with")
    return text_pieces(model.loaded.tokenizer, ids.tolist()), model.states(text)


def cell_job(model: PlaygroundModel, text: str, layer: Any, state: Any, unit: Any, unknown: str) -> dict[str, Any]:
    """One unit's activation after each token of ``text``."""
    net = model.net
    kinds = model.info()["states"]
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < net.num_layers:
        raise ConfigError(f"layer={layer!r}; it must be an integer in [0, {net.num_layers - 1}] (this model has {net.num_layers} layers)")
    if state not in kinds:
        raise ConfigError(f"state={state!r}; this {net.cell.upper()} has {' and '.join(repr(k) for k in kinds)}")
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < net.hidden_size:
        raise ConfigError(f"unit={unit!r}; it must be an integer in [0, {net.hidden_size - 1}] (the hidden size is {net.hidden_size})")
    pieces, states = _states(model, text, unknown)
    values = states[layer][state][:, unit]
    return {"pieces": pieces, "values": rounded(values, 4), "layer": layer, "state": state,
            "unit": unit, "max_abs": round(float(values.abs().max()), 4)}


def find_job(model: PlaygroundModel, text: str, unknown: str) -> dict[str, Any]:
    """The units that track each simple property of ``text`` best (see :func:`rank_units`)."""
    pieces, states = _states(model, text, unknown)
    return {"properties": rank_units(states, pieces), "tokens": len(pieces)}
