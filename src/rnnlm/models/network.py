"""The recurrent network itself: tokens and state in, next-token logits and state out."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm import fastpaths
from rnnlm.models.evaluation import logit_scores
from rnnlm.models.output import auto_cutoffs, check_cutoffs, max_tails, resolve_output
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import check_args

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# The RNNLM arguments that leave the weights' shapes as they are: a run may resume with others.
SHAPE_FREE_ARGUMENTS = ("dropout", "input_dropout", "embedding_dropout", "weight_drop", "onehot_max_vocab")


def flops_per_token(cell: str, vocab_size: int, hidden_size: int, num_layers: int, embedding_dim: int | None,
                    output_macs: float | None = None) -> float:
    """Forward FLOPs per token: 2 x multiply-adds of every matmul (recurrent layers + output).

    A layer does ``gates * H * (input + H)`` MACs per token (LSTM: 4 gates, GRU: 3); one-hot
    input counts as a matmul with ``vocab_size`` inputs; the output layer does ``H * vocab``
    unless ``output_macs`` says otherwise. Training is taken as 3 x forward.
    """
    macs, width = 0, embedding_dim if embedding_dim is not None else vocab_size
    for _ in range(num_layers):
        macs += GATES[cell] * hidden_size * (width + hidden_size)
        width = hidden_size
    macs += hidden_size * vocab_size if output_macs is None else output_macs
    return 2.0 * macs


class RNNLM(nn.Module):
    """Embedding (or one-hot) -> input dropout -> ``nn.LSTM``/``nn.GRU``/``nn.RNN`` stack ->
    dropout -> linear, or ``nn.AdaptiveLogSoftmaxWithLoss`` (``output="adaptive"``, see
    :mod:`rnnlm.models.output`; ``adaptive_cutoffs=None`` assumes Zipf frequencies).

    ``embedding_dim=None`` feeds one-hot vectors, like the classic lesson; it is refused for
    vocabularies above ``onehot_max_vocab`` because the input matrix grows with the vocab.
    ``tie_weights`` shares the embedding and output matrices (needs
    ``embedding_dim == hidden_size``). ``dropout`` acts between layers and before the
    output layer; ``input_dropout`` on the embedded (or one-hot) input to the first layer.

    Two regularisers of AWD-LSTM (Merity et al., 2018) for small corpora, active in training only:
    ``embedding_dropout`` drops whole rows of the embedding (every occurrence of a word in a
    batch at once), and ``weight_drop`` drops entries of each layer's hidden-to-hidden matrix
    (DropConnect), one mask per batch shared by all time steps, so the recurrence itself is
    regularised without touching the fused kernel's step.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding_dim: int | None = 64,
        tie_weights: bool = False,
        onehot_max_vocab: int = 1024,
        input_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        weight_drop: float = 0.0,
        output: str = "softmax",
        adaptive_cutoffs: list[int] | None = None,
        adaptive_div_value: float = 4.0,
    ):
        super().__init__()
        check_args("model", vocab_size=vocab_size, cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                   dropout=dropout, embedding_dim=embedding_dim, onehot_max_vocab=onehot_max_vocab,
                   input_dropout=input_dropout, embedding_dropout=embedding_dropout, weight_drop=weight_drop,
                   output=output, adaptive_div_value=adaptive_div_value)
        if embedding_dim is None:
            if vocab_size > onehot_max_vocab:
                raise ConfigError(
                    f"one-hot input with a vocabulary of {vocab_size} tokens exceeds "
                    f"model.onehot_max_vocab={onehot_max_vocab}; set model.embedding_dim=<int> "
                    "(e.g. 128) to use a learned embedding"
                )
            self.embedding = None
            input_size = vocab_size
        else:
            input_size = embedding_dim
            self.embedding = nn.Embedding(vocab_size, input_size)
        if tie_weights and embedding_dim != hidden_size:
            raise ConfigError(
                f"model.tie_weights=true needs model.embedding_dim ({embedding_dim}) == "
                f"model.hidden_size ({hidden_size})"
            )
        self.vocab_size, self.cell, self.hidden_size, self.num_layers = vocab_size, cell, hidden_size, num_layers
        self.rnn = CELLS[cell](
            input_size, hidden_size, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        if embedding_dropout and embedding_dim is None:
            raise ConfigError("model.embedding_dropout needs a learned embedding: set model.embedding_dim=<int> "
                              "or model.embedding_dropout=0")
        self.input_dropout = nn.Dropout(input_dropout)
        self.embedding_dropout, self.weight_drop = float(embedding_dropout), float(weight_drop)
        self.dropout = nn.Dropout(dropout)
        self.decoder: nn.Linear | None = None
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        if resolve_output(output, vocab_size) == "adaptive":
            if tie_weights:
                raise ConfigError("model.tie_weights=true needs model.output=softmax: an adaptive softmax has no "
                                  "vocabulary-sized matrix to share")
            tails = max_tails(hidden_size, adaptive_div_value)
            if tails == 0:
                raise ConfigError(f"model.hidden_size={hidden_size} is below model.adaptive_div_value={adaptive_div_value}: "
                                  "no tail cluster of an adaptive softmax would get a unit; use model.output=softmax, "
                                  "a wider model or a smaller adaptive_div_value")
            cutoffs = check_cutoffs(auto_cutoffs(vocab_size, None, tails) if adaptive_cutoffs is None else adaptive_cutoffs,
                                    vocab_size)
            if len(cutoffs) > tails:
                raise ConfigError(f"model.adaptive_cutoffs={cutoffs} makes {len(cutoffs)} tail clusters, but with "
                                  f"model.hidden_size={hidden_size} and model.adaptive_div_value={adaptive_div_value} only "
                                  f"{tails} get a projection at least one unit wide; give at most {tails} cutoffs")
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, cutoffs,
                                                          div_value=float(adaptive_div_value), head_bias=True)
        else:
            self.decoder = nn.Linear(hidden_size, vocab_size)
            if tie_weights:
                self.decoder.weight = self.embedding.weight
        # Multiplies the logits outside training; fitted by rnnlm.models.calibration, 1 = uncalibrated.
        self.register_buffer("logit_scale", torch.ones(()))

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.setdefault(prefix + "logit_scale", torch.ones(()))  # checkpoints from before calibration
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return F.one_hot(tokens, self.vocab_size).to(self.rnn.weight_ih_l0.dtype)
        embedded = self.embedding(tokens)
        if self.training and self.embedding_dropout:  # one draw per vocabulary entry, looked up per token
            keep = embedded.new_empty(self.vocab_size).bernoulli_(1 - self.embedding_dropout)
            embedded = embedded * (keep / (1 - self.embedding_dropout))[tokens][..., None]
        return embedded

    def inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [batch, time] -> the first recurrent layer's input (embedded, dropped out)."""
        return self.input_dropout(self.embed(tokens))

    def features(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens`` [batch, time] -> the output layer's input [batch, time, hidden] and the new state."""
        weights = None
        if self.training and self.weight_drop:
            weights = {name: F.dropout(w, self.weight_drop) if name.startswith("weight_hh") else w
                       for name, w in self.rnn.named_parameters()}
        outputs, state = fastpaths.recurrent_forward(self.rnn, self.inputs(tokens), state, weights)  # self.rnn, or faster
        return self.dropout(outputs), state

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens`` [batch, time] -> logits [batch, time, vocab] and the new state. An
        adaptive softmax gives its full log-probabilities: logits whose softmax is the same."""
        hidden, state = self.features(tokens, state)
        return self.scaled_logits(hidden), state

    def scaled_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """:meth:`output_logits` times the fitted logit scale outside training: ``forward``'s logits."""
        logits = self.output_logits(hidden)
        return logits if self.training else logits * self.logit_scale

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: [batch, time, hidden] -> logits [batch, time, vocab], unscaled."""
        if self.adaptive is None:
            return self.decoder(hidden)
        with self._full_precision(hidden) as flat:
            return self.adaptive.log_prob(flat).view(*hidden.shape[:-1], -1)

    def compile_around_recurrence(self) -> None:
        """``torch.compile`` the layers before and after the recurrent stack, never the stack:
        dynamo breaks the graph at ``nn.LSTM``/``nn.GRU`` (pytorch #167275) and may not resume
        the function correctly after the break (#141184), and a fused cuDNN/oneDNN RNN kernel
        has nothing to gain from compiling. Each compiled function is bound to this instance as a method,
        so a deep copy (an EMA's averaged model) runs on its own weights; the state dict is
        unchanged."""
        for name in ("inputs", "output_logits", "output_loss"):
            setattr(self, name, types.MethodType(torch.compile(getattr(type(self), name)), self))

    @contextlib.contextmanager
    def _full_precision(self, hidden: torch.Tensor) -> Iterator[torch.Tensor]:
        """``hidden`` flattened to [tokens, hidden] in its weights' type (fp32 under mixed
        precision), autocast off: the adaptive softmax writes its log-probabilities into a
        tensor of its input's type, which under bf16 autocast would hold them in bf16 (CPU)
        or clash with fp32 ones (CUDA). Its matrices are small, so fp32 costs little."""
        with torch.autocast(hidden.device.type, enabled=False):
            yield hidden.reshape(-1, self.hidden_size).to(self.adaptive.head.weight.dtype)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Mean cross-entropy (nats per token) of ``targets`` and the new state: training's
        loss. An adaptive softmax computes each token's own cluster only; the logit scale is
        left out (it is fitted after training, on held-out text)."""
        hidden, state = self.features(tokens, state)
        return self.output_loss(hidden, targets), state

    def output_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The output layer's mean cross-entropy of ``targets`` given [batch, time, hidden]."""
        flat_targets = targets.reshape(-1)
        if self.adaptive is None:
            return F.cross_entropy(self.decoder(hidden).reshape(-1, self.vocab_size), flat_targets)
        with self._full_precision(hidden) as flat:
            return self.adaptive(flat, flat_targets).loss

    def target_scores(self, tokens: torch.Tensor, targets: torch.Tensor,
                      state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The log-probability of each target as ``forward`` scores it (logit scale included),
        whether it was the most likely token ([batch, time] each), and the new state. An
        adaptive softmax at scale 1 computes only the head and each target's cluster, never
        the whole vocabulary (a scaled one must renormalise over it)."""
        if self.adaptive is None or self.training or float(self.logit_scale) != 1.0:
            logits, state = self(tokens, state)
            return (*logit_scores(logits, targets), state)
        hidden, state = self.features(tokens, state)
        flat_targets = targets.reshape(-1)
        with self._full_precision(hidden) as flat:
            log_probs = self.adaptive(flat, flat_targets).output
            hits = self.adaptive.predict(flat) == flat_targets
        return log_probs.view_as(targets), hits.view_as(targets), state

    def output_macs(self, cluster_shares: list[float] | None = None) -> float:
        """Multiply-adds of the output layer per token: ``H * vocab`` for a softmax; for an
        adaptive one the head plus each tail cluster weighted by ``cluster_shares`` (the
        fraction of tokens in it, as in training; ``None``: every cluster, as in
        ``forward``)."""
        if self.adaptive is None:
            return float(self.hidden_size * self.vocab_size)
        macs = float(self.adaptive.head.weight.numel())
        for i, tail in enumerate(self.adaptive.tail):
            share = 1.0 if cluster_shares is None else cluster_shares[i]
            macs += share * sum(layer.weight.numel() for layer in tail)
        return macs

    def flops_per_token(self, cluster_shares: list[float] | None = None) -> float:
        """Forward FLOPs per token (see :func:`flops_per_token` and :meth:`output_macs`)."""
        embedding_dim = self.embedding.embedding_dim if self.embedding is not None else None
        return flops_per_token(self.cell, self.vocab_size, self.hidden_size, self.num_layers, embedding_dim,
                               self.output_macs(cluster_shares))

    def memory_report(self) -> dict[str, int]:
        """Parameter counts worth logging, including the input matrix that grows with vocab."""
        input_params = (
            self.embedding.weight.numel() if self.embedding is not None
            else self.rnn.weight_ih_l0.numel()  # one-hot: the first layer's input matrix
        )
        return {
            "params_total": sum(p.numel() for p in self.parameters()),
            "params_rnn": sum(p.numel() for p in self.rnn.parameters()),
            "params_input": input_params,
        }
