"""Recurrent neural language models with PyTorch Lightning and Hydra."""

from omegaconf import OmegaConf

# ${rnnlm.or:a,b}: a unless it is null/empty, else b (used by hydra.run.dir for resume_dir).
if not OmegaConf.has_resolver("rnnlm.or"):
    OmegaConf.register_new_resolver("rnnlm.or", lambda first, second: first if first else second)
