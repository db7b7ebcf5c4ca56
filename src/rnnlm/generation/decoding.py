"""One decoding engine: primed once with the prompt, then one token per step, batched.

The recurrent state is carried from step to step, so the prefix is never re-run. Every
strategy works on a batch of streams: ``sample``/``greedy`` decode ``num_samples`` streams
together; ``beam`` expands all beams in one forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.fastpaths import decoding_step
from rnnlm.generation.stopping import TextStreams
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_args


@dataclass
class DecodeSettings:
    """Every knob of decoding, validated once with errors that name the allowed range."""

    strategy: str = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    beam_width: int = 5
    length_penalty: float = 0.0  # beam scores are divided by length ** length_penalty

    @property
    def beam(self) -> bool:
        return self.strategy in ("beam", "stochastic_beam")

    def validate(self, vocab_size: int, num_samples: int = 1) -> DecodeSettings:
        """Each setting by its rule (``rnnlm.utils.options``), then what relates them."""
        check_args("", strategy=self.strategy, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                   beam_width=self.beam_width, length_penalty=self.length_penalty, num_samples=num_samples)
        if self.top_k is not None and self.top_k > vocab_size:
            raise ConfigError(f"top_k={self.top_k} is above the vocabulary's {vocab_size} tokens; give at most "
                              f"{vocab_size}, or null for no limit")
        if self.beam and num_samples > self.beam_width:
            raise ConfigError(f"num_samples={num_samples} > beam_width={self.beam_width}; beam search returns at most beam_width sequences")
        return self


@dataclass
class Generation:
    """Generated token ids per stream, the model's NLL of each (nats/token at T=1), beam scores."""

    tokens: list[list[int]]
    nll: list[float]
    scores: list[float] = field(default_factory=list)


def select_state(state, index: torch.Tensor):
    """Reorder or repeat the batch rows of a (possibly tuple) recurrent state."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the ``top_k`` best and outside the ``top_p`` nucleus to -inf."""
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t.float()`` without the call when it is already fp32 (each call counts at batch 1)."""
    return t if t.dtype == torch.float32 else t.float()


def is_greedy(settings: DecodeSettings) -> bool:
    return settings.strategy == "greedy" or settings.temperature == 0


def sampling_probs(logits: torch.Tensor, settings: DecodeSettings) -> torch.Tensor:
    """The distribution sampling draws from: softmax(logits / T) within top-k and top-p (fp32)."""
    logits = as_float(logits) if settings.temperature == 1 else as_float(logits) / settings.temperature
    return filter_logits(logits, settings.top_k, settings.top_p).softmax(-1)


def next_tokens(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row: argmax for greedy/T=0, else sample :func:`sampling_probs`."""
    if is_greedy(settings):
        return logits.argmax(-1)
    return sample_one(sampling_probs(logits, settings), generator)


