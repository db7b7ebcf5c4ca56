"""Every option checked by its kind where it enters, before anything is built.

Numbers: each numeric option of ``train.py`` and ``sample.py`` has a rule below (an
integer or a real number, its range, whether null is allowed); nan and inf are refused
everywhere. ``tests/test_options.py`` walks the composed configs and fails for a numeric
option without a rule, so a new option cannot go unchecked. Paths: :func:`existing_file`
and :func:`existing_dir` tell a missing path from a file of the wrong kind or one that
cannot be read.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rnnlm.utils.errors import ConfigError


@dataclass(frozen=True)
class Number:
    """An integer (``integer=True``) or real number in ``[low, high]`` (ends excluded with
    ``*_open``), null if ``nullable``, or one of the ``special`` values (e.g. -1 = no limit).
    ``fraction_or_count``: an integer count >= ``low`` or a fraction in (0, 1] (0.0 too when
    ``low`` is 0), as Lightning's ``val_check_interval``/``limit_*_batches`` take them."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    special: tuple[int, ...] = ()
    fraction_or_count: bool = False
    text_ok: bool = False  # strings (and lists) pass to the component, which checks them itself

    def allowed(self) -> str:
        if self.fraction_or_count:
            text = f"an integer >= {int(self.low if self.low is not None else 1)} (steps or batches) or a fraction in (0, 1]"
        else:
            text = "an integer" if self.integer else "a finite number"
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self._fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {self._fmt(self.high)}")
            if bounds:
                text += " " + " and ".join(bounds)
        if self.special:
            text += " (or " + " / ".join(str(s) for s in self.special) + ")"
        if self.nullable:
            text += ", or null"
        if self.text_ok:
            text += ", or a string such as 'auto'"
        return text

    @staticmethod
    def _fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.text_ok and isinstance(value, str):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # (an int of 400 digits overflows isfinite)
            return False
        if isinstance(value, int) and value in self.special:
            return True
        if self.fraction_or_count:
            low = self.low if self.low is not None else 1
            if isinstance(value, float):
                return 0 < value <= 1 or (low == 0 and value == 0)
            return value >= low
        if self.integer and not isinstance(value, int):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


COUNT = Number(integer=True, low=1)  # an integer >= 1
OPTIONAL_COUNT = Number(integer=True, low=1, nullable=True)
NON_NEGATIVE_INT = Number(integer=True, low=0)
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)
PROBABILITY = Number(low=0, high=1, high_open=True)  # dropout, decay: [0, 1)
UNIT = Number(low=0, high=1)
SEED = Number(integer=True, low=0, high=2**32 - 1, nullable=True)

# Rules by option (fnmatch patterns over dotted keys; list items are numbered: data.splits.0).
# The first matching pattern decides.
TRAIN_OPTIONS: dict[str, Number] = {
    "seed": SEED,
    "data.seed": SEED,
    "data.max_vocab": Number(integer=True, low=2, nullable=True),  # <unk> and at least one real token
    "data.vocab_size": Number(integer=True, low=257, nullable=True),  # BPE: <unk> and the 256 bytes
    "data.min_freq": COUNT,
    "data.seq_len": COUNT,
    "data.stride": OPTIONAL_COUNT,
    "data.batch_size": COUNT,
    "data.eval_batch_size": OPTIONAL_COUNT,
    "data.splits.*": UNIT,
    "data.calibration": Number(low=0, high=1, high_open=True),
    "data.num_workers": NON_NEGATIVE_INT,
    "model.hidden_size": COUNT,
    "model.num_layers": COUNT,
    "model.dropout": PROBABILITY,
    "model.input_dropout": PROBABILITY,
    "model.embedding_dim": OPTIONAL_COUNT,
    "model.onehot_max_vocab": COUNT,
    "model.adaptive_above": COUNT,
    "model.adaptive_cutoffs.*": COUNT,
    "model.adaptive_div_value": Number(low=1),
    "model.stateful_eval_lanes": OPTIONAL_COUNT,
    "model.optimizer.lr": POSITIVE,
    "model.optimizer.weight_decay": NON_NEGATIVE,
    "model.optimizer.momentum": PROBABILITY,
    "model.optimizer.eps": POSITIVE,
    "model.optimizer.betas.*": PROBABILITY,
    "model.optimizer.alpha": PROBABILITY,
    "model.scheduler.total_steps": COUNT,
    "model.scheduler.warmup_steps": NON_NEGATIVE_INT,
    "model.scheduler.min_ratio": UNIT,
    "trainer.devices": Number(integer=True, low=1, special=(-1,), text_ok=True),  # 2, -1, "auto", "0,1"
    "trainer.devices.*": NON_NEGATIVE_INT,  # [0, 1]: device ids
    "trainer.num_nodes": COUNT,
    "trainer.max_epochs": Number(integer=True, low=0, special=(-1,), nullable=True),
    "trainer.min_epochs": Number(integer=True, low=0, nullable=True),
    "trainer.max_steps": Number(integer=True, low=1, special=(-1,)),
    "trainer.min_steps": Number(integer=True, low=0, nullable=True),
    "trainer.val_check_interval": Number(fraction_or_count=True, low=1, nullable=True),
    "trainer.check_val_every_n_epoch": OPTIONAL_COUNT,
    "trainer.limit_*_batches": Number(fraction_or_count=True, low=0, nullable=True),
    "trainer.gradient_clip_val": Number(low=0, nullable=True),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_sanity_val_steps": Number(integer=True, low=0, special=(-1,)),
    "callbacks.*.save_top_k": Number(integer=True, low=0, special=(-1,)),
    "callbacks.*.every_n_train_steps": Number(integer=True, low=0, nullable=True),
    "callbacks.*.every_n_epochs": Number(integer=True, low=0, nullable=True),
    "callbacks.*.every_n_steps": NON_NEGATIVE_INT,
    "callbacks.*.temperatures.*": NON_NEGATIVE,
    "callbacks.*.length": NON_NEGATIVE_INT,
    "callbacks.*.window_size": Number(integer=True, low=2),  # Lightning's Throughput needs two points
    "callbacks.*.refresh_rate": NON_NEGATIVE_INT,
    "callbacks.*.decay": UNIT,
    "callbacks.*.patience": NON_NEGATIVE_INT,
    "callbacks.*.min_delta": NON_NEGATIVE,
}

