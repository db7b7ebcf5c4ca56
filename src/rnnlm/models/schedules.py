"""Learning-rate schedules, stepped once per optimiser step: a cosine over the run's steps, or
one that follows validation (a plateau)."""

from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from rnnlm.utils.errors import ConfigError

log = logging.getLogger(__name__)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base LR over ``warmup_steps`` (at most a quarter of the run, so
    a short run still decays), then a cosine decay to ``min_ratio`` x base LR at
    ``total_steps`` (held there afterwards).

    The curve of torch's ``LinearLR`` then ``CosineAnnealingLR`` in a ``SequentialLR``, written
    as one closed form in a ``LambdaLR``: that one saves its milestones and ``T_max`` in the
    checkpoint, so a run resumed with a larger ``trainer.max_steps`` would keep the old decay
    (and climb back up after it); this one saves only the step, and decays to the new end
    (``tests/test_model.py`` checks both the curve and the resume).
    """

    if total_steps < 1:
        raise ConfigError(
            f"the cosine schedule decays over trainer.max_steps, which is {total_steps}; "
            "set trainer.max_steps to the run's length in steps, or pass model.scheduler=null for a constant LR"
        )
    if warmup_steps > total_steps // 4:
        log.info("warm-up shortened from %d to %d steps, a quarter of the run's %d", warmup_steps, total_steps // 4, total_steps)
        warmup_steps = total_steps // 4

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class WarmupPlateau(LRScheduler):
    """Linear warm-up to the base LR over ``warmup_steps``, then the base LR until validation
    stops improving: after ``patience`` validations in a row that do not beat the best loss
    by more than ``threshold``, the LR is multiplied by ``factor`` (pytorch/examples'
    word_language_model quarters its LR the same way, once per epoch).

    The schedule follows the data, not ``trainer.max_steps``: a longer budget becomes more
    training at smaller rates, and early stopping ends the run once a few cuts no longer
    help. torch's ``ReduceLROnPlateau`` does this too, but Lightning steps a plateau
    scheduler at every training step once a validation metric exists, counting one
    validation many times; here :class:`rnnlm.models.LanguageModel` calls :meth:`observe`
    once per validation, before the checkpoints of that validation are written, so the
    best/bad counters and the scale are in them and a resumed run continues exactly.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, factor: float = 0.25,
        patience: int = 0, threshold: float = 0.0,
    ):
        self.warmup_steps, self.factor, self.patience, self.threshold = warmup_steps, factor, patience, threshold
        self.scale, self.best, self.bad_validations = 1.0, math.inf, 0
        self.observed_at = -1  # the step of the last validation seen
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        warm = min(1.0, (self.last_epoch + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return [base * warm * self.scale for base in self.base_lrs]

    SETTINGS = ("warmup_steps", "factor", "patience", "threshold")

    def load_state_dict(self, state_dict: dict) -> None:
        """The checkpoint's progress (step, best loss, count, scale) with this run's settings: a
        run resumed with another ``model.scheduler.patience`` uses it, as early stopping does."""
        settings = {name: getattr(self, name) for name in self.SETTINGS}
        super().load_state_dict(state_dict)
        self.__dict__.update(settings)

    def observe(self, loss: float) -> None:
        """One validation's loss: cut the LR (from the next step on) if it is the
        ``patience + 1``-th in a row without an improvement. A second validation at the same
        step (Lightning validates again when a run is asked to stop there) counts once."""
        if self.last_epoch == self.observed_at:
            return
        self.observed_at = self.last_epoch
        if loss < self.best - self.threshold:
            self.best, self.bad_validations = loss, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.patience:
            self.scale *= self.factor
            self.bad_validations = 0
            log.info("validation loss %.4f did not improve on %.4f: learning rate x%g, now x%g of its peak",
                     loss, self.best, self.factor, self.scale)
            self._last_lr = self.get_lr()
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr
