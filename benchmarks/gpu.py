"""``python -m benchmarks --gpu``: the GPU check, everything in one run (sized for <= 8 minutes
on one GPU; not yet run on one).

It prints, then writes as one line of JSON: the GPU, driver, CUDA and cuDNN versions; the
GEMM peak in fp32, tf32, bf16 and fp16; training tokens/s of the 2 x 512 LSTM and GRU under
the Lightning Trainer against a bare cuDNN loop in 32-true, bf16-mixed and 16-mixed (ratio,
and MFU against the measured peak of that precision); the precision ``trainer.precision=auto``
picks; sampling chars/s of 1 and 32 streams; the ``gpu`` tests' result; and, with two GPUs
or more, 2-process DDP tokens/s against one process at the same per-device batch; then each
target (Trainer >= 0.95 of the bare loop, auto not slower than fp32, DDP >= 1.8x, batch-1
sampling >= 2,000 chars/s), met or missed. Without CUDA it says so in one line and exits with status 1 at once.
"""

from __future__ import annotations

import csv
import functools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Plan, cycle, machine_info
from benchmarks.training import build_datamodule, lightning_train_steps
from rnnlm.models.network import flops_per_token
from rnnlm.training.precision import AUTOCAST_DTYPES, CUDA_PRECISIONS, auto_precision, use_tf32

ROOT = Path(__file__).resolve().parent.parent
PLAN = Plan("gpu", hidden_size=512, num_layers=2, embedding_dim=64, batch_size=128, seq_len=256,
            warmup_steps=5, timed_steps=30, sample_length=500, sample_streams=32)
