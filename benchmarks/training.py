"""2. Training tokens/s: the Lightning Trainer against a bare loop, the GRU paths, bf16, malloc tuning."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Plan, best_time, cycle, median_rate, quiet_lightning, quiet_stderr, run_worker, timed
from rnnlm import fastpaths
from rnnlm.models.network import flops_per_token
from rnnlm.training.precision import native_cpu_bf16
from rnnlm.utils.memory import keep_freed_memory


def build_datamodule(plan: Plan, seq_len: int | None = None, batch_size: int | None = None,
                     cache_dir: str | None = None):
    """A set-up :class:`CorpusDataModule` over the plan's corpus (``None``: the plays);
    ``cache_dir``: prepared there and memory-mapped, as a run does."""
    from rnnlm.data.datamodule import CorpusDataModule

    dm = CorpusDataModule(path=plan.corpus, seq_len=seq_len or plan.seq_len, batch_size=batch_size or plan.batch_size,
                          cache_dir=cache_dir)
    dm.setup("fit")
    return dm


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               targets: torch.Tensor, bf16: bool = False) -> None:
    """Forward, cross-entropy, backward, clip the gradient norm to 1, optimiser step.

    ``bf16``: the forward and loss under CPU autocast to bfloat16, as Lightning's
    ``bf16-mixed`` precision runs ``training_step``.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = net(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()


def _new_net(plan: Plan, vocab_size: int, cell: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from rnnlm.models.network import RNNLM

    torch.manual_seed(0)
    net = RNNLM(vocab_size, cell, plan.hidden_size, plan.num_layers, 0.0, plan.embedding_dim).train()
    return net, torch.optim.AdamW(net.parameters(), lr=2e-3)


def profile_step(plan: Plan, dm, cell: str, top: int = 4) -> dict[str, Any]:
    """Where one training step's time goes: the ``top`` ops by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    net, optimizer = _new_net(plan, dm.vocab_size, cell)
    batch = next(iter(dm.train_dataloader()))
    train_step(net, optimizer, *batch)  # warm-up
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(net, optimizer, *batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "op_calls": sum(e.count for e in events),
        "top_ops": {e.key: {"share": e.self_cpu_time_total / total, "calls": e.count} for e in ranked},
    }


def bare_train_steps(plan: Plan, dm, cell: str, steps: int, bf16: bool = False) -> list[float]:
    """Per-step wall times of a plain PyTorch loop: batch fetch, forward, backward, clip, AdamW.

    Each time runs from the end of one step to the end of the next (like the Lightning
    callback); the first ``plan.warmup_steps`` steps are dropped. ``bf16``: forward under
    CPU autocast to bfloat16, what ``trainer.precision=bf16-mixed`` does.
    """
    net, optimizer = _new_net(plan, dm.vocab_size, cell)
    batches = cycle(dm.train_dataloader())
    ends = [time.perf_counter()]
    for _ in range(plan.warmup_steps + steps):
        train_step(net, optimizer, *next(batches), bf16=bf16)
        ends.append(time.perf_counter())
    times = [b - a for a, b in zip(ends, ends[1:])]
    return times[plan.warmup_steps:]


def lightning_train_steps(plan: Plan, dm, cell: str = "lstm", accelerator: str = "cpu",
                          precision: str = "32-true") -> list[float]:
    """Per-step wall times of ``Trainer.fit`` on :class:`LanguageModel`, timed by a callback at
    each batch end (after a GPU synchronisation on ``accelerator="gpu"``, as a bare loop that
    synchronises once a step)."""
    import functools

    import pytorch_lightning as pl

    from rnnlm.models.module import LanguageModel

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if accelerator == "gpu":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    quiet_lightning()
    torch.manual_seed(0)
    model = LanguageModel(
        vocab_size=dm.vocab_size, tokenizer=dm.tokenizer.to_dict(), cell=cell,
        hidden_size=plan.hidden_size, num_layers=plan.num_layers, embedding_dim=plan.embedding_dim,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, max_steps=plan.warmup_steps + plan.timed_steps,
        gradient_clip_val=1.0, callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    times = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return times[plan.warmup_steps - 1:]  # the first end closes step 1: drop warm-up steps


def measure_training(plan: Plan) -> dict[str, Any]:
    """Lightning vs bare loop (LSTM), GRU in the bare loop, the bare loop with malloc tuning off.
    The batches come from the memory-mapped token file, as in a run."""
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-cache-") as cache:
        return _measure_training(plan, build_datamodule(plan, cache_dir=cache))


def _measure_training(plan: Plan, dm) -> dict[str, Any]:
    tokens = plan.batch_size * plan.seq_len
    lstm_flops = 3 * flops_per_token("lstm", dm.vocab_size, plan.hidden_size, plan.num_layers, plan.embedding_dim)
    gru_flops = 3 * flops_per_token("gru", dm.vocab_size, plan.hidden_size, plan.num_layers, plan.embedding_dim)

    # The bare loop's steps are split around the Lightning run, so that a change in the
    # machine's load during the two runs biases neither.
    first = (plan.timed_steps + 1) // 2
    bare_times = bare_train_steps(plan, dm, "lstm", first)
    lightning_times = lightning_train_steps(plan, dm)
    bare_times += bare_train_steps(plan, dm, "lstm", plan.timed_steps - first)
    # oneDNN has no bf16 LSTM kernel for a CPU without native bf16 (it refuses to build one).
    bf16_times = bare_train_steps(plan, dm, "lstm", plan.gru_timed_steps, bf16=True) if native_cpu_bf16() else []
    gru_times = bare_train_steps(plan, dm, "gru", plan.gru_timed_steps)
    with fastpaths.torch_nn_only():  # nn.GRU's own CPU path, for the before/after
        nn_gru_times = bare_train_steps(plan, dm, "gru", plan.gru_timed_steps)
        nn_gru_profile = profile_step(plan, dm, "gru")
    # The malloc tuning on and off, each in a fresh process (the setting is process-wide).
    on = run_worker("bare_train", asdict(plan), env={"RNNLM_MALLOC_TUNING": "1"})
    off = run_worker("bare_train", asdict(plan), env={"RNNLM_MALLOC_TUNING": "0"})
    profiles = {cell: profile_step(plan, dm, cell) for cell in ("lstm", "gru")}
    profiles["nn.GRU"] = nn_gru_profile

    # Assembling one batch the way a fresh epoch does (new iterator: shuffle + one gather),
    # and the steady next(it) of an epoch, against one bare training step.
    loader = dm.train_dataloader()
    first_batch_s = best_time(lambda: next(iter(loader)), plan.batch_reps, warmup=1)
    it = cycle(loader)
    next_batch_s = statistics.median(timed(lambda: next(it), plan.batch_reps))

    lightning_tps = median_rate(lightning_times, tokens)
    bare_tps = median_rate(bare_times, tokens)
    gru_tps = median_rate(gru_times, tokens)
    nn_gru_tps = median_rate(nn_gru_times, tokens)
    bare_step = statistics.median(bare_times)
    return {
        "vocab_size": dm.vocab_size,
        "tokens_per_step": tokens,
        "train_flops_per_token": lstm_flops,
        "train_tokens_per_s": lightning_tps,
        "reference_tokens_per_s": bare_tps,
        "lightning_overhead": lightning_tps / bare_tps,
        "lightning_extra_ms_per_step": 1e3 * (statistics.median(lightning_times) - statistics.median(bare_times)),
        "lightning_step_s": statistics.median(lightning_times),
        "reference_step_s": bare_step,
        "reference_step_s_min": min(bare_times),
        "reference_step_s_max": max(bare_times),
        # From the fastest step of each run: less sensitive to other processes on the machine.
        "train_tokens_per_s_best": tokens / min(lightning_times),
        "reference_tokens_per_s_best": tokens / min(bare_times),
        "lightning_overhead_best": min(bare_times) / min(lightning_times),
        "train_gflops": lstm_flops * lightning_tps / 1e9,
        "reference_gflops": lstm_flops * bare_tps / 1e9,
        "gru_tokens_per_s": gru_tps,
        "gru_gflops": gru_flops * gru_tps / 1e9,
        "gru_over_lstm_time_per_token": bare_tps / gru_tps,
        "gru_over_lstm_flops": gru_flops / lstm_flops,
        "nn_gru_tokens_per_s": nn_gru_tps,
        "bf16_tokens_per_s": median_rate(bf16_times, tokens) if bf16_times else None,
        "bf16_speedup": bare_step / statistics.median(bf16_times) if bf16_times else None,
        "nn_gru_over_lstm_time_per_token": bare_tps / nn_gru_tps,
        "step_profiles": profiles,
        "malloc_tuning_on": keep_freed_memory(),
        "malloc_on_fresh_tokens_per_s": on["tokens_per_s"],
        "malloc_off_tokens_per_s": off["tokens_per_s"],
        "malloc_off_step_s": off["step_s"],
        "malloc_tuning_speedup": off["step_s"] / on["step_s"],
        "batch_first_s": first_batch_s,
        "batch_next_s": next_batch_s,
        "batch_vs_step_pct": 100 * first_batch_s / bare_step,
    }
