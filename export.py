"""Take a model anywhere: ``python export.py ckpt=<checkpoint> format=onnx|web out=<dir>``."""

import hydra
from omegaconf import DictConfig

from rnnlm.utils.cli import run_task
from rnnlm.utils.overrides import quote_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> float | None:
    from rnnlm.exporting.export import export, report  # torch loads in seconds: bad options fail first

    return run_task(cfg, export, report)


if __name__ == "__main__":
    quote_argv()
    main()
