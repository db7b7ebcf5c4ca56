"""Which ``Trainer(precision=...)`` runs fastest here, and which cannot run at all."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

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


def auto_precision(accelerator: str, cell: str = "lstm", hidden_size: int = 256, num_layers: int = 2) -> tuple[str, str]:
    """The fastest safe ``Trainer(precision=...)`` for ``accelerator`` and the recurrent stack, and why.

    On a CUDA GPU: measured, not assumed. cuDNN's LSTM/GRU under bf16 autocast has failed or
    fallen back to slow kernels on several PyTorch/cuDNN versions (pytorch #88136, #116925),
    so one training step of the configured stack is timed under each precision
    (:func:`probe_precisions`) and the fastest that runs is used: bf16-mixed, else
    16-mixed (Lightning adds the gradient scaler), else fp32.

    On the CPU: bf16-mixed where the CPU computes bf16 natively, full fp32 elsewhere:
    emulated bf16 costs time, and fp16 would need loss scaling. Only the LSTM gains from
    bf16, through ``nn.LSTM``'s fused oneDNN kernel; the GRU's fast path
    (``rnnlm.fastpaths.gru``) is fp32 only, and ``nn.GRU``/``nn.RNN`` under bf16 autocast run
    step by step, slower than in fp32 (docs/performance.md).
    """
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            return "32-true", "no CUDA device is visible"
        return choose_cuda_precision(probe_precisions(cell, hidden_size, num_layers, CUDA_PRECISIONS))
    if accelerator not in ("cpu", "auto"):
        return "32-true", f"no bf16 rule for accelerator={accelerator}"
    if cell != "lstm":
        return "32-true", f"the CPU {cell.upper()} trains faster in fp32"
    if native_cpu_bf16():
        return "bf16-mixed", "the CPU has native bf16: AVX512-BF16 or AMX"
    return "32-true", "the CPU has no native bf16"


# What a GPU run may use, in order of preference when equally fast.
CUDA_PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


def choose_cuda_precision(timings: dict[str, float | str]) -> tuple[str, str]:
    """The fastest precision that ran (ties go to the earlier of :data:`CUDA_PRECISIONS`), and
    the measurements as the reason. ``timings`` maps a precision to seconds per step, or to
    why it failed."""
    ran = {p: t for p, t in timings.items() if isinstance(t, float)}
    measured = ", ".join(f"{p} {t * 1e3:.2f} ms" if isinstance(t, float) else f"{p} failed: {t}" for p, t in timings.items())
    if not ran:
        return "32-true", f"no precision ran one training step ({measured})"
    best = min(ran, key=lambda p: (ran[p], CUDA_PRECISIONS.index(p)))
    return best, f"one training step of the recurrent stack on the GPU: {measured}"


def time_training_step(cell: str, hidden_size: int, num_layers: int, precision: str, device: str = "cuda",
                       batch_size: int = 32, seq_len: int = 64, reps: int = 5) -> float:
    """Median seconds of one forward and backward pass of a ``cell`` stack of this size under
    ``precision``'s autocast, after one untimed step (cuDNN picks its kernels there)."""
    from rnnlm.models.network import CELLS

    rnn = CELLS[cell](hidden_size, hidden_size, num_layers, batch_first=True).to(device)
    inputs = torch.randn(batch_size, seq_len, hidden_size, device=device, requires_grad=True)
    dtype = AUTOCAST_DTYPES[precision]

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            outputs, _ = rnn(inputs)
        outputs.float().square().mean().backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_here(cell: str, hidden_size: int, num_layers: int, precisions: list[str], device: str) -> dict[str, float | str]:
    """:func:`time_training_step` for each precision in this process: seconds, or the first
    line of what it raised."""
    timings: dict[str, float | str] = {}
    for precision in precisions:
        try:
            timings[precision] = time_training_step(cell, hidden_size, num_layers, precision, device)
        except Exception as error:  # noqa: BLE001 - any failure of a kernel means "cannot use it"
            timings[precision] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return timings


def probe_precisions(cell: str, hidden_size: int, num_layers: int, precisions: tuple[str, ...] | list[str],
                     device: str = "cuda") -> dict[str, float | str]:
    """:func:`probe_here` in a child process: touching a GPU initialises CUDA, and Lightning's
    fork-based strategies (``ddp_fork``, ``ddp_notebook``) refuse to start once it is. A
    child that gives no answer reports why, for each precision."""
    args = json.dumps([cell, hidden_size, num_layers, list(precisions), device])
    code = "import json, sys; from rnnlm.training.precision import probe_here; print(json.dumps(probe_here(*json.loads(sys.argv[1]))))"
    try:
        probe = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        return {precision: f"the probe process failed: {error}" for precision in precisions}
    try:
        return json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit status {probe.returncode}"
        return {precision: f"the probe process failed: {last}" for precision in precisions}


def check_precision(precision: str, accelerator: str, cell: str, hidden_size: int = 256, num_layers: int = 2) -> None:
    """Refuse what cannot run. oneDNN builds no bf16 LSTM kernel for a CPU without native bf16,
    so ``nn.LSTM`` under bf16 autocast fails there on its first step; on a GPU a mixed
    precision is tried for one step of the configured stack first (:func:`probe_precisions`)."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and cell == "lstm" and str(precision).startswith("bf16") and not native_cpu_bf16():
        raise ConfigError(
            f"trainer.precision={precision} with model.cell=lstm needs a CPU with native bf16 (AVX512-BF16 or AMX), "
            "which this one lacks; use trainer.precision=auto (fp32 here) or 32-true"
        )
    if not on_cpu and torch.cuda.is_available() and precision in ("bf16-mixed", "16-mixed"):
        outcome = probe_precisions(cell, hidden_size, num_layers, [precision])[precision]
        if not isinstance(outcome, float):
            raise ConfigError(f"trainer.precision={precision} fails on this GPU for a {cell.upper()} ({outcome}); "
                              "use trainer.precision=auto (it picks what runs) or 32-true")
