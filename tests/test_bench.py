"""``python -m benchmarks --tiny``: it runs, its JSON holds every number, positive and finite,
and the derived figures (rates, ratios, MFU, the peak) are what they say they are of the
measured ones. The parts of the benchmark it is built from are checked on their own.

No timing is asserted: the machine may be shared and the tiny numbers mean little. The whole
run takes half a minute: it is ``slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.common import PLANS
from benchmarks.data import write_corpus
from benchmarks.run import main
from benchmarks.sampling import naive_generate
from rnnlm.models.network import RNNLM, flops_per_token
from rnnlm.training.precision import native_cpu_bf16

REQUIRED = (
    "peak_gflops", "train_tokens_per_s", "reference_tokens_per_s", "lightning_overhead", "mfu",
    "data_setup_s", "data_peak_rss_mb", "sample_chars_per_s_b1", "sample_chars_per_s_b32",
    "beam5_chars_per_s", "naive_rerun_chars_per_s", "malloc_tuning_speedup", "gru_tokens_per_s", "nn_gru_tokens_per_s",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "b.json"
    assert main(["--tiny", "--json", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8")), out.read_text(encoding="utf-8")


@pytest.mark.slow
def test_tiny_run_reports_every_number(tiny_run: tuple[dict, str]) -> None:
    result, _ = tiny_run
    for key in REQUIRED:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert result["plan"] == "tiny"
    # bf16 is measured only where the CPU computes it natively (oneDNN refuses a bf16 LSTM elsewhere)
    if native_cpu_bf16():
        assert result["bf16_speedup"] > 0
    else:
        assert result["bf16_speedup"] is None
    assert "lesson_baseline_bpc" not in result  # skipped in --tiny
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] == torch.__version__ and machine["cpu_model"]
    assert set(result["data_by_size"]) == {"1mb"}
    data = result["data_by_size"]["1mb"]
    assert data["bytes"] <= 1_000_000 and 0.99 * data["bytes"] <= data["tokens"] <= data["bytes"]  # a character a token
    assert data["prepare_mb_per_s"] > 0 and data["setup_anon_growth_mb"] < 50  # a map, not a copy


@pytest.mark.slow
def test_derived_figures_agree_with_the_measured_ones(tiny_run: tuple[dict, str]) -> None:
    """Each ratio and rate is computed from the figures beside it (rounded to 4 digits)."""
    r, _ = tiny_run
    close = {"rel": 3e-3}
    plan = PLANS["tiny"]
    tokens = plan.batch_size * plan.seq_len
    assert r["tokens_per_step"] == tokens
    assert r["train_flops_per_token"] == pytest.approx(  # forward and backward
        3 * flops_per_token("lstm", r["vocab_size"], plan.hidden_size, plan.num_layers, plan.embedding_dim), **close)
    assert r["train_tokens_per_s"] == pytest.approx(tokens / r["lightning_step_s"], **close)
    assert r["reference_tokens_per_s"] == pytest.approx(tokens / r["reference_step_s"], **close)
    assert r["reference_step_s_min"] <= r["reference_step_s"] <= r["reference_step_s_max"]
    assert r["lightning_overhead"] == pytest.approx(r["train_tokens_per_s"] / r["reference_tokens_per_s"], **close)
    assert r["train_gflops"] == pytest.approx(r["train_flops_per_token"] * r["train_tokens_per_s"] / 1e9, **close)
    assert r["reference_gflops"] == pytest.approx(r["train_flops_per_token"] * r["reference_tokens_per_s"] / 1e9, **close)
    assert r["peak_gflops"] == max(r["gemm_by_method"].values()) == r["gemm_by_method"][r["peak_method"]]
    assert r["mfu"] == pytest.approx(r["train_gflops"] / r["peak_gflops"], **close)
    assert r["reference_mfu"] == pytest.approx(r["reference_gflops"] / r["peak_gflops"], **close)
    # Against the measured matmul peak: a fused LSTM kernel can pass it (1.08 on EPYC-AVX2, docs/performance.md).
    assert 0 < r["mfu"] < 2 and 0 < r["reference_mfu"] < 2
    assert r["malloc_tuning_speedup"] == pytest.approx(r["malloc_on_fresh_tokens_per_s"] / r["malloc_off_tokens_per_s"], **close)
    assert r["data_setup_s"] == r["data_by_size"]["1mb"]["setup_s"] and r["sample_streams"] == plan.sample_streams


@pytest.mark.slow
def test_json_file_is_one_line(tiny_run: tuple[dict, str]) -> None:
    result, raw = tiny_run
    assert raw.count("\n") == 1 and raw.endswith("\n") and json.loads(raw) == result


def test_flops_per_token_counts_every_matmul() -> None:
    # 2-layer 512 LSTM, embedding 64, vocab 80: 4H(64+H) + 4H(2H) + H*V multiply-adds.
    macs = 4 * 512 * (64 + 512) + 4 * 512 * 1024 + 512 * 80
    assert flops_per_token("lstm", 80, 512, 2, 64) == 2 * macs
    assert flops_per_token("gru", 80, 512, 2, 64) == 2 * (3 * 512 * (64 + 512) + 3 * 512 * 1024 + 512 * 80)
    # one-hot input: the first layer's input width is the vocabulary
    assert flops_per_token("lstm", 80, 64, 1, None) == 2 * (4 * 64 * (80 + 64) + 64 * 80)


def test_write_corpus_is_valid_utf8_of_about_the_size(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    write_corpus(path, "héllo wörld\nline two\n", 10_000)
    text = path.read_text(encoding="utf-8")
    assert 9_900 <= path.stat().st_size <= 10_000 and text.endswith("\n")


def test_naive_generate_samples_what_the_engine_samples() -> None:
    """The benchmark's slow reference re-runs the prefix each step; the draws are the
    engine's, which carries the state (same seed, T=1): the comparison is of speed only."""
    from rnnlm.generation import DecodeSettings, generate

    torch.manual_seed(0)
    net = RNNLM(12, "lstm", 8, 1, 0.0, 4).eval()
    for seed in (0, 1):
        ids = naive_generate(net, [1, 2, 3], 30, seed=seed)
        assert ids == generate(net, [1, 2, 3], 30, 1, DecodeSettings(temperature=1.0), seed=seed).tokens[0]
    assert naive_generate(net, [1, 2, 3], 30, seed=0) != naive_generate(net, [1, 2, 3], 30, seed=1)


