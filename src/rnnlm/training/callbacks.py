"""Lightning callbacks: samples during training, training throughput, a guard against NaN loss,
checkpoints on a signal, and Lightning's EMA of the weights done with once fitting ends."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.generation.decoding import DecodeSettings, generate
from rnnlm.generation.prompt import encode_prompt
from rnnlm.utils.errors import RnnlmError
from rnnlm.utils.files import write_text
from rnnlm.utils.options import check_args
from rnnlm.utils.rundir import promote_pending_config

log = logging.getLogger(__name__)


def sample_texts(
    net: torch.nn.Module,
    tokenizer: Tokenizer,
    temperatures: Sequence[float],
    length: int,
    prompt: str = "\n",
    seed: int | None = 0,
) -> list[tuple[float, str]]:
    """One sample per temperature, with the net briefly in eval mode. A prompt with pieces the
    vocabulary lacks (``"\n"`` is no word of a corpus whose lines end in " \n") starts a
    document instead: a sample to watch training by, not a warning every few steps."""
    was_training = net.training
    net.eval()
    try:
        ids = encode_prompt(tokenizer, "" if tokenizer.unknown(prompt) else prompt, unknown="replace")
        return [
            (t, tokenizer.decode(generate(net, ids, length, 1, DecodeSettings(temperature=t), seed=seed).tokens[0]))
            for t in temperatures
        ]
    finally:
        net.train(was_training)


class SampleText(pl.Callback):
    """Every ``every_n_steps`` generate a sample per temperature, primed with ``prompt``.

    Samples go to ``samples.txt`` in the run dir and, with W&B, to a ``samples`` table.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        temperatures: Sequence[float] = (0.5, 0.8, 1.0),
        length: int = 200,
        prompt: str = "\n",
        output_file: str | None = None,
    ):
        self.every_n_steps, self.temperatures = every_n_steps, list(temperatures)
        self.length, self.prompt = length, prompt
        self.output_file = Path(output_file) if output_file else None
        self.rows: list[list[Any]] = []

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        tokenizer = Tokenizer.from_dict(pl_module.hparams["tokenizer"])
        samples = sample_texts(pl_module.net, tokenizer, self.temperatures, self.length, self.prompt, seed=step)
        self.rows += [[step, t, text] for t, text in samples]
        if self.output_file is not None:  # appended by rewriting it whole: a failed write loses nothing
            before = self.output_file.read_text(encoding="utf-8") if self.output_file.is_file() else ""
            added = "".join(f"=== step {step} temperature {t} ===\n{text}\n\n" for t, text in samples)
            write_text(self.output_file, before + added)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "temperature", "text"], data=self.rows, step=step)


class TrainThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` for training only: Lightning's also logs validation
    and test throughput with the evaluation batch count as the step, which runs behind the
    training steps in CSV and W&B logs (``tests/test_train.py`` checks none is logged). It still
    times validation, to leave it out of ``train/time``."""

    # Lightning has no public switch per stage; validation must still be timed (its _update),
    # only not logged. If Lightning renames _compute, validation rows appear in the logs and
    # tests/test_train.py (test_averaged_weights_keep_the_fitted_logit_scale) fails.
    def _compute(self, trainer: pl.Trainer, iter_num: int | None = None) -> None:
        if trainer.state.stage == RunningStage.TRAINING:
            super()._compute(trainer, iter_num)


def windows_in(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Windows in a batch: the ``batch_size_fn`` of Lightning's ``ThroughputMonitor``."""
    return batch[1].size(0)


def tokens_in(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Predicted tokens in a batch: the ``length_fn`` of Lightning's ``ThroughputMonitor``."""
    return batch[1].numel()


class FiniteLoss(pl.Callback):
    """Stops training at the first NaN/inf loss, before any checkpoint can hold bad weights.

    Lightning's ``EarlyStopping(check_finite=True)`` looks at a monitored metric when it is
    logged (validation); this looks at every training step's loss."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = loss is not None and not math.isfinite(float(loss))
        # Every rank must stop together, or the others would wait in the next all-reduce.
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "none yet"
            raise RnnlmError(
                f"training loss became {float(loss) if bad else 'non-finite on another rank'} at step {trainer.global_step}; stopped without "
                f"saving these weights (last good checkpoint: {best}); lower model.optimizer.lr "
                "or set trainer.gradient_clip_val"
            )


class CheckpointOnInterrupt(pl.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, save the current state as ``last-interrupted.ckpt``.

    Lightning's ``OnExceptionCheckpoint`` saves on every exception, a NaN loss or a full
    disk included, where the weights or the disk are what failed; this saves only when the
    run was stopped from outside (the NaN test in tests/test_faults.py checks the difference).

    ``python train.py resume_dir=<run dir>`` (or ``ckpt_path=last``) then continues from it:
    Lightning picks the newest ``last*.ckpt``. Lightning turns SIGTERM into
    ``SIGTERMException`` at the next batch boundary and SIGINT into ``KeyboardInterrupt``.
    """

    def __init__(self, dirpath: str, filename: str = "last-interrupted.ckpt"):
        self.path = Path(dirpath) / filename
        self.saved: Path | None = None  # set once saved; train() names it when it exits

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.world_size > 1:
            return  # a collective save could hang when another rank has already gone
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path)
        self.saved = self.path


class AdoptResumedConfig(pl.Callback):
    """A resumed run's config replaces the run's ``.hydra/`` once Lightning has restored the
    checkpoint into the trainer (training starts after that): a resume refused by rnnlm's
    checks or by Lightning's own leaves the run dir as it was."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        promote_pending_config()


class ValidationSchedule(pl.Callback):
    """Validate at least every ``passes`` passes over the train split, as well as every
    ``trainer.val_check_interval`` steps: on a small corpus a fixed number of steps can be
    many passes, and the best point (before the model starts to memorise the text) falls
    between two validations. Set before the fit loop reads the interval."""

    def __init__(self, passes: float = 2.0):
        check_args("callbacks.validation_schedule", passes=passes)
        self.passes = passes

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None:
            return
        if not isinstance(trainer.val_check_interval, int) or trainer.check_val_every_n_epoch is not None:
            log.info("validation follows trainer.val_check_interval=%s, check_val_every_n_epoch=%s as given "
                     "(callbacks.validation_schedule counts steps)", trainer.val_check_interval, trainer.check_val_every_n_epoch)
            return
        steps = steps_per_pass(datamodule, trainer.world_size)
        every = max(1, int(steps * self.passes))
        if every < trainer.val_check_interval:
            log.info("validating every %d steps (%g passes over the train split of %d steps each), "
                     "not every trainer.val_check_interval=%d", every, self.passes, steps, trainer.val_check_interval)
            trainer.val_check_interval = every


class EarlyStopping(pl.callbacks.EarlyStopping):
    """Lightning's, keeping this run's ``patience`` when it resumes: Lightning restores the
    checkpoint's, so a resumed run asked for more patience would stop at the old count."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def steps_per_pass(datamodule: Any, world_size: int = 1) -> int:
    """Batches that read the train split once (its windows over every rank's batches)."""
    return max(1, len(datamodule.datasets["train"]) // (datamodule.batch_size * world_size))


class ValidateAtLastStep(pl.Callback):
    """Make the last step (``trainer.max_steps``) a validation step, so its weights are
    scored and can become the best checkpoint even when ``max_steps`` is not a multiple of
    ``val_check_interval``. (Lightning validates when asked to stop, as ``max_time`` does.)"""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class EMAWeightAveraging(pl.callbacks.EMAWeightAveraging):
    """Lightning's EMA of the weights, done with once fitting ends.

    At the end of fitting the averaged weights are copied into the model (Lightning does
    that). Lightning's callback would then, for the evaluation of the best checkpoint that
    follows (``trainer.validate``/``test``), reload the raw weights saved beside the average
    and test those; dropping the average after fitting makes both score the checkpoint's
    averaged weights, as validation during training did.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if stage == "fit":  # no public way to drop the average; tests/test_train.py fails if this stops working
            self._average_model = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming a fit: restore the raw and the averaged weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
