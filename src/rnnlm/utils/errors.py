"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class RnnlmError(Exception):
    """An error caused by the user's input or config, reported without a traceback.

    Entry points (``train.py``, ``sample.py``) print ``error: <message>`` and exit with
    status 2; set ``HYDRA_FULL_ERROR=1`` to see the traceback instead.
    """

    exit_code = 2
    prefix = "error"  # what the entry points print before the message


class CorpusError(RnnlmError):
    """The corpus is missing, empty, undecodable or too short."""


class ConfigError(RnnlmError, ValueError):
    """A setting has a value outside its allowed range."""


class CheckpointError(RnnlmError):
    """A checkpoint is missing, corrupted, unsafe or from another project.

    ``reason`` is the short cause (e.g. "unreadable"), for lists of checkpoints skipped."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class Interrupted(RnnlmError):
    """Ctrl-C or SIGTERM ended the run after saving; the exit status is 128 + the signal."""

    prefix = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