def test_vocabulary_measurements_compare_outputs_and_tokenizers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--vocab``: both output layers train on the same word batches; each tokenizer samples."""
    from benchmarks import vocabularies

    monkeypatch.setattr(vocabularies, "VOCAB_WORDS", 300)
    monkeypatch.setattr(vocabularies, "VOCAB_BPE", 300)
    monkeypatch.setattr(vocabularies, "VOCAB_HIDDEN", 16)
    text = "".join(f"word{i % 97} and the {i % 13}, then {i % 7}.\n" for i in range(3000))
    result = vocabularies.measure_vocabularies(PLANS["tiny"], text, train_steps=2)
    assert result["vocab_size_word"] <= 300 and result["vocab_size_bpe"] == 300
    assert result["vocab_adaptive_cutoffs"] and result["vocab_adaptive_over_softmax"] > 0
    for name in ("char", "bpe", "word"):
        assert result[f"vocab_sample_tokens_per_s_{name}"] > 0
        assert result[f"vocab_chars_per_token_{name}"] >= 1
    assert result["vocab_chars_per_token_char"] == 1 and result["vocab_chars_per_token_word"] > 2
    assert "adaptive softmax" in vocabularies.format_vocabularies(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the GPU check would run in full")
def test_the_gpu_check_without_cuda_exits_at_once_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("python -m benchmarks --gpu needs a CUDA GPU: torch.cuda.is_available() is False")


@pytest.mark.slow
def test_the_gpu_checks_ddp_figure_is_read_from_the_runs_throughput_log(tmp_path: Path) -> None:
    """benchmarks.gpu.ddp_rate as it runs on 2 GPUs, here on the CPU: train.py's logged tokens/s of all ranks."""
    from benchmarks.gpu import ddp_rate

    corpus = tmp_path / "text.txt"
    corpus.write_text("It is a truth universally acknowledged, that a single man in possession. " * 2000, encoding="utf-8")
    rate = ddp_rate(1, str(corpus), tmp_path, steps=60, accelerator="cpu", hidden_size=32, batch_size=4, seq_len=16)
    assert 0 < rate < 1e9