SAMPLE_OPTIONS: dict[str, Number] = {
    "seed": SEED,
    "length": NON_NEGATIVE_INT,
    "num_samples": COUNT,
    "temperature": NON_NEGATIVE,
    "top_k": OPTIONAL_COUNT,
    "top_p": Number(low=0, high=1, low_open=True, nullable=True),
    "beam_width": COUNT,
    "length_penalty": Number(),
    "keep_tokens": OPTIONAL_COUNT,
    "port": Number(integer=True, low=0, high=65535),
}

SKIPPED_GROUPS = ("hydra", "logger")  # Hydra's own settings; loggers take no numbers we use


def leaves(cfg: DictConfig) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf outside :data:`SKIPPED_GROUPS` that holds a value
    of its own (not an interpolation)."""

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            name = f"{prefix}{key}"
            child = node._get_node(key)
            if name in SKIPPED_GROUPS:
                continue
            if isinstance(child, (DictConfig, ListConfig)):
                yield from walk(child, f"{name}.")
            elif OmegaConf.is_interpolation(node, key):
                continue  # a copy of another option (total_steps: ${trainer.max_steps}), checked there
            else:
                yield name, child._value()

    yield from walk(cfg, "")


def rule_for(key: str, rules: dict[str, Number]) -> Number | None:
    for pattern, rule in rules.items():
        if fnmatch.fnmatchcase(key, pattern):
            return rule
    return None


def display(key: str) -> str:
    """``data.splits.0`` -> ``data.splits[0]``."""
    parts = key.split(".")
    return parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])


def check_value(key: str, value: Any, rules: dict[str, Number]) -> None:
    """Raise a one-line :class:`ConfigError` if ``value`` breaks the rule for ``key``."""
    rule = rule_for(key, rules)
    if rule is None or rule.accepts(value):
        return
    shown = repr(value) if isinstance(value, str) else value
    raise ConfigError(
        f"{display(key)}={shown} is not allowed: it must be {rule.allowed()}; "
        "change the override (or drop it for the default)"
    )


def check_numbers(cfg: DictConfig, rules: dict[str, Number]) -> None:
    """Raise a one-line :class:`ConfigError` for the first option that breaks its rule."""
    for key, value in leaves(cfg):
        check_value(key, value, rules)


def _describe_problem(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def existing_file(option: str, value: Any, fix: str) -> Path:
    """``value`` as a readable file, else a one-line error: missing, a directory, unreadable."""
    path = Path(str(value)).expanduser()
    problem = _describe_problem(path)
    if problem is None and path.is_dir():
        problem = "is a directory, not a file"
    elif problem is None and not path.is_file():
        problem = "is not a regular file"
    if problem:
        raise ConfigError(f"{option}={path} {problem}; {fix}")
    return path


def existing_dir(option: str, value: Any, fix: str) -> Path:
    path = Path(str(value)).expanduser()
    problem = _describe_problem(path)
    if problem is None and not path.is_dir():
        problem = "is a file, not a directory"
    if problem is None and not os.access(path, os.X_OK):
        problem = "cannot be listed (permission denied)"
    if problem:
        raise ConfigError(f"{option}={path} {problem}; {fix}")
    return path
