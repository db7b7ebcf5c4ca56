"""Turning a prompt into token ids, with a clear answer for what the vocabulary lacks."""

from __future__ import annotations

import warnings

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.errors import ConfigError


def encode_prompt(tokenizer: Tokenizer, prompt: str | None, unknown: str = "error") -> list[int]:
    """Ids of ``prompt``; an empty prompt starts from the document separator.

    Pieces the vocabulary lacks raise a :class:`ConfigError` listing them, or with
    ``unknown="replace"`` become ``<unk>`` with a warning.
    """
    if unknown not in ("error", "replace"):
        raise ConfigError(f"unknown={unknown!r}; use 'error' or 'replace'")
    if not prompt:
        ids = [int(i) for i in tokenizer.encode(tokenizer.start) if i != 0]
        return ids or [1 if len(tokenizer) > 1 else 0]
    missing = tokenizer.unknown(prompt)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
        message = f"the prompt has {len(missing)} {tokenizer.kind}(s) not in the checkpoint's vocabulary: {shown}"
        if unknown == "error":
            raise ConfigError(f"{message}; remove them or pass unknown=replace to map them to <unk>")
        warnings.warn(f"{message}; mapped to <unk>", stacklevel=2)
    return [int(i) for i in tokenizer.encode(prompt)]
