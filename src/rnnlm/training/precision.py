"""Which ``Trainer(precision=...)`` runs fastest here, and which cannot run at all."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

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


def auto_precision(accelerator: str, network: dict[str, Any], batch_size: int = 32, seq_len: int = 64) -> tuple[str, str]:
    """The fastest safe ``Trainer(precision=...)`` for ``accelerator`` and the network, and why.

    On a CUDA GPU: measured, not assumed. LSTMs in bf16 on cuDNN have failed or run slowly on
    some PyTorch/cuDNN versions (pytorch #88136, #116925), so one training step
    of the configured network (``network``: :class:`rnnlm.models.RNNLM`'s arguments, output
    layer included) at the run's batch is timed under each precision
    (:func:`probe_precisions`) and :func:`choose_cuda_precision` picks.

    On the CPU: bf16-mixed where the CPU computes bf16 natively, full fp32 elsewhere:
    emulated bf16 costs time, and fp16 would need loss scaling. Only the LSTM gains from
    bf16, through ``nn.LSTM``'s fused oneDNN kernel; the GRU's fast path
    (``rnnlm.fastpaths.gru``) is fp32 only, and ``nn.GRU``/``nn.RNN`` under bf16 autocast run
    step by step, slower than in fp32 (docs/performance.md).
    """
    cell = network.get("cell", "lstm")
    if on_cuda(accelerator):
        if not torch.cuda.is_available():
            return "32-true", "no CUDA device is visible"
        return choose_cuda_precision(probe_precisions(network, CUDA_PRECISIONS, batch_size=batch_size, seq_len=seq_len))
    if accelerator not in ("cpu", "auto"):
        return "32-true", f"no bf16 rule for accelerator={accelerator}"
    if cell != "lstm":
        return "32-true", f"the CPU {cell.upper()} trains faster in fp32"
    if native_cpu_bf16():
        return "bf16-mixed", "the CPU has native bf16: AVX512-BF16 or AMX"
    return "32-true", "the CPU has no native bf16"


def on_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def use_tf32() -> None:
    """fp32 matrix products on the tensor cores (TF32) where a GPU has them, as cuDNN's RNN
    kernels already do by default (``torch.backends.cudnn.allow_tf32``): a 32-true run then
    computes its output layer the way it computes its LSTM, and Lightning's hint about it is
    taken. Called for every CUDA run and in each probe."""
    torch.set_float32_matmul_precision("high")


# What a GPU run may use, in order of preference; a later one must be this much faster to win:
# a margin over the noise of a few-millisecond timing, so every rank and every resume of a
# run on the same GPU make the same choice.
CUDA_PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")
FASTER_BY = 0.10
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}
# Lightning's other names for the same precisions.
ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true", "bf16-mixed": "bf16-mixed",
           "16-mixed": "16-mixed", "32-true": "32-true"}


def choose_cuda_precision(timings: dict[str, float | str]) -> tuple[str, str]:
    """The first of :data:`CUDA_PRECISIONS` that ran, unless a later one that ran is faster by
    more than :data:`FASTER_BY`; and the measurements as the reason. ``timings`` maps a
    precision to seconds per step, or to why it failed."""
    ran = {p: t for p, t in timings.items() if isinstance(t, float)}
    measured = ", ".join(f"{p} {t * 1e3:.2f} ms" if isinstance(t, float) else f"{p} failed: {t}" for p, t in timings.items())
    if not ran:
        return "32-true", f"no precision ran one training step ({measured})"
    best = None
    for precision in (p for p in CUDA_PRECISIONS if p in ran):
        if best is None or ran[precision] < (1 - FASTER_BY) * ran[best]:
            best = precision
    return best, f"one training step on the GPU: {measured}"


def time_training_step(network: dict[str, Any], precision: str, device: str = "cuda",
                       batch_size: int = 32, seq_len: int = 64, reps: int = 5) -> float:
    """Median seconds of one forward and backward pass of ``RNNLM(**network)`` over random
    tokens under ``precision``'s autocast, after one untimed step (cuDNN picks its kernels
    there)."""
    from rnnlm.models.network import RNNLM

    if torch.device(device).type == "cuda":
        use_tf32()
    torch.manual_seed(0)
    net = RNNLM(**network).to(device).train()
    tokens = torch.randint(0, network["vocab_size"], (batch_size, seq_len + 1), device=device)
    dtype = AUTOCAST_DTYPES[precision]

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss, _ = net.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_here(network: dict[str, Any], precisions: list[str], device: str, batch_size: int, seq_len: int) -> dict[str, float | str]:
    """:func:`time_training_step` for each precision in this process: seconds, or the first
    line of what it raised."""
    timings: dict[str, float | str] = {}
    for precision in precisions:
        try:
            timings[precision] = time_training_step(network, precision, device, batch_size, seq_len)
        except Exception as error:  # noqa: BLE001 - any failure of a kernel means "cannot use it"
            text = str(error).strip()
            timings[precision] = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    return timings


def probe_precisions(network: dict[str, Any], precisions: tuple[str, ...] | list[str], device: str = "cuda",
                     batch_size: int = 32, seq_len: int = 64) -> dict[str, float | str]:
    """:func:`probe_here` in a child process: touching a GPU initialises CUDA, and Lightning's
    fork-based strategies (``ddp_fork``, ``ddp_notebook``) refuse to start once it is. A
    child that gives no answer reports why, for each precision."""
    args = json.dumps([network, list(precisions), device, batch_size, seq_len])
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


def check_precision(precision: str, accelerator: str, network: dict[str, Any], batch_size: int = 32, seq_len: int = 64) -> None:
    """Refuse what cannot run. oneDNN builds no bf16 LSTM kernel for a CPU without native bf16,
    so ``nn.LSTM`` under bf16 autocast fails there on its first step; on a GPU a mixed
    precision is tried for one step of the configured network first (:func:`probe_precisions`)."""
    cell = network.get("cell", "lstm")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and cell == "lstm" and str(precision).startswith("bf16") and not native_cpu_bf16():
        raise ConfigError(
            f"trainer.precision={precision} with model.cell=lstm needs a CPU with native bf16 (AVX512-BF16 or AMX), "
            "which this one lacks; use trainer.precision=auto (fp32 here) or 32-true"
        )
    mixed = ALIASES.get(str(precision))
    if on_cuda(accelerator) and torch.cuda.is_available() and mixed in ("bf16-mixed", "16-mixed"):
        outcome = probe_precisions(network, [mixed], batch_size=batch_size, seq_len=seq_len)[mixed]
        if not isinstance(outcome, float):
            raise ConfigError(f"trainer.precision={precision} fails on this GPU for a {cell.upper()} ({outcome}); "
                              "use trainer.precision=auto (it picks what runs) or 32-true")
