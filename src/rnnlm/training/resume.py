"""Resuming a run: which checkpoint to continue from, and whether it fits the config.

Lightning's ``ckpt_path="last"`` takes the newest ``last*.ckpt`` whatever its state; a run
killed by a crash (or written by a tool that does not write atomically) could leave an
unreadable one, so the newest checkpoint that loads is chosen here and the ones skipped
are named with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.models.loading import checkpoint_tokenizer, newest_loadable, read_checkpoint
from rnnlm.models.module import NETWORK_ARGUMENTS, NETWORK_DEFAULTS
from rnnlm.models.network import SHAPE_FREE_ARGUMENTS
from rnnlm.utils.errors import RnnlmError
from rnnlm.utils.options import existing_path
from rnnlm.utils.rundir import CHECKPOINT_DIR, RESUME_HINT

log = logging.getLogger(__name__)
CKPT_PATH_HINT = "pass ckpt_path=<a .ckpt file>, ckpt_path=last, or resume_dir=<an earlier run dir>"
# Settings that shape the network: resuming with another value cannot load the weights
# (the vocabulary is compared on its own below).
ARCHITECTURE = tuple(k for k in NETWORK_ARGUMENTS if k not in (*SHAPE_FREE_ARGUMENTS, "vocab_size"))


def resolve_ckpt_path(ckpt_path: Any, output_dir: Path, resuming: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``train.py`` continues from, read once here (Lightning reads it again).
    ``last``: the newest loadable one in this run's ``checkpoints/``; with none yet, None (a
    fresh start, as Lightning does, so that a requeued job can always pass it) unless
    ``resuming`` (``resume_dir=``); checkpoints that all fail to load are an error.
    Otherwise a file that must be a readable rnnlm checkpoint."""
    if str(ckpt_path) == "last":
        directory = output_dir / CHECKPOINT_DIR
        option, hint = (f"resume_dir={output_dir}", RESUME_HINT) if resuming else ("ckpt_path=last", CKPT_PATH_HINT)
        if not resuming and not (directory.is_dir() and any(directory.glob("*.ckpt"))):
            log.warning("ckpt_path=last: no checkpoint in %s yet; starting from scratch", directory)
            return None
        return newest_loadable(directory, option, hint)
    path = existing_path("ckpt_path", ckpt_path, CKPT_PATH_HINT)
    return path, read_checkpoint(path, "ckpt_path", CKPT_PATH_HINT)


def check_resumable(path: Path, checkpoint: dict[str, Any]) -> None:
    """A checkpoint holds what Lightning restores a fit from (weights-only ones do not)."""
    missing = [key for key in ("optimizer_states", "loops", "state_dict") if key not in checkpoint]
    if missing:
        raise RnnlmError(f"cannot resume from {path}: it holds no {' or '.join(missing)} (saved with weights only?); "
                         "sample from it with sample.py, or start a new run without resume_dir=/ckpt_path=")


def check_architecture(path: Path, checkpoint: dict[str, Any], hparams: dict[str, Any]) -> None:
    """The config builds the network the checkpoint holds, else name every setting that differs."""
    saved = checkpoint.get("hyper_parameters") or {}
    # A setting newer than the checkpoint was built with its default (e.g. output=softmax).
    built = {key: saved.get(key, NETWORK_DEFAULTS.get(key)) for key in ARCHITECTURE} if saved else {}
    asked = {key: hparams.get(key, NETWORK_DEFAULTS.get(key)) for key in built}
    differ = [f"model.{key}={asked[key]!r} (the checkpoint has {value!r})" for key, value in built.items() if value != asked[key]]
    if "vocab_size" in saved and saved["vocab_size"] != hparams.get("vocab_size"):
        differ.append(
            f"a vocabulary of {hparams.get('vocab_size')} tokens (the checkpoint has {saved['vocab_size']}: "
            "the corpus or data.tokenizer/max_vocab/min_freq differ)"
        )
    elif "tokenizer" in saved and "tokenizer" in hparams:
        theirs = checkpoint_tokenizer(path, saved, RESUME_HINT).identity()
        ours = Tokenizer.from_dict(hparams["tokenizer"]).identity()
        if theirs != ours:
            moved = sum(a != b for a, b in zip(ours["tokens"], theirs["tokens"]))
            what = f"{moved} of its {len(ours['tokens'])} token ids mean other tokens" if moved else \
                "the same tokens, split from text another way (BPE merges, or the word split)"
            differ.append(f"another vocabulary of the same size ({what}: the corpus (data.path) or data settings differ)")
    if differ:
        raise RnnlmError(
            f"cannot resume from {path}: the config asks for {'; '.join(differ)}; resume with the run's own "
            "settings, or start a new run without resume_dir=/ckpt_path="
        )
