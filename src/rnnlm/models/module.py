"""The LightningModule: loss, metrics, optimiser and what goes into a checkpoint."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import MeanMetric, MinMetric

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.models.cache import CacheFit, best_fit, cache_lanes, cache_totals
from rnnlm.models.evaluation import score_totals
from rnnlm.models.network import RNNLM
from rnnlm.models.output import ADAPTIVE_ABOVE, auto_cutoffs, cluster_shares, max_tails, resolve_output
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_args

NETWORK_ARGUMENTS = tuple(inspect.signature(RNNLM).parameters)  # vocab_size, cell, hidden_size, ...
NETWORK_DEFAULTS = {k: p.default for k, p in inspect.signature(RNNLM).parameters.items() if p.default is not p.empty}

CHECKPOINT_FORMAT = "rnnlm/1"
CHECKPOINT_METRICS = "rnnlm_metrics"
SAVED_METRICS = ("val/loss", "val/bpc", "val/bpc_stateful")
PRECISION_KEY = "rnnlm_precision"  # the Trainer's precision: a resumed run on a GPU keeps it
LN2 = math.log(2)


class LanguageModel(pl.LightningModule):
    """Next-token prediction with an :class:`RNNLM`.

    Logged per split: ``loss`` (mean nats per token over all tokens), ``ppl`` (exp of that
    mean), ``bpt`` (bits per token), ``bpc`` (bits per character: the same bits over the
    characters the tokens stand for, so char, subword and word models compare on one
    scale; equal to ``bpt`` for characters) and ``acc`` (top-1 next-token accuracy), plus
    ``val/loss_best``. The tokenizer state and architecture are saved as plain
    hyper-parameters, so a checkpoint alone is enough to sample.
    """

    def __init__(
        self,
        vocab_size: int,
        tokenizer: dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        compile: bool = False,
        stateful_eval_lanes: int | None = 64,
        cache_size: int | None = None,
        adaptive_above: int = ADAPTIVE_ABOVE,
        token_counts: Callable[[], Any] | None = None,
        **network: Any,
    ):
        """``network``: the :class:`RNNLM` arguments besides ``vocab_size`` (``cell``,
        ``hidden_size``, ...), declared and checked there; ``optimizer`` and ``scheduler`` are
        factories (Hydra's ``_partial_``) that take the parameters and the optimiser.

        ``output="auto"`` becomes ``adaptive`` above ``adaptive_above`` tokens, else
        ``softmax``; an adaptive softmax without ``adaptive_cutoffs`` takes them from
        ``token_counts()`` (each id's count in the train split). The checkpoint keeps the
        resolved output and cutoffs, so loading it needs neither.

        ``cache_size``: also report val and test with a continuous cache of this many positions
        (:mod:`rnnlm.models.cache`), fitted on val by ``trainer.validate`` and used by the
        ``trainer.test`` after it; ``None``: off."""
        super().__init__()
        if optimizer is None:
            raise ConfigError("model.optimizer is null; give one, e.g. model.optimizer._target_=torch.optim.AdamW")
        unknown = sorted(set(network) - set(NETWORK_ARGUMENTS))
        if unknown:
            raise ConfigError(f"model.{unknown[0]} is not a setting of the model; it has {', '.join(NETWORK_ARGUMENTS[1:])}, "
                              "compile, stateful_eval_lanes, cache_size, adaptive_above, optimizer and scheduler")
        check_args("model", stateful_eval_lanes=stateful_eval_lanes, cache_size=cache_size)
        network = {**NETWORK_DEFAULTS, **network}  # every setting in the checkpoint, defaults too
        network["output"] = resolve_output(network["output"], vocab_size, adaptive_above)
        counts = token_counts() if network["output"] == "adaptive" and token_counts is not None else None
        if network["output"] == "adaptive" and network["adaptive_cutoffs"] is None:
            tails = max_tails(network["hidden_size"], network["adaptive_div_value"])
            network["adaptive_cutoffs"] = auto_cutoffs(vocab_size, counts, tails)
        # Lightning stores ``network`` flat beside the others: the checkpoint's hyper-parameters
        # are plain data and name each architecture setting as model.<name>.
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "token_counts"])
        self.net = RNNLM(**self.architecture(self.hparams))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if compile:
            self.net.compile_around_recurrence()  # why not through it: that method's docstring
        self.metrics = torch.nn.ModuleDict({f"{split}_{name}": MeanMetric() for split in ("val", "test")
                                            for name in ("loss", "acc", "chars")})
        # Characters each id stands for (bits per character; <unk>: 0, its text counted by the
        # data); from the tokenizer, not saved.
        lengths = Tokenizer.from_dict(tokenizer).char_lengths()
        self.register_buffer("char_lengths", torch.tensor(lengths, dtype=torch.float32), persistent=False)
        self.flops_per_batch = 0.0  # for Lightning's ThroughputMonitor; set each step
        self._flops_per_token = self.net.flops_per_token(cluster_shares(network["adaptive_cutoffs"], counts))
        self.carry_state = False  # set at fit start when the data comes in lanes
        self._train_state = None
        self.val_loss_best = MinMetric()
        self.cache_fit: CacheFit | None = None  # chosen on val by trainer.validate, used by trainer.test

    @staticmethod
    def architecture(hparams: dict[str, Any]) -> dict[str, Any]:
        """The :class:`RNNLM` arguments among the hyper-parameters (also used when sampling)."""
        return {k: hparams[k] for k in NETWORK_ARGUMENTS if k in hparams}

    def forward(self, tokens: torch.Tensor, state=None):
        return self.net(tokens, state)

    def _step(self, batch: tuple[torch.Tensor, ...], split: str) -> torch.Tensor:
        inputs, targets = batch[:2]
        passes = 3 if split == "train" else 1  # backward ~ twice the forward
        self.flops_per_batch = passes * self._flops_per_token * targets.numel()
        if split == "train":
            # Truncated BPTT across batches (lanes): start where each lane's previous batch ended.
            loss, state = self.net.loss(inputs, targets, self._train_state if self.carry_state else None)
            if self.carry_state:
                self._train_state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            return loss
        log_probs, hits, _ = self.net.target_scores(inputs, targets)
        loss = -log_probs.mean()
        correct = hits.float().mean()
        self.metrics[f"{split}_loss"].update(loss.detach(), weight=targets.numel())
        self.metrics[f"{split}_acc"].update(correct, weight=targets.numel())
        # The characters the targets stand for as written (the data module counts each <unk>'s).
        chars = batch[2].sum() if len(batch) > 2 else self.char_lengths[targets].sum()
        self.metrics[f"{split}_chars"].update(chars / targets.numel(), weight=targets.numel())
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/bpt", loss.detach() / LN2, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_split(self, split: str) -> float:
        """Log loss/ppl/bpt/bpc/acc of a whole epoch; metrics are reduced across ranks."""
        loss, acc, chars_per_token = (self.metrics[f"{split}_{name}"].compute() for name in ("loss", "acc", "chars"))
        for name in ("loss", "acc", "chars"):
            self.metrics[f"{split}_{name}"].reset()
        values = {"loss": loss, "ppl": torch.exp(loss), "bpt": loss / LN2, "bpc": loss / LN2 / chars_per_token, "acc": acc}
        for name, value in values.items():
            self.log(f"{split}/{name}", value, prog_bar=name in ("loss", "bpc"), sync_dist=True)
        return float(loss)

    def on_train_start(self) -> None:
        self.val_loss_best.reset()  # forget the sanity check's untrained loss
        self.carry_state = getattr(self.trainer.datamodule, "order", "shuffle") == "lanes"

    def on_train_epoch_start(self) -> None:
        self._train_state = None  # lanes restart at the beginning of the region

    def _log_stateful(self, split: str) -> None:
        """Loss over the whole split read in order with the state carried (how an RNN is
        used), next to the per-window figure; each rank reads its own contiguous part. With
        ``cache_size`` set, the same with the continuous cache (:meth:`_log_cache`)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or self.trainer.sanity_checking:
            return
        parts = datamodule.tokens[split].tensor_split(self.trainer.world_size)
        part, offset = parts[self.trainer.global_rank], sum(len(p) for p in parts[: self.trainer.global_rank])
        if self.hparams.get("stateful_eval_lanes"):
            lanes = max(1, min(self.hparams.stateful_eval_lanes, (len(part) - 1) // 2))
            nll, _, count, chars = score_totals(self.net, part, lanes, chunk=256, char_lengths=self.char_lengths)
            nll, count, chars = self._split_totals(split, offset, lanes, len(part), torch.tensor(nll, dtype=torch.float64),
                                                   count, chars)
            nll_sum = float(nll)
            for name, value in {"loss": nll_sum / count, "bpt": nll_sum / count / LN2, "bpc": nll_sum / chars / LN2}.items():
                self.log(f"{split}/{name}_stateful", value, sync_dist=True)
        if self.hparams.get("cache_size"):
            self._log_cache(split, part, offset)

    def _split_totals(self, split: str, offset: int, lanes: int, length: int, nll: torch.Tensor, count: int,
                      chars: float) -> tuple[torch.Tensor, float, float]:
        """This rank's summed NLL (any shape), scored tokens and their characters, with the
        characters of the <unk> targets as written added, summed over the ranks: the whole
        split's. Lanes over a part of ``length`` at ``offset`` score the targets ``offset + 1``
        to ``offset + lanes * lane length``."""
        scored = np.array([offset + 1]), np.array([offset + 1 + lanes * ((length - 1) // lanes)])
        chars += float(self.trainer.datamodule.unknown[split].within(*scored)[0])
        flat = torch.cat([nll.double().reshape(-1), torch.tensor([count, chars], dtype=torch.float64)])
        summed = self.trainer.strategy.reduce(flat.to(self.device), reduce_op="sum").cpu()
        return summed[:-2].view_as(nll), float(summed[-2]), float(summed[-1])

    def _log_cache(self, split: str, part: torch.Tensor, offset: int) -> None:
        """val in ``trainer.validate``: choose the cache's theta and lambda on the split and log
        its loss there; test: the split's loss with the ones chosen. ``train`` validates the best
        checkpoint, then tests it: a ``trainer.test`` with no validation before it has none
        chosen and logs no cache figure."""
        size = self.hparams.cache_size
        choosing = split == "val" and self.trainer.state.fn == TrainerFn.VALIDATING
        if not choosing and (split != "test" or self.cache_fit is None):
            return
        lanes = cache_lanes(len(part), size)
        grid = {} if choosing else {"thetas": (self.cache_fit.theta,), "lambdas": (self.cache_fit.lam,)}
        nll, targets = cache_totals(self.net, part, size, lanes, **grid)
        chars = float(self.char_lengths.cpu()[targets].sum())
        nll, count, chars = self._split_totals(split, offset, lanes, len(part), nll, targets.numel(), chars)
        if choosing:  # the same on every rank: each has the totals of the whole split
            self.cache_fit = best_fit(nll, count)
            self.log_dict({"val/cache_size": float(size), "val/cache_theta": self.cache_fit.theta,
                           "val/cache_lambda": self.cache_fit.lam}, sync_dist=True)
        nll_sum = float(nll.min())  # the chosen point's (test scores only that one)
        self.log_dict({f"{split}/loss_cache": nll_sum / count, f"{split}/bpc_cache": nll_sum / chars / LN2}, sync_dist=True)

    # The stateful pass runs at epoch start, after every callback's: a weight-averaging
    # callback (EMA/SWA) has swapped its averaged weights in by then, and rnnlm.models.calibration's
    # callback has fitted the logit scale.
    def on_validation_epoch_start(self) -> None:
        self._log_stateful("val")

    def on_test_epoch_start(self) -> None:
        self._log_stateful("test")

    def on_validation_epoch_end(self) -> None:
        loss = self._log_split("val")
        if not self.trainer.sanity_checking:
            self.val_loss_best.update(torch.tensor(loss))
            self.log("val/loss_best", self.val_loss_best.compute(), sync_dist=True)
            # A schedule that follows validation sees it here, once per validation while
            # fitting, before its checkpoints are written (rnnlm.models.schedules.WarmupPlateau).
            for config in self.trainer.lr_scheduler_configs if self.trainer.state.fn == TrainerFn.FITTING else ():
                if hasattr(config.scheduler, "observe"):
                    config.scheduler.observe(loss)

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rnnlm_format"] = CHECKPOINT_FORMAT
        # The latest validation figures, as plain floats: a list of checkpoints can show them
        # without the run's logs (rnnlm.sampling.playground).
        metrics = self.trainer.callback_metrics if self._trainer is not None else {}
        checkpoint[CHECKPOINT_METRICS] = {k: float(metrics[k]) for k in SAVED_METRICS if k in metrics}
        if self._trainer is not None:
            checkpoint[PRECISION_KEY] = str(self.trainer.precision)