@pytest.mark.slow
def test_the_gpu_checks_measurements_run_here_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks.gpu's training, sampling and test-running parts, on the CPU with a tiny plan
    (the GPU check itself cannot run here): every figure it prints is there and finite."""
    from benchmarks.common import Plan
    from benchmarks.gpu import format_gpu, measure_sampling, measure_training, run_gpu_tests
    from benchmarks.training import build_datamodule

    corpus = tmp_path / "text.txt"
    corpus.write_text("It is a truth universally acknowledged, that a single man in possession. " * 500, encoding="utf-8")
    plan = Plan("cpu-check", hidden_size=32, num_layers=1, embedding_dim=16, batch_size=4, seq_len=16, warmup_steps=1,
                timed_steps=3, sample_length=10, sample_streams=4, corpus=str(corpus))
    dm = build_datamodule(plan, cache_dir=str(tmp_path / "cache"))
    training = measure_training(dm, {"tf32": 1.0}, plan, device="cpu", precisions=("32-true",))
    assert set(training) == {"lstm_32-true", "gru_32-true"}
    for row in training.values():
        assert 0 < row["bare_tokens_per_s"] < 1e9 and 0 < row["lightning_tokens_per_s"] < 1e9, row
        assert row["ratio"] == pytest.approx(row["lightning_tokens_per_s"] / row["bare_tokens_per_s"])
    sampling = measure_sampling(dm.vocab_size, plan, device="cpu")
    assert all(0 < rate < 1e9 for rate in sampling.values()) and len(sampling) == 2
    tests = run_gpu_tests()
    assert tests["returncode"] == 0 and "skipped" in tests["summary"], tests  # here every gpu test skips, saying why
    result = {"gpu": "a GPU", "gpus": 1, "memory_gib": 80.0, "capability": "9.0", "driver": "1", "cuda": "12", "cudnn": 9,
              "machine": {"torch": torch.__version__}, "gemm_tflops": {"tf32": 1.0}, "training": training,
              "auto_precision": "32-true", "auto_reason": "a reason", **{k.replace("_4_", "_32_"): v for k, v in sampling.items()},
              "ddp": "not measured: 1 GPU", "gpu_tests": tests, "bench_seconds": 1.0}
    table = format_gpu(result)
    assert "lstm_32-true" in table and "ratio" in table and tests["summary"] in table
    assert "Trainer >= 0.95 of the bare loop" in table and "batch-1 sampling >= 2,000 chars/s" in table


def test_wikitext_style_splits_words_marks_and_hyphens_and_unks_rare_train_words(tmp_path):
    from benchmarks import wikitext_style

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.txt").write_text("A well-known cat, a well-known dog,\na well-known hat.\n\nThe cat\u2019s dog\u2019s.")
    (src / "valid.txt").write_text("A dog sat.")
    (src / "test.txt").write_text("The cat sat.\n\n\n")
    assert wikitext_style.main([str(src), str(tmp_path / "out"), "--min-count", "2"]) == 0
    out = {name: (tmp_path / "out" / f"{name}.txt").read_text() for name in ("train", "valid", "test")}
    assert out["train"] == (" <unk> well @-@ known cat , a well @-@ known dog , a well @-@ known <unk> . \n"  # a paragraph a line
                            " <unk> cat ' s dog ' s . \n")  # seen once in train: <unk>; quotes made straight
    assert out["valid"] == " <unk> dog <unk> . \n" and out["test"] == " <unk> cat <unk> . \n"  # train's vocabulary
    with pytest.raises(SystemExit):
        wikitext_style.main([str(tmp_path / "nope"), str(tmp_path / "x")])
