"""Learning-rate schedules, stepped once per optimiser step."""

from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

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
