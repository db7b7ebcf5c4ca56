"""From settings and text to what the engine takes: a generation's checked plan (settings, prompt
ids, stop string) and a text's ids and scores. Shared by ``sample.py`` and the playground."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.generation.decoding import DecodeSettings
from rnnlm.generation.prompt import check_known, encode_prompt
from rnnlm.generation.stopping import check_stop
from rnnlm.models.evaluation import score_ids
from rnnlm.models.loading import LoadedModel
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_value

MAX_BEAM_LENGTH = 100_000  # beams hold their whole sequences; sampling streams instead


def text_ids(loaded: LoadedModel, text: str, unknown: str = "replace") -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of a text to score (pieces the vocabulary lacks: see ``check_known``) and the
    characters each stands for there (an ``<unk>``: those it replaced)."""
    check_known(loaded.tokenizer, text, "the text to score", unknown)
    ids, chars = loaded.tokenizer.encode_with_chars(text)
    return torch.from_numpy(ids.astype("int64")), torch.from_numpy(chars)


def score_text(loaded: LoadedModel, ids: torch.Tensor, chars: torch.Tensor,
               each_chunk: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """What ``mode=score`` reports of a text's ids: loss, perplexity, bits per token and per
    character as written (``chars``: see :func:`text_ids`; ``each_chunk``: see
    ``evaluation.score_totals``)."""
    return score_ids(loaded.net, ids, chars=chars, each_chunk=each_chunk)


def settings_from(cfg: Mapping[str, Any]) -> DecodeSettings:
    """The decoding settings among ``cfg``'s options; those it lacks keep their defaults."""
    return DecodeSettings(**{f.name: cfg[f.name] for f in fields(DecodeSettings) if f.name in cfg})


@dataclass
class DecodePlan:
    """A generation's checked settings, its prompt and the ids it primes with."""

    settings: DecodeSettings
    length: int
    prompt: str
    ids: list[int]
    stop: str  # "" for none


def decode_plan(cfg: Mapping[str, Any], tokenizer: Tokenizer, read_prompt: Callable[[], str],
                max_beam_length: int = MAX_BEAM_LENGTH) -> DecodePlan:
    """Check ``cfg``'s decoding options against the checkpoint's vocabulary (one-line errors),
    and the stop string, then read the prompt and encode it."""
    settings = settings_from(cfg).validate(len(tokenizer), cfg["num_samples"])
    length = cfg["length"]
    check_value("length", length)
    if settings.beam and length > max_beam_length:
        raise ConfigError(f"length={length} is too long for beam search (at most {max_beam_length}); use strategy=sample")
    stop = check_stop(tokenizer, cfg.get("stop") or "")
    prompt = read_prompt()
    return DecodePlan(settings, length, prompt, encode_prompt(tokenizer, prompt, cfg.get("unknown", "replace")), stop)