def sample_one(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row drawn from ``probs`` [B, V]: ``torch.multinomial(probs, 1)`` exactly.

    It is the race ``multinomial`` itself runs for one sample (argmax of p / q with
    q ~ Exp(1), the same random numbers, so seeded output is unchanged), without the
    validation it adds, which costs three reductions and two host syncs per call: at batch 1,
    where the arithmetic is tiny, that fixed cost dominates sampling (see docs/performance.md).
    ``probs`` here come from a softmax.
    """
    race = torch.empty_like(probs).exponential_(generator=generator)
    return torch.div(probs, race, out=race).argmax(-1)


def prime(net: nn.Module, prompt: Sequence[int], device: torch.device, chunk: int = 4096):
    """Run the prompt through the network (in chunks, carrying the state); return the last
    logits [1, V] and the state. Chunking bounds memory for very long prompts."""
    ids = torch.as_tensor(list(prompt), dtype=torch.long, device=device)[None]
    state = None
    for start in range(0, ids.size(1), chunk):
        logits, state = net(ids[:, start : start + chunk], state)
    return logits[:, -1], state


def begin(net: nn.Module, prompt: Sequence[int], seed: int | None):
    """What every strategy starts from: the net's device, a generator seeded with ``seed``
    (``None``: torch's global one), and :func:`prime`'s logits and state for ``prompt``."""
    if not prompt:
        raise ConfigError("the prompt is empty: give at least one token to start from")
    device = next(net.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
    return device, generator, *prime(net, prompt, device)


@torch.no_grad()
def steps(
    net: nn.Module,
    prompt: Sequence[int],
    length: int,
    num_samples: int = 1,
    settings: DecodeSettings | None = None,
    seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens [num_samples], logits [num_samples, V])`` for each new step: the tokens
    picked and the logits they were picked from (calibrated, before temperature).

    Greedy or sampled decoding. Memory does not grow with ``length``: nothing is kept here,
    so a caller can write tokens out as they come.
    """
    settings = settings or DecodeSettings()
    device, generator, logits, state = begin(net, prompt, seed)
    logits = logits.expand(num_samples, -1)
    state = select_state(state, torch.zeros(num_samples, dtype=torch.long, device=device))
    step = decoding_step(net, num_samples)
    for _ in range(length):
        tokens = next_tokens(logits, settings, generator)
        yield tokens, logits
        logits, state = step(tokens, state)


def generate(
    net: nn.Module,
    prompt: Sequence[int],
    length: int,
    num_samples: int = 1,
    settings: DecodeSettings | None = None,
    seed: int | None = None,
    text: TextStreams | None = None,
    on_step: Callable[[list[str]], None] | None = None,
    keep: int | None = None,
) -> Generation:
    """Decode ``length`` new tokens per stream, or until every stream's text has reached
    ``text``'s stop string.

    ``text`` turns each step's tokens into each stream's new text, which ``on_step(pieces)``
    sees as it comes (e.g. to stream it to a file; a stream that has ended adds ""); ``keep``
    bounds how many tokens per stream are returned, so memory stays bounded however long the
    generation. The returned NLL covers every generated token.
    """
    settings = settings or DecodeSettings()
    if settings.beam:
        return beam_search(net, prompt, length, num_samples, settings, seed, text)
    kept: list[torch.Tensor] = []
    active = [True] * num_samples
    ends = torch.full((num_samples,), length, dtype=torch.long)  # exclusive end per stream
    nll_sum = torch.zeros(num_samples, dtype=torch.float64)
    mask = None  # until a stream stops: the NLL needs no masking
    for step, (tokens, logits) in enumerate(steps(net, prompt, length, num_samples, settings, seed)):
        nll = F.cross_entropy(as_float(logits), tokens, reduction="none")  # the model's, at T=1
        if not tokens.is_cpu:
            tokens, nll = tokens.cpu(), nll.cpu()
        nll_sum += nll if mask is None else nll.double() * mask
        if keep is None or len(kept) < keep:
            kept.append(tokens)
        if text is None:
            continue
        pieces = text(tokens.tolist())
        if on_step is not None:
            on_step(pieces)
        ended = [i for i, alive in enumerate(active) if alive and text.ended[i]]
        if ended:
            ends[ended] = step + 1
            active = [not e for e in text.ended]
            mask = torch.tensor(active, dtype=torch.float64)
            if not any(active):
                break
    if length == 0:
        return Generation([[] for _ in range(num_samples)], [float("nan")] * num_samples)
    ids = torch.stack(kept, 1)
    return Generation(
        [ids[i, : int(ends[i])].tolist() for i in range(num_samples)],
        (nll_sum / ends.clamp(min=1)).tolist(),
    )


@torch.no_grad()
def beam_search(
    net: nn.Module,
    prompt: Sequence[int],
    length: int,
    num_samples: int = 1,
    settings: DecodeSettings | None = None,
    seed: int | None = None,
    text: TextStreams | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generation:
    """Keep the ``beam_width`` most likely continuations by summed log-probability
    (``should_stop()``, checked every step, ends the search early with the beams so far).

    ``stochastic_beam`` samples each beam's candidates from softmax(logits / T) instead of
    taking its top ones, then prunes to the most likely ``beam_width`` as usual. Beams
    whose text reaches ``text``'s stop string are set aside; the result ranks finished and surviving beams by
    ``score / length ** length_penalty``.
    """
    settings = settings or DecodeSettings(strategy="beam")
    device, generator, logits, state = begin(net, prompt, seed)
    if length == 0:
        return Generation([[] for _ in range(num_samples)], [float("nan")] * num_samples, [0.0] * num_samples)
    width = settings.beam_width
    step = decoding_step(net, width)
    scores = torch.zeros(1, device=device)
    seqs = torch.zeros(1, 0, dtype=torch.long, device=device)
    if text is not None:
        text.select([0])  # one stream, which the beams copy
    finished: list[tuple[list[int], float]] = []
    for _ in range(length):
        if should_stop is not None and should_stop():
            break
        logp = F.log_softmax(logits.float(), -1)  # [beams, V]
        vocab = logp.size(-1)
        if settings.strategy == "stochastic_beam" and settings.temperature > 0:
            k = min(width, vocab)
            probs = filter_logits(logp / settings.temperature, settings.top_k, settings.top_p).softmax(-1)
            cand_tok = torch.multinomial(probs, k, replacement=False, generator=generator)  # [beams, k]
            cand_score = scores[:, None] + logp.gather(-1, cand_tok)
            # multinomial without replacement pads with zero-probability tokens when fewer
            # than k remain after top-k/top-p/temperature: those must never win.
            cand_score = cand_score.masked_fill(probs.gather(-1, cand_tok) == 0, float("-inf"))
            flat = cand_score.flatten()
            best = flat.topk(min(width, flat.numel())).indices
            best = best[flat[best].isfinite()]
            beam_idx, tokens = best // k, cand_tok.flatten()[best]
            scores = flat[best]
        else:
            flat = (scores[:, None] + logp).flatten()
            best = flat.topk(min(width, flat.numel())).indices
            beam_idx, tokens = best // vocab, best % vocab
            scores = flat[best]
        seqs = torch.cat([seqs[beam_idx], tokens[:, None]], dim=1)
        state = select_state(state, beam_idx)
        if text is not None and text.stop:
            text.select(beam_idx.tolist())
            text(tokens.tolist())
            if any(text.ended):
                finished += [(seqs[i].tolist(), float(scores[i])) for i, e in enumerate(text.ended) if e]
                alive = [i for i, e in enumerate(text.ended) if not e]
                keep = torch.tensor(alive, dtype=torch.long, device=device)
                seqs, scores, tokens = seqs[keep], scores[keep], tokens[keep]  # each beam in one place only
                if len(finished) >= width or not alive:
                    break
                state = select_state(state, keep)
                text.select(alive)
        logits, state = step(tokens, state)
    pool = finished + list(zip(seqs.tolist(), scores.tolist()))
    ranked = [(s, v, v / float(max(len(s), 1)) ** settings.length_penalty) for s, v in pool]
    top = sorted(ranked, key=lambda item: item[2], reverse=True)[:num_samples]
    return Generation([s for s, _, _ in top], [-v / max(len(s), 1) for s, v, _ in top], [n for _, _, n in top])
