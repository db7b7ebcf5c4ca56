"""Turning text into token ids, with a clear answer for what the vocabulary lacks."""

from __future__ import annotations

import logging

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_value

log = logging.getLogger(__name__)


def check_known(tokenizer: Tokenizer, text: str, what: str = "the prompt", unknown: str = "replace") -> None:
    """Warn, naming them, that the pieces of ``text`` the vocabulary lacks become ``<unk>``,
    or with ``unknown="error"`` raise a :class:`ConfigError` that lists them."""
    check_value("unknown", unknown)
    missing = tokenizer.unknown(text)
    if not missing:
        return
    shown = ", ".join(repr(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
    message = f"{what} has {len(missing)} {tokenizer.kind}(s) not in the checkpoint's vocabulary: {shown}"
    if unknown == "error":
        raise ConfigError(f"{message}; remove them or pass unknown=replace to map them to <unk>")
    log.warning("%s; mapped to <unk> (unknown=error refuses them)", message)


def encode_prompt(tokenizer: Tokenizer, prompt: str | None, unknown: str = "replace") -> list[int]:
    """Ids of ``prompt`` (see :func:`check_known`) as :meth:`Tokenizer.encode_context` reads
    it; an empty prompt starts from the document separator."""
    if not prompt:
        ids = [int(i) for i in tokenizer.encode_context(tokenizer.start) if i != 0]
        return ids or [1 if len(tokenizer) > 1 else 0]
    check_known(tokenizer, prompt.rstrip() or prompt, "the prompt", unknown)  # the tail is encoded as context
    return [int(i) for i in tokenizer.encode_context(prompt)]
