"""``y = x @ weight.T + bias`` for many calls on the same weight with few rows each.

On a CPU with oneDNN the weight is packed once in oneDNN's blocked layout
(``_reorder_linear_weight``/``_linear_pointwise``, what ``torch.compile`` uses for frozen CPU
linears). For the skinny products of recurrent steps that beats MKL's ``addmm``, which
re-packs the weight into its blocked panels on every call: here that happens once, with a
blocking chosen for the expected number of rows (see docs/performance.md). Elsewhere (GPU, builds
without oneDNN, ``torch.backends.mkldnn.flags(enabled=False)``) it is ``addmm`` on a
pre-transposed weight.
"""

from __future__ import annotations

import torch


def onednn_usable(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled  # ``torch.backends.mkldnn.flags(enabled=False)`` opts out
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear:
    """``y = x @ weight.T + bias`` with the weight arranged once for repeated small batches.

    ``batch_hint`` is the number of rows the calls will usually have (oneDNN picks its
    blocking for it); any number works. ``bias=None`` means no bias; ``onednn=False`` takes
    ``addmm`` even where oneDNN is usable.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int, onednn: bool = True):
        weight = weight.detach()
        self.bias = bias.detach().contiguous() if bias is not None else None
        self.packed: torch.Tensor | None = None
        if onednn and onednn_usable(weight):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch_hint)
                self(weight.new_zeros(1, weight.size(1)))  # refuse now, not mid-loop
            except RuntimeError:
                self.packed = None
        if self.packed is None:
            self.weight_t = weight.T.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.bias is None:
            return x @ self.weight_t
        return torch.addmm(self.bias, x, self.weight_t)


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for large fp32 products (any strides): oneDNN where usable, whose kernels can
    outrun MKL's ``mm`` (the benchmark measures both; docs/performance.md), else ``mm``."""
    if onednn_usable(b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.T
