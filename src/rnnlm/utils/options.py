"""The rule of every option rnnlm reads, declared once, checked where the option enters.

:data:`OPTIONS` gives each option of ``train.py`` and ``sample.py`` (and the playground's
requests, which take ``sample.py``'s names) its kind: an integer or a finite number between
two bounds, or one of a few names. Both bounds always: the upper one keeps the computation
finite (a width, a length, a penalty of 10**30 overflows or fills memory). The entry points
check the whole config before anything is built (:func:`check_config`), the page checks each
request value (:func:`check_value`), and the constructors (``RNNLM``, ``CorpusDataModule``,
``DecodeSettings``) check their arguments through :func:`check_args`, so a network built from
Python is held to the same rules. What relates two options (``top_k`` against the vocabulary,
``num_samples`` against ``beam_width``) is checked where both are known.
``tests/test_options.py`` walks the composed configs and fails for a numeric option without a
rule or without both bounds. Paths: :func:`existing_path`.
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
    """An integer (``integer=True``) or finite number in ``[low, high]`` (ends excluded with
    ``*_open``), null if ``nullable``, or one of the ``special`` values (e.g. -1 = no limit).
    ``fraction_or_count``: an integer count in ``[low, high]`` or a fraction in (0, 1] (0.0 too
    when ``low`` is 0), as Lightning's ``val_check_interval``/``limit_*_batches`` take them."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    special: tuple[int, ...] = ()
    fraction_or_count: bool = False
    text_ok: bool = False  # strings (and lists) pass to the component, which checks them itself

    def allowed(self) -> str:
        if self.fraction_or_count:
            text = f"an integer from {_fmt(self.low)} to {_fmt(self.high)} (steps or batches) or a fraction in (0, 1]"
        else:
            text = "an integer" if self.integer else "a finite number"
            text += f" {'>' if self.low_open else '>='} {_fmt(self.low)} and {'<' if self.high_open else '<='} {_fmt(self.high)}"
        if self.special:
            text += " (or " + " / ".join(str(s) for s in self.special) + ")"
        if self.nullable:
            text += ", or null"
        if self.text_ok:
            text += ", or a string such as 'auto'"
        return text

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
        if self.fraction_or_count and isinstance(value, float):
            return 0 < value <= 1 or (self.low == 0 and value == 0)
        if (self.integer or self.fraction_or_count) and not isinstance(value, int):
            return False
        above_low = value > self.low if self.low_open else value >= self.low
        return above_low and (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class Choice:
    """One of ``names``."""

    names: tuple[str, ...]
    nullable: bool = False

    def allowed(self) -> str:
        return "one of " + ", ".join(self.names) + (", or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        return (value is None and self.nullable) or (isinstance(value, str) and value in self.names)


@dataclass(frozen=True)
class Flag:
    """true or false."""

    def allowed(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


def _fmt(x: float) -> str:
    """1000000000 as 1,000,000,000; 65535 as itself (a port, a width)."""
    return (f"{int(x):,}" if abs(x) >= 100_000 else str(int(x))) if float(x).is_integer() else str(x)


def count(high: int, nullable: bool = False, low: int = 1) -> Number:
    """An integer in ``[low, high]``."""
    return Number(low, high, integer=True, nullable=nullable)


Rule = Number | Choice | Flag
FLAG = Flag()
BIG = 10**9  # steps, batches, epochs: far beyond any run, small enough that no product overflows
WIDTH = 2**14  # units of a layer: a 16k-unit LSTM layer already holds 2.1 G weights
CACHE = 10_000  # positions a continuous cache holds: at most ~3-4 GB of similarities (rnnlm.models.cache.MOST_LANES)
VOCAB = 2**24  # vocabulary entries (and ids): ids are stored as int32 at most
SEED = Number(0, 2**32 - 1, integer=True, nullable=True)
PROBABILITY = Number(0, 1, high_open=True)  # dropout, decay: [0, 1)
UNIT = Number(0, 1)
BPE_MIN_VOCAB = 257  # a byte-level BPE vocabulary holds <unk> and the 256 bytes
STRATEGIES = ("greedy", "sample", "beam", "stochastic_beam")

# Rules by option (fnmatch patterns over dotted keys; list items are numbered: data.splits.0).
# The first matching pattern decides. Keys without a dot are sample.py's (and the page's).
OPTIONS: dict[str, Rule] = {
    "seed": SEED,
    "data.seed": SEED,
    "data.tokenizer": Choice(("char", "word", "bpe")),
    "data.order": Choice(("shuffle", "lanes")),
    "data.max_vocab": count(VOCAB, nullable=True, low=2),  # <unk> and at least one real token
    "data.vocab_size": count(2**20, nullable=True, low=BPE_MIN_VOCAB),
    "data.min_freq": count(BIG),
    "data.seq_len": count(2**20),
    "data.stride": count(2**20, nullable=True),
    "data.batch_size": count(2**16),
    "data.eval_batch_size": count(2**16, nullable=True),
    "data.splits.*": UNIT,
    "data.calibration": PROBABILITY,
    "data.num_workers": count(256, low=0),
    "model.cell": Choice(("lstm", "gru", "rnn")),
    "model.output": Choice(("auto", "softmax", "adaptive")),
    "model.vocab_size": count(VOCAB),
    "model.hidden_size": count(WIDTH),
    "model.num_layers": count(64),
    "model.dropout": PROBABILITY,
    "model.input_dropout": PROBABILITY,
    "model.embedding_dropout": PROBABILITY,
    "model.weight_drop": PROBABILITY,
    "model.embedding_dim": count(WIDTH, nullable=True),
    "model.onehot_max_vocab": count(2**16),
    "model.adaptive_above": count(VOCAB),
    "model.adaptive_cutoffs.*": count(VOCAB),
    "model.adaptive_div_value": Number(1, 64),
    "model.stateful_eval_lanes": count(2**16, nullable=True),
    "model.cache_size": count(CACHE, nullable=True),
    "corpus_sizing.small_below_tokens": count(BIG, low=0),
    "model.optimizer.lr": Number(0, 1000, low_open=True),  # SGD recipes use up to 20-40
    "model.optimizer.weight_decay": Number(0, 100),
    "model.optimizer.momentum": PROBABILITY,
    "model.optimizer.eps": Number(0, 1, low_open=True),
    "model.optimizer.betas.*": PROBABILITY,
    "model.optimizer.alpha": PROBABILITY,
    "model.scheduler.total_steps": count(BIG),
    "model.scheduler.warmup_steps": count(BIG, low=0),
    "model.scheduler.min_ratio": UNIT,
    "model.scheduler.factor": Number(0, 1, low_open=True),  # the plateau's LR cut
    "model.scheduler.patience": count(BIG, low=0),
    "model.scheduler.threshold": Number(0, 1e6),
    "trainer.devices": Number(1, 2**16, integer=True, special=(-1,), text_ok=True),  # 2, -1, "auto", "0,1"
    "trainer.devices.*": count(2**16, low=0),  # [0, 1]: device ids
    "trainer.num_nodes": count(2**16),
    "trainer.max_epochs": Number(0, BIG, integer=True, special=(-1,), nullable=True),
    "trainer.min_epochs": count(BIG, nullable=True, low=0),
    "trainer.max_steps": Number(1, BIG, integer=True, special=(-1,)),
    "trainer.min_steps": count(BIG, nullable=True, low=0),
    "trainer.val_check_interval": Number(1, BIG, fraction_or_count=True, nullable=True),
    "trainer.check_val_every_n_epoch": count(BIG, nullable=True),
    "trainer.limit_*_batches": Number(0, BIG, fraction_or_count=True, nullable=True),
    "trainer.gradient_clip_val": Number(0, 1e6, nullable=True),
    "trainer.accumulate_grad_batches": count(2**16),
    "trainer.log_every_n_steps": count(BIG),
    "trainer.num_sanity_val_steps": Number(0, BIG, integer=True, special=(-1,)),
    "callbacks.*.save_top_k": Number(0, BIG, integer=True, special=(-1,)),
    "callbacks.*.every_n_train_steps": count(BIG, nullable=True, low=0),
    "callbacks.*.every_n_epochs": count(BIG, nullable=True, low=0),
    "callbacks.*.every_n_steps": count(BIG, low=0),
    "callbacks.*.temperatures.*": Number(0, 100),
    "callbacks.*.length": count(2**20, low=0),
    "callbacks.*.window_size": count(2**20, low=2),  # Lightning's Throughput needs two points
    "callbacks.*.refresh_rate": count(BIG, low=0),
    "callbacks.*.decay": UNIT,
    "callbacks.*.patience": count(BIG, low=0),
    "callbacks.*.min_delta": Number(0, 1e6),
    "callbacks.*.passes": Number(0.01, 1e6),  # validate at least every this many passes over the train split
    # sample.py, and the playground's requests
    "mode": Choice(("generate", "score", "serve")),
    "stream": FLAG,
    "test": FLAG,
    "prepare_only": FLAG,
    "model.compile": FLAG,
    "model.tie_weights": FLAG,
    # export.py
    "format": Choice(("onnx", "web")),
    "quantize": Choice(("int8",), nullable=True),
    "strategy": Choice(STRATEGIES),
    "unknown": Choice(("replace", "error")),
    "length": count(10**8, low=0),  # tokens per sample; beam search is held to less (generation.plan)
    "num_samples": count(256),  # sample.py keeps a file open per stream
    "temperature": Number(0, 100),  # 0 = greedy; at 100 the distribution is already near uniform
    "top_k": count(VOCAB, nullable=True),
    "top_p": Number(0, 1, low_open=True, nullable=True),
    "beam_width": count(1024),
    "length_penalty": Number(-10, 10),  # beam scores are divided by length ** length_penalty
    "cache_size": count(CACHE, nullable=True),
    "cache_theta": Number(0, 100),  # x a dot product of hidden states: at 100 only the nearest counts
    "cache_lambda": PROBABILITY,
    "keep_tokens": count(10**7, nullable=True),  # x num_samples tokens held in memory
    "port": count(65535, low=0),  # 0: any free port (sampling/playground/server.bind)
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


def rule_for(key: str) -> Rule | None:
    for pattern, rule in OPTIONS.items():
        if fnmatch.fnmatchcase(key, pattern):
            return rule
    return None


def display(key: str) -> str:
    """``data.splits.0`` -> ``data.splits[0]``."""
    parts = key.split(".")
    return parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])


def check_value(key: str, value: Any) -> None:
    """Raise a one-line :class:`ConfigError` if ``value`` breaks the rule for ``key``."""
    rule = rule_for(key)
    if rule is None or rule.accepts(value):
        return
    raise ConfigError(
        f"{display(key)}={shown(value)} is not allowed: it must be {rule.allowed()}; "
        "change the override (or drop it for the default)"
    )


def shown(value: Any) -> str:
    """``value`` as an error line shows it: quoted text, long text and huge integers cut short
    (Python refuses to print an int of over 4,300 digits)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"<an integer of {len(str(value)) if value.bit_length() < 14_000 else 'over 4,000'} digits>"
    return str(value)


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line :class:`ConfigError` for the first option that breaks its rule."""
    for key, value in leaves(cfg):
        check_value(key, value)


def check_args(section: str, **values: Any) -> None:
    """Check a constructor's arguments by the rules of ``<section>.<name>`` (``section=""``:
    sample.py's top-level names); lists are checked item by item, as in a config."""
    for name, value in values.items():
        key = f"{section}.{name}" if section else name
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check_value(f"{key}.{i}", item)
        else:
            check_value(key, value)


def existing_path(option: str, value: Any, fix: str, directory: bool = False) -> Path:
    """``value`` as a readable file (a listable directory with ``directory``), else a one-line
    error that tells a missing path from one of the wrong kind or one that cannot be read."""
    path = Path(str(value)).expanduser()
    if not path.exists():
        problem = "does not exist"
    elif not os.access(path, os.R_OK):
        problem = "cannot be read (permission denied)"
    elif directory != path.is_dir():
        problem = "is a file, not a directory" if directory else "is a directory, not a file"
    elif directory and not os.access(path, os.X_OK):
        problem = "cannot be listed (permission denied)"
    elif not directory and not path.is_file():
        problem = "is not a regular file"
    else:
        return path
    raise ConfigError(f"{option}={path} {problem}; {fix}")
