"""Train a recurrent language model: ``python train.py [hydra overrides]``."""

import hydra
from omegaconf import DictConfig

from rnnlm.utils.cli import run_task
from rnnlm.utils.overrides import quote_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here: torch and Lightning take seconds to load, and a bad run dir or option
    # (checked by Hydra's callbacks first) should fail at once.
    from rnnlm.training.train import summary, train

    return run_task(cfg, train, summary)


if __name__ == "__main__":
    quote_argv()
    main()
