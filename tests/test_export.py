"""python export.py: a checkpoint as ONNX that sample.py runs through ONNX Runtime with the same
engine and settings, every cell, output and tokenizer; int8; and the refusals."""

import json

import pytest
import torch

from rnnlm.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from rnnlm.exporting.export import export, report
from rnnlm.models.loading import CHECKPOINT_FORMAT
from rnnlm.models.network import RNNLM
from rnnlm.sampling.sample import sample
from rnnlm.utils.errors import CheckpointError, ConfigError
from tests.conftest import compose_config

pytest.importorskip("onnxruntime")

TEXT = "ROMEO: But, soft! what light through yonder window breaks?\nJULIET: Ay me!\n\n" * 30
TOKENIZERS = {"char": lambda: CharTokenizer.fit(TEXT), "word": lambda: WordTokenizer.fit(TEXT),
              "bpe": lambda: BPETokenizer.fit(TEXT, 300)}


def write_checkpoint(path, tokenizer, cell="lstm", output="softmax", scale=1.0):
    """What training saves, for a small random network (calibrated when ``scale`` != 1)."""
    torch.manual_seed(0)
    arch = {"vocab_size": len(tokenizer), "cell": cell, "hidden_size": 24, "num_layers": 2, "embedding_dim": 8,
            "output": output, "adaptive_cutoffs": [len(tokenizer) // 4, len(tokenizer) // 2] if output == "adaptive" else None}
    net = RNNLM(**arch)
    net.logit_scale.fill_(scale)
    torch.save({"rnnlm_format": CHECKPOINT_FORMAT, "global_step": 7, "hyper_parameters": {**arch, "tokenizer": tokenizer.to_dict()},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def run_export(tmp_path, ckpt, *overrides):
    cfg = compose_config("export", [f"ckpt={ckpt}", f"out={tmp_path / 'out'}", *overrides], tmp_path / "run")
    return export(cfg)


def sampled(tmp_path, ckpt, name, *overrides):
    cfg = compose_config("sample", [f"ckpt={ckpt}", "stream=false", *overrides], tmp_path / name)
    metrics, objects = sample(cfg)
    return metrics, objects["record"]


# Each cell, output and tokenizer at least once.
CASES = [("lstm", "softmax", "char"), ("gru", "adaptive", "word"), ("rnn", "softmax", "bpe"), ("lstm", "adaptive", "bpe")]


@pytest.mark.parametrize(("cell", "output", "kind"), CASES)
def test_the_exported_model_samples_and_scores_as_the_checkpoint(tmp_path, cell, output, kind):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", TOKENIZERS[kind](), cell, output, scale=1.25)
    _, objects = run_export(tmp_path, ckpt)
    onnx = objects["written"]["model"]
    assert json.loads((onnx.parent / "rnnlm.json").read_text())["cell"] == cell
    greedy = ["strategy=greedy", "prompt=ROMEO:", "length=60"]
    _, ours = sampled(tmp_path, ckpt, "a", *greedy)
    _, theirs = sampled(tmp_path, onnx, "b", *greedy)
    assert theirs["samples"][0]["text"] == ours["samples"][0]["text"]
    for strategy in ("sample", "beam"):  # every strategy runs on the exported model, seeded alike
        settings = [f"strategy={strategy}", "prompt=ROMEO:", "length=30", "num_samples=2", "seed=3", "temperature=1.0"]
        _, ours = sampled(tmp_path, ckpt, f"c{strategy}", *settings)
        _, theirs = sampled(tmp_path, onnx, f"d{strategy}", *settings)
        assert [s["text"] for s in theirs["samples"]] == [s["text"] for s in ours["samples"]]
    (tmp_path / "t.txt").write_text(TEXT[:400], encoding="utf-8")
    ours, _ = sampled(tmp_path, ckpt, "e", "mode=score", f"text_file={tmp_path / 't.txt'}")
    theirs, _ = sampled(tmp_path, onnx, "f", "mode=score", f"text_file={tmp_path / 't.txt'}")
    assert theirs["score/bpc"] == pytest.approx(ours["score/bpc"], abs=1e-4) and theirs["score/tokens"] == ours["score/tokens"]


def test_int8_is_smaller_and_scores_close(tmp_path):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", TOKENIZERS["word"](), "lstm")
    (tmp_path / "t.txt").write_text(TEXT[:400], encoding="utf-8")
    fp32 = run_export(tmp_path / "fp32", ckpt)[1]["written"]
    figures, objects = run_export(tmp_path / "int8", ckpt, "quantize=int8", f"text_file={tmp_path / 't.txt'}")
    int8 = objects["written"]
    assert int8["bytes"] < 0.5 * fp32["bytes"] and int8["meta"]["quantized"] == "int8"
    a, _ = sampled(tmp_path, fp32["model"], "a", "mode=score", f"text_file={tmp_path / 't.txt'}")
    b, _ = sampled(tmp_path, int8["model"], "b", "mode=score", f"text_file={tmp_path / 't.txt'}")
    assert b["score/bpc"] == pytest.approx(a["score/bpc"], abs=0.05)
    # The summary line: the size, and bits/char of int8 beside fp32's, as sample.py mode=score gives them.
    assert figures["bpc"] == pytest.approx(b["score/bpc"], abs=1e-9) and figures["fp32_bpc"] == pytest.approx(a["score/bpc"], abs=1e-9)
    assert f"model.onnx {int8['bytes'] / 1e6:.2f} MB, {b['score/bpc']:.5f} bits/char on text_file (fp32: {a['score/bpc']:.5f})" in report(figures, objects)


def test_refusals_are_one_line(tmp_path):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", TOKENIZERS["char"]())
    with pytest.raises(ConfigError, match="format='pdf' is not allowed: it must be one of onnx, web"):
        run_export(tmp_path, ckpt, "format=pdf")
    onnx = run_export(tmp_path, ckpt)[1]["written"]["model"]
    with pytest.raises(ConfigError, match="is already exported; pass the checkpoint it came from"):
        run_export(tmp_path / "again", onnx)
    (onnx.parent / "rnnlm.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"rnnlm.json is not an rnnlm export"):
        sampled(tmp_path, onnx, "x", "length=5")
    (onnx.parent / "rnnlm.json").unlink()
    with pytest.raises(CheckpointError, match=r"rnnlm.json is not beside it"):
        sampled(tmp_path, onnx, "y", "length=5")
