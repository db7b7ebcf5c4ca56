"""Which ``Trainer(precision=...)`` runs fastest here, and which cannot run at all."""

from __future__ import annotations

import subprocess
import sys

import torch

from rnnlm.utils.errors import ConfigError


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), per torch's cpuinfo.

    Without it oneDNN emulates bf16 in fp32 and conversions, which makes bf16-mixed slower
    than fp32; with it one bf16 instruction does twice the multiply-adds of an fp32 one (more
    with AMX tiles) and moves half the bytes.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def auto_precision(accelerator: str, cell: str = "lstm") -> tuple[str, str]:
    """The fastest safe ``Trainer(precision=...)`` for ``accelerator`` and ``cell``, and why.

    bf16-mixed where the device computes bf16 natively (recent CPUs, Ampere+ GPUs), full
    fp32 elsewhere: emulated bf16 costs time, and fp16 would need loss scaling. On the CPU
    only the LSTM gains from bf16, through ``nn.LSTM``'s fused oneDNN kernel; the GRU's fast
    path (``rnnlm.fastpaths.gru``) is fp32 only, and ``nn.GRU``/``nn.RNN`` under bf16
    autocast run step by step, slower than in fp32 (docs/performance.md).
    """
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.is_available() and _cuda_native_bf16():
            return "bf16-mixed", "the GPU supports bf16"
        return "32-true", "the GPU has no bf16"
    if accelerator not in ("cpu", "auto"):
        return "32-true", f"no bf16 rule for accelerator={accelerator}"
    if cell != "lstm":
        return "32-true", f"the CPU {cell.upper()} trains faster in fp32"
    if native_cpu_bf16():
        return "bf16-mixed", "the CPU has native bf16: AVX512-BF16 or AMX"
    return "32-true", "the CPU has no native bf16"


def check_precision(precision: str, accelerator: str, cell: str) -> None:
    """Refuse what cannot run: oneDNN builds no bf16 LSTM kernel for a CPU without native bf16,
    so ``nn.LSTM`` under bf16 autocast fails there on its first step."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and cell == "lstm" and str(precision).startswith("bf16") and not native_cpu_bf16():
        raise ConfigError(
            f"trainer.precision={precision} with model.cell=lstm needs a CPU with native bf16 (AVX512-BF16 or AMX), "
            "which this one lacks; use trainer.precision=auto (fp32 here) or 32-true"
        )


def cuda_bf16_here() -> bool:
    """Whether GPU 0 computes bf16 natively, asked in this process (initialises CUDA)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no emulation flag and reports native support only
        return torch.cuda.is_bf16_supported()


def _cuda_native_bf16() -> bool:
    """:func:`cuda_bf16_here`, asked in a child process unless CUDA is already up here: querying
    a device initialises CUDA, and Lightning's fork-based strategies (``ddp_fork``,
    ``ddp_notebook``) refuse to start once it is."""
    if torch.cuda.is_initialized():
        return cuda_bf16_here()
    code = "from rnnlm.training.precision import cuda_bf16_here; print(cuda_bf16_here())"
    try:
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.stdout.strip() == "True"
