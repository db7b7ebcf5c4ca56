"""What the entry points share: one-line errors, W&B cleanup, the optimised metric."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from rnnlm.errors import RnnlmError


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run so the next multirun job starts its own (no-op without W&B)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def run_task(
    cfg: DictConfig,
    task: Callable[[DictConfig], tuple[dict[str, float], dict[str, Any]]],
    report: Callable[[dict[str, float], dict[str, Any]], str] | None = None,
) -> float | None:
    """Run ``task`` with clean error reporting; return ``cfg.optimized_metric`` for sweepers.

    A :class:`RnnlmError` prints ``error: <message>`` and exits with status 2 (in a multirun
    it is re-raised so Hydra records the failed job). ``HYDRA_FULL_ERROR=1`` shows tracebacks.
    """
    exit_code = 1
    try:
        metrics, objects = task(cfg)
        exit_code = 0
    except RnnlmError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise
        print(f"error: {err}", file=sys.stderr)
        finish_wandb(1)
        sys.exit(err.exit_code)
    finally:
        finish_wandb(exit_code)
    if report is not None and int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(report(metrics, objects), flush=True)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
