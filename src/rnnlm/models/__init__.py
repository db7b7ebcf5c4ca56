from rnnlm.models.module import LanguageModel
from rnnlm.models.network import RNNLM

__all__ = ["RNNLM", "LanguageModel"]
