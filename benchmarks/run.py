"""The command line: run every measurement, print the table and one line of JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import benchmarks as bench
from benchmarks.common import PLANS, Plan, machine_info, median_rate
from benchmarks.data import (
    corpus_text,
    data_setup_worker,
    large_train_worker,
    measure_data,
    measure_large,
    prepare_worker,
)
from benchmarks.gemm import measure_gemm_peak
from benchmarks.lesson import measure_lesson
from benchmarks.sampling import measure_sampling
from benchmarks.training import bare_train_steps, build_datamodule, measure_training
from rnnlm.utils.memory import keep_freed_memory


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the chosen plan, as one flat dict (plus ``machine`` and details)."""
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "default"]
    plan = Plan(**{**asdict(plan), "corpus": args.corpus})
    if args.lesson_seconds is not None:
        plan.lesson_seconds = args.lesson_seconds
    tuned = keep_freed_memory()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    result: dict[str, Any] = {"plan": plan.name, "machine": machine_info(), "malloc_tuning_on": tuned}
    phases: dict[str, float] = {}

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        start = time.perf_counter()
        result.update(fn())
        phases[name] = time.perf_counter() - start

    phase("gemm", lambda: measure_gemm_peak(plan))
    phase("training", lambda: measure_training(plan))
    text = corpus_text(plan)
    phase("data", lambda: measure_data(plan, text))
    from rnnlm.data.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.fit(text[: int(len(text) * 0.9)])
    prompt = [int(i) for i in tokenizer.encode(text[:16])]
    phase("sampling", lambda: measure_sampling(plan, len(tokenizer), prompt))
    if plan.lesson_seconds:
        phase("lesson", lambda: measure_lesson(plan))
    phase("gemm_again", lambda: measure_gemm_peak(plan, result["gemm_by_method"]))
    result["mfu"] = result["train_gflops"] / result["peak_gflops"]
    result["reference_mfu"] = result["reference_gflops"] / result["peak_gflops"]
    result["phase_seconds"] = phases
    result["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    result["bench_seconds"] = time.perf_counter() - started
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def format_table(r: dict[str, Any]) -> str:
    """The results as a readable, sectioned table."""
    m = r["machine"]
    rows: list[tuple[str, list[tuple[str, str]]]] = [
        ("machine", [
            ("cpu", f"{m['cpu_model']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads, avx512f={m['avx512f']})"),
            ("versions", f"torch {m['torch']}, pytorch_lightning {m['pytorch_lightning']}, python {m['python']}"),
            ("load average (1 min)", f"{m['loadavg_1m_start']} at start, {m.get('loadavg_1m_end')} at end"),
            ("plan", f"{r['plan']}, glibc malloc tuning {'on' if r['malloc_tuning_on'] else 'off'}"),
        ]),
        ("1. fp32 GEMM peak", [
            *((f"{k}", _fmt(v, "GFLOP/s")) for k, v in r["gemm_by_method"].items()),
            ("peak", f"{_fmt(r['peak_gflops'], 'GFLOP/s')} ({r['peak_method']}; best of a pass at start and at end)"),
        ]),
        ("2. training (LSTM, tokens = chars)", [
            ("Lightning Trainer", f"{_fmt(r['train_tokens_per_s'], 'tok/s')}  ({_fmt(r['lightning_step_s'], 's/step')})"),
            ("bare PyTorch loop", f"{_fmt(r['reference_tokens_per_s'], 'tok/s')}  ({_fmt(r['reference_step_s'], 's/step')}, "
                                  f"range {_fmt(r['reference_step_s_min'])}-{_fmt(r['reference_step_s_max'])})"),
            ("lightning / bare", f"{_fmt(r['lightning_overhead'])} ({r['lightning_extra_ms_per_step']:+.3g} ms/step); "
                                 f"fastest steps: {_fmt(r['lightning_overhead_best'])}"),
            ("FLOPs per token (train)", _fmt(r["train_flops_per_token"] / 1e6, "MFLOP")),
            ("achieved (Lightning / bare)", f"{_fmt(r['train_gflops'])} / {_fmt(r['reference_gflops'], 'GFLOP/s')}"),
            ("MFU (Lightning / bare)", f"{r['mfu']:.1%} / {r['reference_mfu']:.1%}"),
            ("bare loop, bf16-mixed autocast", f"{_fmt(r['bf16_tokens_per_s'], 'tok/s')}: "
                                               f"{_fmt(r['bf16_speedup'], 'x')} fp32's speed" if r["bf16_speedup"]
                                               else "not measured: the CPU has no native bf16"),
            ("GRU bare loop", f"{_fmt(r['gru_tokens_per_s'], 'tok/s')} ({_fmt(r['gru_gflops'], 'GFLOP/s')})"),
            ("GRU / LSTM time per token", f"{_fmt(r['gru_over_lstm_time_per_token'])} (FLOP ratio {_fmt(r['gru_over_lstm_flops'])})"),
            ("nn.GRU's own CPU path", f"{_fmt(r['nn_gru_tokens_per_s'], 'tok/s')}, "
                                      f"{_fmt(r['nn_gru_over_lstm_time_per_token'])} x LSTM's time per token"),
            *((f"{cell if '.' in cell else cell.upper()} step profile", f"{prof['op_calls']} op calls; " + ", ".join(
                f"{op} {v['share']:.0%} ({v['calls']}x)" for op, v in prof["top_ops"].items()))
              for cell, prof in r["step_profiles"].items()),
            ("bare loop, fresh process", f"malloc tuning on {_fmt(r['malloc_on_fresh_tokens_per_s'])}, "
                                         f"off {_fmt(r['malloc_off_tokens_per_s'], 'tok/s')}"),
            ("malloc tuning speed-up", _fmt(r["malloc_tuning_speedup"], "x")),
        ]),
        ("3. data", [
            *(line for k, v in r["data_by_size"].items() for line in (
                (f"prepare {k}", f"{_fmt(v['prepare_s'], 's')} = {_fmt(v['prepare_mb_per_s'], 'MB/s')}, "
                                 f"peak RSS {_fmt(v['prepare_peak_rss_mb'], 'MB')}; {v['tokens']:,} tokens, vocab {v['vocab_size']:,}"),
                (f"set-up {k}, mapped", f"{_fmt(v['setup_s'], 's')}, +{_fmt(v['setup_anon_growth_mb'], 'MB')} anonymous "
                                        f"(peak RSS {_fmt(v['peak_rss_mb'], 'MB')}, imports {_fmt(v['import_rss_mb'], 'MB')})"),
            )),
            ("one batch: next(iter(loader))", f"{_fmt(r['batch_first_s'] * 1e3, 'ms')} = {r['batch_vs_step_pct']:.3g}% of a step"),
            ("one batch: next(it) in an epoch", _fmt(r["batch_next_s"] * 1e3, "ms")),
        ]),
        ("4. sampling (untrained weights)", [
            ("1 stream", _fmt(r["sample_chars_per_s_b1"], "chars/s")),
            (f"{r['sample_streams']} streams (total)", _fmt(r["sample_chars_per_s_b32"], "chars/s")),
            ("beam width 5", _fmt(r["beam5_chars_per_s"], "chars/s")),
            (f"naive prefix re-run ({r['naive_rerun_steps']} steps)", _fmt(r["naive_rerun_chars_per_s"], "chars/s")),
            ("stateful / naive (same length)", _fmt(r["stateful_over_naive"], "x")),
            ("1 / 32 streams, oneDNN packing off", f"{_fmt(r['sample_chars_per_s_b1_no_onednn'])} / "
                                           f"{_fmt(r['sample_chars_per_s_b32_no_onednn'], 'chars/s')}"),
            ("1 stream, 1 thread", _fmt(r["sample_chars_per_s_b1_one_thread"], "chars/s")),
        ]),
    ]
    if "lesson_baseline_bpc" in r:
        rows.append((f"5. lesson vs ours, {_fmt(r['lesson_seconds'], 's')} each, held-out {r['heldout_chars']:,} chars", [
            ("lesson: 1 doc/batch, one-hot, 1x64",
             f"{_fmt(r['lesson_baseline_bpc'], 'bpc')} ({r['lesson_steps']} steps, {r['lesson_tokens_seen']:,} chars)"),
            ("ours: 2x256, emb 64, 64x128 shuffled",
             f"{_fmt(r['our_bpc_same_time'], 'bpc')} ({r['our_steps']} steps, {r['our_tokens_seen']:,} chars)"),
        ]))
    width = max(len(label) for _, section in rows for label, _ in section) + 2
    lines = []
    for title, section in rows:
        lines.append(f"== {title}")
        lines.extend(f"  {label:<{width}}{value}" for label, value in section)
    spent = ", ".join(f"{k} {v:.0f}" for k, v in r["phase_seconds"].items())
    lines.append(f"(bench took {r['bench_seconds']:.0f} s: {spent})")
    return "\n".join(lines)


def worker(kind: str, payload: str) -> None:
    """Entry point of the fresh processes: print one JSON line with the measurement."""
    args = json.loads(payload)
    if kind == "data_setup":
        out: dict[str, Any] = data_setup_worker(**args)
    elif kind == "prepare":
        out = prepare_worker(**args)
    elif kind == "large_train":
        out = large_train_worker(**args)
    elif kind == "bare_train":
        plan = Plan(**{**args, "gemm_sizes": tuple(args["gemm_sizes"]), "data_sizes_mb": tuple(args["data_sizes_mb"]),
                           "word_sizes_mb": tuple(args["word_sizes_mb"])})
        keep_freed_memory()  # honours RNNLM_MALLOC_TUNING=0, as the product would
        if plan.threads:
            torch.set_num_threads(plan.threads)
        times = bare_train_steps(plan, build_datamodule(plan), "lstm", plan.timed_steps)
        out = {"step_s": statistics.median(times), "malloc_tuning_on": keep_freed_memory(),
               "tokens_per_s": median_rate(times, plan.batch_size * plan.seq_len)}
    else:
        raise SystemExit(f"unknown bench worker {kind!r}")
    print(json.dumps(out))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(bench.__doc__ or "").split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-3 minute version")
    size.add_argument("--tiny", action="store_true", help="a ~20 second smoke version (tiny model, no lesson run)")
    parser.add_argument("--corpus", help="a UTF-8 text file (default: the embedded plays)")
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--lesson-seconds", type=float, help="training seconds of each lesson-comparison model")
    parser.add_argument("--large", type=float, metavar="GB", nargs="?", const=5.0,
                        help="only this: write a corpus of GB gigabytes (default 5), prepare it, train 50 steps on it")
    parser.add_argument("--large-dir", help="where --large and --ddp write their corpora and caches (default: the temp dir)")
    parser.add_argument("--vocab", action="store_true",
                        help="only this: training tokens/s of a 30k-word model with a full and an adaptive softmax, "
                             "and 1-stream sampling speed of char, BPE and word models")
    parser.add_argument("--playground", metavar="CKPT", nargs="?", const="",
                        help="only this: the playground's latencies (first token, one stream's chars/s, scoring 10k "
                             "characters; in the page too where Chromium is installed) for CKPT (default: the newest "
                             "under ./outputs)")
    parser.add_argument("--screenshot", metavar="PNG", help="with --playground: also save a picture of the page in use")
    parser.add_argument("--ddp", type=float, metavar="GB", nargs="?", const=1.0,
                        help="only this: each rank's anonymous memory in 2-rank CPU DDP runs of train.py "
                             "on a 1 MB and a GB corpus (default 1), prepared first")
    parser.add_argument("--gpu", action="store_true",
                        help="only this: the GPU check (GEMM peaks, training per precision against a bare cuDNN loop, "
                             "auto precision, sampling, the gpu tests, DDP on 2 GPUs); exits at once without CUDA")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.corpus is not None:
        args.corpus = str(Path(args.corpus).expanduser().resolve())
    if args.gpu:
        from benchmarks.gpu import format_gpu, measure_gpu, no_cuda_line

        refusal = no_cuda_line()
        if refusal:
            print(refusal, file=sys.stderr)
            return 1
        result = _rounded(measure_gpu())
        print(format_gpu(result))
    elif args.large:
        plan = PLANS["default"]
        result = _rounded({"plan": "large", "machine": machine_info(),
                           **measure_large(plan, corpus_text(plan), args.large, args.large_dir)})
        print("\n".join(f"{k:<32}{v}" for k, v in result.items() if k != "machine"))
    elif args.vocab:
        from benchmarks.vocabularies import format_vocabularies, measure_vocabularies

        plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "default"]
        tuned = keep_freed_memory()  # as train.py and sample.py run: no page faults for the big logits
        result = _rounded({"plan": f"vocab-{plan.name}", "machine": machine_info(), "malloc_tuning_on": tuned,
                           **measure_vocabularies(plan, corpus_text(plan), max(2, plan.timed_steps // 3))})
        print(format_vocabularies(result))
    elif args.playground is not None:
        from benchmarks.playground import format_playground, measure_playground

        result = _rounded({"plan": "playground", "machine": machine_info(), "malloc_tuning_on": keep_freed_memory(),
                           **measure_playground(args.playground or None, corpus_text(PLANS["default"]),
                                                screenshot=args.screenshot)})
        print(format_playground(result))
    elif args.ddp:
        from benchmarks.ddp import measure_ddp_memory

        plan = PLANS["default"]
        result = _rounded({"plan": "ddp", "machine": machine_info(),
                           **measure_ddp_memory(plan, corpus_text(plan), (1.0, args.ddp * 1000), args.large_dir)})
        print(json.dumps(result, indent=1))
    else:
        result = run(args)
        print(format_table(result))
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
