"""The corpus as one integer tensor (a map of the prepared token file), cut into train/val/test regions and windows."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rnnlm.data.permutation import LazyPermutation
from rnnlm.data.prepare import CorpusSettings, PreparedCorpus, UnknownChars, prepare
from rnnlm.data.tokenizers import Tokenizer
from rnnlm.utils.errors import ConfigError, CorpusError
from rnnlm.utils.options import check_args

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]  # inputs, targets (and for val/test the targets' characters)
SPLITS = ("train", "val", "test")
CALIBRATION_MIN_TOKENS = 256  # a temperature fitted on fewer is noise
COUNT_CHUNK = 1 << 24  # tokens counted at a time by token_counts()
UNKNOWN_WARN_SHARE = 0.001  # warn when more of a val/test split than this is <unk>
ITER_CHUNK = 1 << 16  # indices handed to the loader as Python ints at a time
# Above this many windows the shuffled order is computed as it is read (rnnlm.data.permutation)
# rather than drawn whole by torch.randperm: at most 16 MB of order in any rank.
IN_MEMORY_ORDER_MAX = 1 << 22


class WindowDataset(Dataset):
    """Windows of ``seq_len + 1`` tokens starting every ``stride`` tokens of one region.

    The windows are never materialised: a batch of window indices becomes one gather
    from the region's token tensor (``__getitems__``), so memory stays ~ the corpus size.
    With ``chars`` (each id's characters, and the region's :class:`UnknownChars`) a batch
    also holds the characters each window's targets stand for, as written (bits per character).
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, stride: int,
                 chars: tuple[torch.Tensor, UnknownChars] | None = None):
        self.tokens, self.seq_len, self.stride, self.chars = tokens, seq_len, stride, chars
        self._offsets = torch.arange(seq_len + 1)

    def __len__(self) -> int:
        return max((len(self.tokens) - self.seq_len - 1) // self.stride + 1, 0)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        starts = torch.as_tensor(indices, dtype=torch.long) * self.stride
        windows = self.tokens[starts[:, None] + self._offsets].long()
        if self.chars is None:
            return windows[:, :-1], windows[:, 1:]
        lengths, unknown = self.chars
        first = starts.numpy() + 1  # the targets' positions
        chars = lengths[windows[:, 1:]].sum(1) + torch.from_numpy(unknown.within(first, first + self.seq_len))
        chars = chars.float()  # whole numbers, exact in fp32; float64 does not go to every device (MPS)
        return windows[:, :-1], windows[:, 1:], chars

    def __getitem__(self, index: int) -> Batch:
        return tuple(part[0] for part in self.__getitems__([index]))


class WindowSampler(Sampler[int]):
    """This rank's windows, in an order that is a pure function of ``(seed, epoch)``.

    - ``shuffle``: a fresh permutation each epoch; each DDP rank takes a disjoint,
      equal-size slice. Up to ``IN_MEMORY_ORDER_MAX`` windows it is ``torch.randperm``'s;
      above, a :class:`LazyPermutation` computed as it is read.
    - ``lanes``: the region is cut into ``lanes`` contiguous lanes (per rank) and batch
      ``i`` holds the ``i``-th window of every lane, so a model that carries its state from
      batch to batch reads each lane in order (truncated BPTT, the char-rnn way).
    - ``sequential``: windows in corpus order, sharded by rank (evaluation).

    Because nothing but seed and epoch decides the order, a resumed run skips exactly the
    windows it already trained on (``start``) and then matches an uninterrupted run.
    """

    def __init__(self, size: int, order: str = "shuffle", seed: int = 0, rank: int = 0, world_size: int = 1,
                 lanes: int = 1):
        self.size, self.order, self.seed = size, order, seed
        self.rank, self.world_size, self.lanes = rank, world_size, lanes
        self.epoch = 0
        self.start = 0  # windows of this rank to skip, once (set when resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.order == "shuffle":  # equal shares, so every rank runs the same number of steps
            return self.size // self.world_size
        if self.order == "lanes":
            return self.size // (self.lanes * self.world_size) * self.lanes
        return len(range(self.rank, self.size, self.world_size))

    def _indices(self) -> torch.Tensor:
        # int32 where it fits: the same permutation (torch.randperm draws it the same way), half
        # the memory; an epoch's order is 4 bytes a window, never a Python list.
        dtype = torch.int32 if self.size < 2**31 else torch.int64
        if self.order == "shuffle":
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator, dtype=dtype)[: len(self) * self.world_size]
            return order[self.rank :: self.world_size]
        if self.order == "lanes":
            lane_len = self.size // (self.lanes * self.world_size)
            mine = torch.arange(self.lanes, dtype=dtype) + self.rank * self.lanes
            return (mine[None, :] * lane_len + torch.arange(lane_len, dtype=dtype)[:, None]).flatten()
        return torch.arange(self.rank, self.size, self.world_size, dtype=dtype)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        if self.order == "shuffle" and self.size > IN_MEMORY_ORDER_MAX:
            # This rank's k-th window is the permutation's value at rank + k * world_size, as
            # in the in-memory order; computed a chunk at a time, so memory stays flat.
            permutation = LazyPermutation(self.size, self.seed + self.epoch)
            for first in range(start, len(self), ITER_CHUNK):
                ks = np.arange(first, min(first + ITER_CHUNK, len(self)), dtype=np.int64)
                yield from permutation[self.rank + ks * self.world_size].tolist()
            return
        for chunk in self._indices()[start:].split(ITER_CHUNK):
            yield from chunk.tolist()


