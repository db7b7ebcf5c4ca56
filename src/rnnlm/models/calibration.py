"""Calibration: one factor on the logits, fitted on held-out text, owned by this module.

An over-fitting model grows over-confident on text it has not seen. ``data.calibration=F``
holds out the first fraction ``F`` of the train split (the data module only cuts that
slice, ``tokens["calibration"]``). Before each validation, :class:`Calibrate` fits the
factor ``s`` on the logits (``1 / s`` is a softmax temperature) that minimises the held-out
loss and writes it to the network's ``logit_scale`` buffer. The network multiplies its
logits by that buffer outside training; the buffer is saved with the weights, so every
later use of a checkpoint (validation, test, score mode, sampling) sees calibrated logits.

Sampling's ``temperature`` divides those calibrated logits: ``temperature=1`` samples
from the calibrated distribution, the one whose loss validation reports; an uncalibrated
checkpoint has ``logit_scale = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn

from rnnlm.models.evaluation import stateful_chunks

SCALE_GRID = tuple(0.5 + 0.025 * i for i in range(41))  # 0.5 ... 1.5
LANES = 4  # lanes of ~2.8k characters for tiny-shakespeare's 1%


@torch.no_grad()
def fit_logit_scale(
    net: nn.Module, ids: torch.Tensor, lanes: int = LANES, chunk: int = 256, grid: Sequence[float] = SCALE_GRID
) -> tuple[float, float, float]:
    """The factor on the logits that minimises the NLL of ``ids``.

    One stateful pass scores every ``grid`` value; a parabola through the best one and its
    neighbours refines it. Returns (scale, loss at scale 1, loss at the best grid value). The
    net's own ``logit_scale`` is set to 1 for the pass and left there: the caller sets it.
    """
    net.logit_scale.fill_(1.0)
    scales = (1.0, *grid)
    totals, count = torch.zeros(len(scales), dtype=torch.float64), 0
    for flat, target in stateful_chunks(net, ids, lanes, chunk):
        picked = flat.gather(1, target[:, None]).squeeze(1)
        # One scale at a time: [scales, tokens, vocab] at once would not fit for word vocabularies.
        sums = torch.stack([(torch.logsumexp(flat * s, dim=-1) - picked * s).sum() for s in scales])
        totals += sums.double().cpu()
        count += target.numel()
    losses = (totals / count)[1:]
    best = int(losses.argmin())
    scale = float(grid[best])
    if 0 < best < len(grid) - 1:
        left, mid, right = (float(losses[best + d]) for d in (-1, 0, 1))
        curvature = left - 2 * mid + right
        if curvature > 0:
            scale += 0.5 * (grid[best + 1] - grid[best]) * (left - right) / curvature
    return scale, float(totals[0] / count), float(losses[best])


class Calibrate(pl.Callback):
    """Before each validation (during fitting, and in ``trainer.validate`` after it), fit ``logit_scale`` on the data module's
    ``tokens["calibration"]`` (a no-op without that slice) and log
    ``calibration/logit_scale``, ``calibration/loss_raw`` and ``calibration/loss``.

    Validation's own stateful pass (the LightningModule's ``on_validation_epoch_start``)
    runs after every callback's, so it scores the calibrated model. A weight-averaging
    callback (EMA/SWA) swaps its averaged weights in at validation start and the training
    weights back at its end, buffers included: this callback runs after it, so the scale is
    fitted on the averaged weights and written to both.
    """

    def __init__(self, lanes: int = LANES):
        self.lanes = lanes
        self.scale: float | None = None  # the last fitted scale

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Move after the last weight-averaging callback. The list is rebound, not changed in
        # place: Lightning is iterating the old one to call this very hook.
        others = [c for c in trainer.callbacks if c is not self]
        after = max((i + 1 for i, c in enumerate(others) if isinstance(c, WeightAveraging)), default=0)
        if after > trainer.callbacks.index(self):
            trainer.callbacks = [*others[:after], self, *others[after:]]

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokens = getattr(trainer.datamodule, "tokens", {}).get("calibration")
        if tokens is None or trainer.sanity_checking:
            return
        # Every rank fits the same scale on the same tokens.
        scale, loss_raw, loss = fit_logit_scale(pl_module.net, tokens, lanes=self.lanes)
        pl_module.net.logit_scale.fill_(scale)
        self.scale = scale
        pl_module.log_dict({"calibration/logit_scale": scale, "calibration/loss_raw": loss_raw,
                            "calibration/loss": loss}, sync_dist=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scale is not None:  # the training weights, swapped back by an averaging callback
            pl_module.net.logit_scale.fill_(self.scale)
