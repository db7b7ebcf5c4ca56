from rnnlm.models.module import LanguageModel
from rnnlm.models.rnn import RNNLM

__all__ = ["RNNLM", "LanguageModel"]
