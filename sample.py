"""Generate text from (or score text with) a checkpoint: ``python sample.py [overrides]``."""

import hydra
from omegaconf import DictConfig

from rnnlm.utils.cli import run_task
from rnnlm.utils.overrides import quote_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> float | None:
    # Imported here: torch and Lightning take seconds to load, and a bad run dir or option
    # (checked by Hydra's callbacks first) should fail at once.
    if cfg.get("mode") == "serve":
        from rnnlm.sampling.playground.server import report, serve

        return run_task(cfg, serve, report)
    from rnnlm.sampling.sample import report, sample

    return run_task(cfg, sample, report)


if __name__ == "__main__":
    quote_argv()
    main()
