"""Recurrent neural language models with PyTorch Lightning and Hydra."""

from omegaconf import OmegaConf

# ${rnnlm.or:a,b}: a unless it is null/empty, else b (used by hydra.run.dir for resume_dir).
if not OmegaConf.has_resolver("rnnlm.or"):
    OmegaConf.register_new_resolver("rnnlm.or", lambda first, second: first if first else second)


def _config_subdir(resume_dir: str) -> str | None:
    """``hydra.output_subdir``: a resumed run's config is written beside the run's own and
    replaces it only once the resume checks pass and Lightning has restored the checkpoint
    (``rnnlm.utils.rundir.promote_pending_config``); ranks > 0 (srun, torchrun) write none, as Lightning's own launched ranks do."""
    from rnnlm.utils.rundir import PENDING_CONFIG_DIR, is_launched_rank

    return None if is_launched_rank() else PENDING_CONFIG_DIR if resume_dir else ".hydra"


if not OmegaConf.has_resolver("rnnlm.config_subdir"):
    OmegaConf.register_new_resolver("rnnlm.config_subdir", _config_subdir)
