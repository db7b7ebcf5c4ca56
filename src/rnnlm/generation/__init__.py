from rnnlm.generation.decoding import DecodeSettings, Generation, beam_search, filter_logits, generate
from rnnlm.generation.stats import distinct_n, repetition_rate, sample_statistics
from rnnlm.models.evaluation import score_ids

__all__ = [
    "DecodeSettings", "Generation", "beam_search", "distinct_n", "filter_logits", "generate",
    "repetition_rate", "sample_statistics", "score_ids",
]