def keep_batch(batch: Batch) -> Batch:
    """Collate for ``__getitems__``: the dataset already returns a whole batch."""
    return batch


class CorpusDataModule(pl.LightningDataModule):
    """Serves shuffled, equal-size windows of a corpus encoded once (``rnnlm.data.prepare``).

    ``path=None`` trains on the embedded Shakespeare plays; otherwise ``path`` is a UTF-8
    file or a directory read recursively with ``glob``. The vocabulary comes from the
    training region only, so ``<unk>`` stands for what the model never saw. With a
    ``cache_dir`` the tokens are prepared there once and memory-mapped by every run and
    rank; without one they are encoded in this process's memory.
    """

    def __init__(
        self,
        path: str | None = None,
        glob: str = "*.txt",
        separator: str = "\n\n",
        encoding_errors: str = "strict",
        tokenizer: str = "char",
        max_vocab: int | None = None,
        min_freq: int = 1,
        seq_len: int = 128,
        stride: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        splits: Sequence[float] = (0.9, 0.05, 0.05),
        num_workers: int = 0,
        seed: int = 0,
        order: str = "shuffle",
        calibration: float = 0.0,
        cache_dir: str | None = None,
        vocab_size: int | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
    ):
        super().__init__()
        check_args("data", tokenizer=tokenizer, max_vocab=max_vocab, min_freq=min_freq, seq_len=seq_len, stride=stride,
                   batch_size=batch_size, eval_batch_size=eval_batch_size, splits=list(splits), num_workers=num_workers,
                   seed=seed, order=order, calibration=calibration, vocab_size=vocab_size)
        for option, value in (("path", path), ("val_path", val_path), ("test_path", test_path)):
            if value is not None and not str(value).strip():
                raise ConfigError(f"data.{option}= is empty; pass a UTF-8 file or directory")
        if tokenizer == "bpe" and max_vocab is not None:
            raise ConfigError(f"data.max_vocab={max_vocab} does not apply to data.tokenizer=bpe; "
                              f"set the size it learns with data.vocab_size={max_vocab}")
        if tokenizer != "bpe" and vocab_size is not None:
            raise ConfigError(f"data.vocab_size={vocab_size} is the size data.tokenizer=bpe learns; "
                              f"to cap a {tokenizer} vocabulary use data.max_vocab={vocab_size}")
        if order == "lanes" and stride not in (None, seq_len):
            raise ConfigError(
                f"data.order=lanes needs windows that follow each other (data.stride={stride} != "
                f"data.seq_len={seq_len}); leave data.stride=null"
            )
        if len(splits) != 3 or min(splits[:2]) <= 0 or splits[2] < 0 or abs(sum(splits) - 1) > 1e-6:
            raise ConfigError(
                f"data.splits={list(splits)}; give train/val/test fractions summing to 1 "
                "(train and val > 0; test may be 0, as in nanoGPT's 90/10 split)"
            )
        if calibration >= splits[0]:
            raise ConfigError(
                f"data.calibration={calibration!r}; give the fraction of the corpus held out from the start "
                f"of the train split to fit the output temperature: 0 (off) up to below {splits[0]}, e.g. 0.01"
            )
        self.calibration = float(calibration)
        self.cache_dir = cache_dir  # None: encode in memory, for this process only
        self.cache_entry: Path | None = None
        self._prepared: PreparedCorpus | None = None  # what prepare_data() found or made, for setup()
        self.settings = CorpusSettings(path, glob, separator, encoding_errors, tokenizer, max_vocab, min_freq,
                                       float(splits[0]), vocab_size, float(splits[1]), val_path, test_path)
        self.seq_len, self.stride = seq_len, stride or seq_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.splits, self.num_workers, self.seed, self.order = tuple(splits), num_workers, seed, order
        self._resume: dict[str, int] = {}
        self.tokenizer: Tokenizer | None = None
        self.split_files: bool | None = None  # known once set up
        self.tokens: dict[str, torch.Tensor] = {}
        self.unknown: dict[str, UnknownChars] = {}  # val and test: what each <unk> replaced
        self.datasets: dict[str, WindowDataset] = {}
        self.stats: dict[str, Any] = {}

    @property
    def vocab_size(self) -> int:
        assert self.tokenizer is not None, "call setup() first"
        return len(self.tokenizer)

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in the train split (int64, one per id), read in chunks so a
        memory-mapped corpus is never copied whole: an adaptive softmax's clusters follow them."""
        assert self.tokenizer is not None, "call setup() first"
        counts = np.zeros(len(self.tokenizer), dtype=np.int64)
        train = self.tokens["train"].numpy()
        for start in range(0, len(train), COUNT_CHUNK):
            counts += np.bincount(train[start : start + COUNT_CHUNK], minlength=len(counts))
        return counts

    def prepare_data(self) -> None:
        """Encode the corpus into the cache, once (Lightning runs this on one process per node)."""
        if self.cache_dir is not None and self.tokenizer is None:  # not again once set up
            self._prepared = prepare(self.settings, self.cache_dir)  # reused by setup() in this process

    def setup(self, stage: str | None = None) -> None:
        """Map the prepared tokens (preparing them first if no process has) and cut the splits."""
        if self.tokenizer is not None:  # Lightning calls setup per stage; build once.
            return
        prepared, self._prepared = self._prepared or prepare(self.settings, self.cache_dir), None
        if prepared.reused:  # prepare() logs a prepare itself
            log.info("corpus: reusing %s, prepared before", prepared.directory)
        if prepared.facts["replaced_bytes"]:
            log.warning("replaced %d undecodable bytes with U+FFFD", prepared.facts["replaced_bytes"])
        self.tokenizer = prepared.tokenizer
        self.cache_entry = prepared.directory
        self.split_files = prepared.split_files
        ids = torch.from_numpy(prepared.ids)
        bounds = [0, *prepared.split_starts, len(ids)]  # cut at the same characters for every tokenizer
        regions = {split: (bounds[i], bounds[i + 1]) for i, split in enumerate(SPLITS)}
        if self.calibration:
            # The start of the train region, never trained on: where the logit scale is fitted
            # (rnnlm.models.calibration). Not its end: the text next to the validation split is the most
            # useful to train on, as it is the closest in content to what is scored (docs/results.md).
            cut = int(len(ids) * self.calibration)
            regions["calibration"] = (0, cut)
            regions["train"] = (cut, bounds[1])
            if cut >= bounds[1]:  # split files: a small train file
                raise CorpusError(f"data.calibration={self.calibration} of the corpus's {len(ids)} tokens is {cut}, more "
                                  f"than the train split's {bounds[1]}; lower it")
            if cut < CALIBRATION_MIN_TOKENS:
                raise CorpusError(
                    f"data.calibration={self.calibration} holds {cut} tokens, "
                    f"fewer than {CALIBRATION_MIN_TOKENS}; raise it or set data.calibration=0"
                )
        self.tokens = {split: ids[start:stop] for split, (start, stop) in regions.items()}
        self.unknown = {split: prepared.unknown_chars(*regions[split]) for split in SPLITS[1:]}
        lengths = torch.from_numpy(self.tokenizer.char_lengths())
        self.datasets["train"] = WindowDataset(self.tokens["train"], self.seq_len, self.stride)
        for split in SPLITS[1:]:  # windows that tile their region: every token is scored once
            self.datasets[split] = WindowDataset(self.tokens[split], self.seq_len, self.seq_len, (lengths, self.unknown[split]))
        self._check_sizes()
        unknown = self._count_unknown({split: prepared.unknown_in(*regions[split]) for split in SPLITS})
        self.stats = {
            **prepared.facts,
            "tokens": len(ids),
            "vocab_size": len(self.tokenizer),
            "token_dtype": str(ids.dtype),
            **{f"{s}_tokens": len(tokens) for s, tokens in self.tokens.items()},
            **{f"{s}_windows": len(self.datasets[s]) for s in SPLITS},
            **unknown,
        }
        log.info(
            "corpus: %d tokens (%s), vocab %d, windows train/val/test %d/%d/%d of %d tokens",
            len(ids), self.settings.tokenizer, len(self.tokenizer),
            *(len(self.datasets[s]) for s in SPLITS), self.seq_len,
        )

    def _count_unknown(self, counts: dict[str, int]) -> dict[str, int]:
        """``<unk>`` tokens per split (``data/val_unk``...): text the train split never had is
        scored as ``<unk>``, which says nothing about how well the real text is predicted."""
        for split in SPLITS:
            tokens, unknown = self.tokens[split], counts[split]
            if split != "train" and len(tokens) and unknown / len(tokens) > UNKNOWN_WARN_SHARE:
                log.warning(
                    "%d of the %d %s tokens (%.2f%%) are <unk>: the train split lacks them (or data.max_vocab/"
                    "min_freq dropped them), so the %s loss is not the loss of that text",
                    unknown, len(tokens), split, 100 * unknown / len(tokens), split,
                )
        return {f"{split}_unk": n for split, n in counts.items()}

    @property
    def has_test(self) -> bool:
        """A test split exists: split files hold one, or ``data.splits`` gives it a share."""
        if self.split_files:
            return len(self.tokens["test"]) > 0
        return self.splits[2] > 0

    def _check_sizes(self) -> None:
        for split in SPLITS if self.has_test else SPLITS[:2]:
            n = len(self.tokens[split])
            if n < self.seq_len + 1:
                raise CorpusError(
                    f"the {split} split has {n} tokens, fewer than one window of "
                    f"seq_len+1={self.seq_len + 1}; lower data.seq_len or use a longer corpus"
                )

    def _check_batch(self) -> None:
        """Checked when the loader is built: only then is the number of devices known."""
        n_train = len(self.datasets["train"])
        world = self.trainer.world_size if self.trainer is not None else 1
        if n_train < self.batch_size * world:
            raise CorpusError(
                f"the train split has {n_train} windows, fewer than one batch of "
                f"data.batch_size={self.batch_size} x {world} device(s); lower data.batch_size "
                "or data.seq_len, or use a longer corpus"
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        order = self.order if shuffle else "sequential"
        sampler = WindowSampler(len(self.datasets[split]), order, self.seed, rank, world, lanes=batch_size)
        if shuffle and self._resume:  # resuming mid-epoch: skip what was already trained on
            resume, self._resume = self._resume, {}
            if resume["batches"] * batch_size < len(sampler):
                sampler.set_epoch(resume["epoch"])
                sampler.start = resume["batches"] * batch_size
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            drop_last=shuffle,  # equal-size training batches
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def state_dict(self) -> dict[str, int]:
        """Where training is in the data: saved in checkpoints, for an exact resume."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = dict(state)

    def train_dataloader(self) -> DataLoader:
        self._check_batch()
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
