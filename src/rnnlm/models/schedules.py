"""Learning-rate schedules, stepped once per optimiser step, built from torch's own."""

from __future__ import annotations

import logging

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from rnnlm.errors import ConfigError

log = logging.getLogger(__name__)
HOLD_FOREVER = 2**62  # ConstantLR's total_iters: the final LR holds for the rest of the run


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> LRScheduler:
    """Linear warm-up to the base LR over ``warmup_steps`` (at most a quarter of the run, so
    a short run still decays), then a cosine decay to ``min_ratio`` x base LR at
    ``total_steps``, held there afterwards (a resumed run given more steps): torch's
    ``LinearLR``, ``CosineAnnealingLR`` and ``ConstantLR`` in a ``SequentialLR``."""

    if total_steps < 1:
        raise ConfigError(
            f"the cosine schedule decays over trainer.max_steps, which is {total_steps}; "
            "set trainer.max_steps to the run's length in steps, or pass model.scheduler=null for a constant LR"
        )
    if len(optimizer.param_groups) != 1:
        raise ConfigError("the cosine schedule takes an optimiser with one parameter group")
    if warmup_steps > total_steps // 4:
        log.info("warm-up shortened from %d to %d steps, a quarter of the run's %d", warmup_steps, total_steps // 4, total_steps)
        warmup_steps = total_steps // 4
    base_lr = optimizer.param_groups[0]["lr"]
    phases: list[LRScheduler] = []
    if warmup_steps:
        phases.append(LinearLR(optimizer, start_factor=1 / warmup_steps, total_iters=warmup_steps - 1))
    phases.append(CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_ratio * base_lr))
    phases.append(ConstantLR(optimizer, factor=min_ratio, total_iters=HOLD_FOREVER))
    milestones = [warmup_steps, total_steps] if warmup_steps else [total_steps]
    return SequentialLR(optimizer, phases, milestones=milestones)
