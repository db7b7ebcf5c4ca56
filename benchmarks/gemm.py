"""1. The fp32 GEMM peak (``torch.matmul`` and the oneDNN path), to turn tokens/s into MFU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Plan, best_time


def _gemm_variants(n: int) -> dict[str, Callable[[], object]]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    variants: dict[str, Callable[[], object]] = {"matmul": lambda: torch.matmul(a, b)}
    if torch.backends.mkldnn.is_available():
        am, bm = a.to_mkldnn(), b.to_mkldnn()
        variants["onednn_linear"] = lambda: F.linear(am, bm)  # x @ w.T on oneDNN tensors
        variants["onednn_linear_pointwise"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return variants


def measure_gemm_peak(plan: Plan, best: dict[str, float] | None = None) -> dict[str, Any]:
    """Best fp32 GFLOP/s of ``torch.matmul`` and of oneDNN linear over large square matrices.

    ``best`` holds an earlier pass's figures to improve on (the bench measures at its start
    and again at its end, since a busy machine depresses a peak more than a step median).
    """
    best = dict(best or {})
    for n in plan.gemm_sizes:
        for name, fn in _gemm_variants(n).items():
            try:
                seconds = best_time(fn, plan.gemm_reps)
            except (RuntimeError, NotImplementedError, AttributeError):
                continue  # this torch build lacks the op
            best[name] = max(best.get(name, 0.0), 2.0 * n**3 / seconds / 1e9)
    onednn = max((v for k, v in best.items() if k.startswith("onednn")), default=float("nan"))
    method = max(best, key=best.get)
    return {
        "gemm_gflops_matmul": best["matmul"],
        "gemm_gflops_onednn": onednn,
        "gemm_by_method": best,
        "peak_method": method,
        "peak_gflops": best[method],
    }
