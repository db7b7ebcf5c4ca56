"""The checkpoints the playground offers, and the models loaded from them (once each, shared).

The page names a checkpoint by an id from :meth:`Catalogue.entries`; nothing else the client
sends becomes a path, so only checkpoints under the configured directory (and the one
``ckpt=`` named) can be opened.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlm.models.loading import LoadedModel, checkpoint_tokenizer, checkpoints_under, load_model, read_checkpoint
from rnnlm.models.module import CHECKPOINT_METRICS
from rnnlm.sampling.playground.analysis import layer_states, state_kinds, vocabulary_pieces
from rnnlm.utils.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
BPC_IN_NAME = re.compile(r"val_bpc(\d+(?:\.\d+)?)")  # ModelCheckpoint's file names (conf/callbacks)


@dataclass(frozen=True)
class Entry:
    """One checkpoint in the drop-down: ``id`` is what the page sends back."""

    id: str
    path: Path
    step: int
    val_bpc: float | None
    mtime: float

    def public(self) -> dict[str, Any]:
        # An absolute id (a ckpt= outside the directory) shows as its last parts: run/checkpoints/file.
        label = self.id if not Path(self.id).is_absolute() else "…/" + "/".join(self.path.parts[-3:])
        return {"id": self.id, "label": label, "step": self.step, "val_bpc": self.val_bpc, "mtime": self.mtime}


def describe(path: Path, entry_id: str) -> Entry:
    """The step and validation bits/char a checkpoint holds (its tensors are mapped, not
    read; its tokenizer is checked); bits/char from the file name for checkpoints saved before they were stored."""
    checkpoint = read_checkpoint(path, mmap=True)
    checkpoint_tokenizer(path, checkpoint.get("hyper_parameters", {}))  # a damaged one is not offered
    metrics = checkpoint.get(CHECKPOINT_METRICS) or {}
    bpc = metrics.get("val/bpc")
    if bpc is None and (match := BPC_IN_NAME.search(path.name)):
        bpc = float(match.group(1))
    bpc = float(bpc) if isinstance(bpc, (int, float)) and math.isfinite(bpc) else None  # a diverged run's NaN
    return Entry(entry_id, path, int(checkpoint.get("global_step", 0)), bpc, path.stat().st_mtime)


def _states_of(loaded: LoadedModel, text: str) -> list[dict[str, torch.Tensor]]:
    return layer_states(loaded.net, torch.from_numpy(loaded.tokenizer.encode(text).astype("int64")))


@dataclass
class PlaygroundModel:
    """A loaded checkpoint and what the page asks of it more than once."""

    loaded: LoadedModel
    vocabulary: list[str]

    def __post_init__(self) -> None:
        # The last two texts' per-layer states (the cell view asks for one unit at a time); no closure over self.
        self.states = functools.lru_cache(maxsize=2)(functools.partial(_states_of, self.loaded))

    @property
    def net(self):
        return self.loaded.net

    def info(self) -> dict[str, Any]:
        net, tokenizer = self.loaded.net, self.loaded.tokenizer
        return {"cell": net.cell, "layers": net.num_layers, "hidden_size": net.hidden_size, "states": state_kinds(net),
                "tokenizer": tokenizer.kind, "vocab_size": len(tokenizer), "vocabulary": self.vocabulary,
                "step": self.loaded.global_step}


class Catalogue:
    """Checkpoints under ``root`` (newest first) plus ``extra`` (``ckpt=``, wherever it is);
    models are loaded on first use and the ``keep`` most recently used stay loaded."""

    def __init__(self, root: Path, extra: Path | None = None, device: str = "auto", keep: int = 2):
        self.root, self.extra, self.device, self.keep = root, extra, device, keep
        self._described: dict[tuple[Path, int, int], Entry] = {}
        self._models: OrderedDict[tuple[Path, int], PlaygroundModel] = OrderedDict()
        self._lock = threading.Lock()
        self._listing = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: two tabs asking for one model load it once

    def entries(self) -> list[Entry]:
        with self._listing:  # requests list from several threads; the descriptions are shared
            found: dict[Path, str] = {}
            if self.extra is not None:
                found[self.extra] = self.extra.name if self.extra.parent == self.root else str(self.extra)
            if self.root.is_dir():
                try:
                    listed = checkpoints_under(self.root)
                except OSError:  # a checkpoint removed while listing (top-k pruning): the next call sees the rest
                    listed = []
                for path in listed:
                    found.setdefault(path, path.relative_to(self.root).as_posix())
            self._described = {key: entry for key, entry in self._described.items() if key[0] in found}
            entries = []
            for path, entry_id in found.items():
                try:
                    stat = path.stat()
                    key = (path, stat.st_mtime_ns, stat.st_size)
                    if key not in self._described:
                        self._described[key] = describe(path, entry_id)
                    entries.append(self._described[key])
                except (CheckpointError, OSError) as err:
                    log.warning("skipped %s (%s)", path, getattr(err, "reason", err))
            # Newest first, and the one ckpt= named before all: it is what the page opens with.
            return sorted(entries, key=lambda e: (e.path != self.extra, -e.mtime))

    def entry(self, entry_id: Any) -> Entry:
        for entry in self.entries():
            if entry.id == entry_id:
                return entry
        raise ConfigError(f"ckpt={entry_id!r} is not one of the checkpoints under {self.root}/; pick one from the list")

    def model(self, entry_id: Any) -> PlaygroundModel:
        entry = self.entry(entry_id)
        key = (entry.path, entry.mtime)
        with self._lock:  # loaded already: no waiting behind another checkpoint's load
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._loading:
            with self._lock:
                if key in self._models:  # loaded while this request waited
                    return self._models[key]
            loaded = load_model(entry.path, self.device)
            log.info("loaded %s (step %d)", entry.path, loaded.global_step)
            model = PlaygroundModel(loaded, vocabulary_pieces(loaded.tokenizer))
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.keep:
                    self._models.popitem(last=False)
        return model
