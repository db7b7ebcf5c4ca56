"""Hydra's Optuna sweeper, ending in one line when every trial failed (Hydra takes
sweepers only from the ``hydra_plugins`` namespace, hence this package)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
NO_COMPLETED_TRIAL = ("No trials are completed yet", "Record does not exist")

try:  # Hydra imports every plugin module at start-up; Optuna's sweeper is an optional extra
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as HydraOptunaSweeper
except ImportError:  # pragma: no cover - without the extra there is nothing to wrap
    HydraOptunaSweeper = None

if HydraOptunaSweeper is not None:

    class OptunaSweeper(HydraOptunaSweeper):
        """The plugin asks the study for its best trial at the end, which raises when no trial
        completed (each failed on bad input: such a job returns None, which the plugin marks
        failed); here the sweep then ends normally and the run-dir callback lists the failed
        jobs (``rnnlm.utils.rundir``). A job that crashed still raises, with its traceback."""

        def sweep(self, arguments: list[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError as err:
                # In-memory and database storages word it differently (optuna 2.x).
                if not any(text in str(err) for text in NO_COMPLETED_TRIAL):
                    raise
                log.error("no trial of the study completed")
                return None