GEMM_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The GEMM peak each training precision is held against (cuDNN's RNNs use tf32 in fp32 by default).
PEAK_OF = {"32-true": "tf32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def no_cuda_line() -> str | None:
    """The one line to print where this check cannot run, else None."""
    if torch.cuda.is_available():
        return None
    return (f"python -m benchmarks --gpu needs a CUDA GPU: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")


def gpu_info() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    driver = "unknown"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else driver
    return {"gpu": props.name, "gpus": torch.cuda.device_count(), "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(including_emulation=False)}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def device_seconds(fn, reps: int, warmup: int = 2, device: str = "cuda") -> list[float]:
    """Wall seconds of each of ``reps`` calls of ``fn``, the GPU synchronised around each."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def gemm_peaks(n: int = 8192, reps: int = 10) -> dict[str, float]:
    """Best TFLOP/s of an n x n matmul in each type (tf32: fp32 inputs on the tensor cores)."""
    peaks = {}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype in GEMM_DTYPES.items():
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
                continue
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
            peaks[name] = 2 * n**3 / min(device_seconds(lambda a=a, b=b: a @ b, reps)) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return peaks


def bare_steps(dm, cell: str, precision: str, plan: Plan = PLAN, device: str = "cuda") -> list[float]:
    """Per-step seconds of a plain loop on the GPU: the same net, batch, AdamW and clipping as a
    run, under ``precision``'s autocast (a gradient scaler for 16-mixed, as Lightning adds)."""
    from rnnlm.models.network import RNNLM

    torch.manual_seed(0)
    net = RNNLM(dm.vocab_size, cell, plan.hidden_size, plan.num_layers, 0.0, plan.embedding_dim).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    dtype = AUTOCAST_DTYPES[precision]
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    batches = cycle(dm.train_dataloader())

    def step() -> None:
        inputs, targets = (t.to(device, non_blocking=True) for t in next(batches)[:2])
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss, _ = net.loss(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()

    return device_seconds(step, plan.timed_steps, plan.warmup_steps, device)


def measure_training(dm, peaks: dict[str, float], plan: Plan = PLAN, device: str = "cuda",
                     precisions: tuple[str, ...] = CUDA_PRECISIONS) -> dict[str, Any]:
    tokens = plan.batch_size * plan.seq_len
    result: dict[str, Any] = {}
    for cell in ("lstm", "gru"):
        flops = 3 * flops_per_token(cell, dm.vocab_size, plan.hidden_size, plan.num_layers, plan.embedding_dim)
        for precision in precisions:
            key = f"{cell}_{precision}"
            if precision.startswith("bf16") and device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
                result[key] = {"error": "no bf16 on this GPU"}
                continue
            try:
                bare = tokens / statistics.median(bare_steps(dm, cell, precision, plan, device))
                lightning = tokens / statistics.median(lightning_train_steps(plan, dm, cell, "gpu" if device == "cuda" else device, precision))
            except Exception as error:  # noqa: BLE001 - a precision that fails is a finding, not the end
                result[key] = {"error": f"{type(error).__name__}: {str(error).strip()[:200]}"}
                continue
            peak = peaks.get(PEAK_OF[precision], float("nan"))
            result[key] = {"lightning_tokens_per_s": lightning, "bare_tokens_per_s": bare, "ratio": lightning / bare,
                           "mfu": lightning * flops / (peak * 1e12)}
    return result


def measure_sampling(vocab_size: int, plan: Plan = PLAN, device: str = "cuda") -> dict[str, float]:
    """chars/s of rnnlm's engine on the GPU: one stream, and 32 decoded together."""
    from rnnlm.generation import DecodeSettings, generate
    from rnnlm.models.network import RNNLM

    torch.manual_seed(0)
    net = RNNLM(vocab_size, "lstm", plan.hidden_size, plan.num_layers, 0.0, plan.embedding_dim).to(device).eval()
    settings = DecodeSettings(strategy="sample", temperature=1.0)
    prompt = [1, 2, 3]
    generate(net, prompt, 20, 1, settings, seed=0)  # warm-up
    rates = {}
    for streams in (1, plan.sample_streams):
        run = functools.partial(generate, net, prompt, plan.sample_length, streams, settings, seed=0)
        seconds = min(device_seconds(run, 3, 1, device))
        rates[f"sample_{streams}_streams_chars_per_s"] = streams * plan.sample_length / seconds
    return rates


def run_gpu_tests(timeout: float = 420) -> dict[str, Any]:
    """``pytest -m gpu tests/test_gpu.py`` in a child process: its summary line and status."""
    tests = ROOT / "tests" / "test_gpu.py"
    if not tests.is_file():
        return {"summary": f"not run: {tests} is not here (a source checkout has it)", "returncode": None}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--durations=5", str(tests)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"summary": f"stopped after {timeout:.0f} s", "returncode": None}
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"summary": lines[-1] if lines else done.stderr.strip()[-300:], "returncode": done.returncode,
            "failures": failures[:20]}


def ddp_rate(devices: int, corpus: str, workdir: Path, steps: int = 120, accelerator: str = "gpu",
             hidden_size: int = PLAN.hidden_size, batch_size: int = PLAN.batch_size, seq_len: int = PLAN.seq_len) -> float:
    """Tokens/s of all ranks together in ``train.py`` on ``devices`` devices, the per-device
    batch fixed: the throughput callback's last logged figure (over its last 50 steps)."""
    run_dir = workdir / f"ddp{devices}"
    command = [sys.executable, str(ROOT / "train.py"), "trainer=ddp", f"trainer.accelerator={accelerator}",
               f"trainer.devices={devices}", "trainer.precision=32-true", f"model.hidden_size={hidden_size}",
               f"data.batch_size={batch_size}", f"data.seq_len={seq_len}", f"data.path={corpus}", f"trainer.max_steps={steps}",
               "test=false", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "logger=csv",
               "callbacks.sample_text=null", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}", f"data.cache_dir={workdir / 'cache'}"]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"train.py on {devices} device(s) exited with {done.returncode}: "
                           f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    rows = [row for path in run_dir.glob("csv/**/metrics.csv") for row in csv.DictReader(path.open())]
    key = "train/items_per_sec" if devices > 1 else "train/device/items_per_sec"  # items: tokens
    rates = [float(row[key]) for row in rows if row.get(key)]
    if not rates:
        raise RuntimeError(f"train.py on {devices} device(s) logged no {key} in {run_dir}")
    return rates[-1]


def measure_ddp(corpus_text: str) -> dict[str, Any]:
    if torch.cuda.device_count() < 2:
        return {"ddp": f"not measured: {torch.cuda.device_count()} GPU"}
    with tempfile.TemporaryDirectory(prefix="rnnlm-gpu-ddp-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "plays.txt"
        corpus.write_text(corpus_text, encoding="utf-8")
        try:
            one, two = ddp_rate(1, str(corpus), workdir), ddp_rate(2, str(corpus), workdir)
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, IndexError) as error:
            return {"ddp": f"failed: {error}"}
    return {"ddp_1_gpu_tokens_per_s": one, "ddp_2_gpus_tokens_per_s": two, "ddp_scaling": two / one}


def measure_gpu() -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"plan": "gpu", "machine": machine_info(), **gpu_info()}
    result["gemm_tflops"] = gemm_peaks()
    use_tf32()  # as train.py sets it on CUDA, for both loops
    with tempfile.TemporaryDirectory(prefix="rnnlm-gpu-cache-") as cache:
        dm = build_datamodule(PLAN, cache_dir=cache)
        result["training"] = measure_training(dm, result["gemm_tflops"])
        vocab_size = dm.vocab_size
        text = dm.tokenizer.decode(dm.tokens["train"][:1_000_000].tolist())
    network = {"vocab_size": vocab_size, "cell": "lstm", "hidden_size": PLAN.hidden_size, "num_layers": PLAN.num_layers,
               "embedding_dim": PLAN.embedding_dim}
    result["auto_precision"], result["auto_reason"] = auto_precision("gpu", network, PLAN.batch_size, PLAN.seq_len)
    result.update(measure_sampling(vocab_size))
    result.update(measure_ddp(text))
    result["gpu_tests"] = run_gpu_tests()
    result["bench_seconds"] = time.perf_counter() - started
    return result


# What a GPU run should reach (docs/performance.md#gpus), each checked by format_gpu.
TARGETS = {"trainer_over_bare": 0.95, "ddp_scaling": 1.8, "sample_1_stream_chars_per_s": 2000.0}


def target_lines(r: dict[str, Any]) -> list[str]:
    """One line per target: met or not, with the figure."""
    rows = [row for row in r["training"].values() if "ratio" in row]
    lines = []
    if rows:
        worst = min(row["ratio"] for row in rows)
        lines.append(f"{'met' if worst >= TARGETS['trainer_over_bare'] else 'MISSED':<7}Trainer >= "
                     f"{TARGETS['trainer_over_bare']} of the bare loop: worst {worst:.3f}")
    auto = r["training"].get(f"lstm_{r['auto_precision']}", {})
    fp32 = r["training"].get("lstm_32-true", {})
    if "bare_tokens_per_s" in auto and "bare_tokens_per_s" in fp32:
        ok = auto["bare_tokens_per_s"] >= fp32["bare_tokens_per_s"] * 0.98
        lines.append(f"{'met' if ok else 'MISSED':<7}auto ({r['auto_precision']}) not slower than fp32: "
                     f"{auto['bare_tokens_per_s']:,.0f} against {fp32['bare_tokens_per_s']:,.0f} tok/s (LSTM, bare loop)")
    if "ddp_scaling" in r:
        ok = r["ddp_scaling"] >= TARGETS["ddp_scaling"]
        lines.append(f"{'met' if ok else 'MISSED':<7}2-GPU DDP >= {TARGETS['ddp_scaling']}x one GPU: x{r['ddp_scaling']:.2f}")
    one = r["sample_1_streams_chars_per_s"]
    lines.append(f"{'met' if one >= TARGETS['sample_1_stream_chars_per_s'] else 'MISSED':<7}batch-1 sampling >= "
                 f"{TARGETS['sample_1_stream_chars_per_s']:,.0f} chars/s: {one:,.0f}")
    return lines


def format_gpu(r: dict[str, Any]) -> str:
    lines = [f"GPU          {r['gpu']} x{r['gpus']} ({r['memory_gib']:.0f} GiB, sm {r['capability']}), driver {r['driver']}, "
             f"CUDA {r['cuda']}, cuDNN {r['cudnn']}, torch {r['machine']['torch']}",
             "GEMM peak    " + ", ".join(f"{k} {v:.1f}" for k, v in r["gemm_tflops"].items()) + " TFLOP/s (8192^3 matmul)",
             f"training     2 x {PLAN.hidden_size}, batch {PLAN.batch_size} x {PLAN.seq_len} chars: Trainer / bare cuDNN loop"]
    for key, row in r["training"].items():
        if "error" in row:
            lines.append(f"  {key:<16} failed: {row['error']}")
        else:
            lines.append(f"  {key:<16} {row['lightning_tokens_per_s']:>12,.0f} / {row['bare_tokens_per_s']:>12,.0f} tok/s  "
                         f"ratio {row['ratio']:.3f}  MFU {row['mfu']:.1%}")
    lines += [f"auto         trainer.precision=auto picks {r['auto_precision']} ({r['auto_reason']})",
              f"sampling     1 stream {r['sample_1_streams_chars_per_s']:,.0f} chars/s, "
              f"{PLAN.sample_streams} streams {r[f'sample_{PLAN.sample_streams}_streams_chars_per_s']:,.0f} chars/s",
              "DDP          " + (f"2 GPUs {r['ddp_2_gpus_tokens_per_s']:,.0f} tok/s against 1 GPU "
                                 f"{r['ddp_1_gpu_tokens_per_s']:,.0f}: x{r['ddp_scaling']:.2f}" if "ddp_scaling" in r else r["ddp"]),
              f"gpu tests    {r['gpu_tests']['summary']}",
              *(f"  {line}" for line in r["gpu_tests"].get("failures", [])),
              *(f"target       {line}" for line in target_lines(r)),
              f"took         {r['bench_seconds']:.0f} s"]
    return "\n".join(re.sub(r"\s+$", "", line) for line in lines)
