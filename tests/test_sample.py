import json
import pickle
import subprocess

import pytest
import torch

from rnnlm.generation import score_ids
from rnnlm.generation.prompt import encode_prompt
from rnnlm.models.loading import load_model
from rnnlm.sampling.sample import sample
from rnnlm.utils.errors import CheckpointError, ConfigError
from tests.conftest import compose_config
from tests.processes import run_script


def test_generate_writes_samples_and_statistics(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    cfg = compose_config("sample", [f"ckpt={ckpt}", "length=80", "num_samples=3", "prompt=ROMEO:", "stream=false"], tmp_path)
    metrics, objects = sample(cfg)
    record = json.loads((tmp_path / "result.json").read_text())
    assert len(record["samples"]) == 3
    for i, s in enumerate(record["samples"]):
        assert s["text"].startswith("ROMEO:") and s["new_tokens"] == 80
        assert (tmp_path / f"sample_{i}.txt").read_text() == s["text"]
    assert set(record["stats"]) >= {"nll_per_token", "distinct_1", "distinct_2", "distinct_3", "repetition_4"}
    assert record["settings"]["temperature"] == 0.8 and metrics["sample/nll_per_token"] > 0


def test_greedy_cycles_more_than_hot_sampling(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    greedy, _ = sample(compose_config("sample", [f"ckpt={ckpt}", "length=300", "strategy=greedy", "stream=false"], tmp_path / "g"))
    hot, _ = sample(compose_config("sample", [f"ckpt={ckpt}", "length=300", "temperature=1.5", "stream=false"], tmp_path / "h"))
    assert greedy["sample/repetition_4"] > hot["sample/repetition_4"]
    assert greedy["sample/nll_per_token"] < hot["sample/nll_per_token"]


def test_beam_returns_ranked_beams(tmp_path, trained):
    """Each beam's score is the log-probability the model gives its continuation of the
    prompt (length_penalty=0), and the beams come best first by that."""
    ckpt = trained["objects"]["best_ckpt"]
    sample(compose_config("sample", [f"ckpt={ckpt}", "prompt=ROMEO:", "length=30", "strategy=beam", "beam_width=4",
                                     "num_samples=2"], tmp_path))
    record = json.loads((tmp_path / "result.json").read_text())
    loaded = load_model(ckpt, "cpu")
    prompt = encode_prompt(loaded.tokenizer, "ROMEO:")
    log_probs = []
    for s in record["samples"]:
        assert s["text"].startswith("ROMEO:") and s["new_tokens"] == 30
        ids = torch.tensor([*prompt, *loaded.tokenizer.encode(s["text"][len("ROMEO:"):]).tolist()])
        with torch.no_grad():
            logits, _ = loaded.net.eval()(ids[None])
        per_token = logits[0, :-1].float().log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        log_probs.append(float(per_token[len(prompt) - 1 :].sum()))  # the 30 new tokens
        assert s["score"] == pytest.approx(log_probs[-1], abs=1e-3)
        assert s["nll_per_token"] == pytest.approx(-log_probs[-1] / 30, abs=1e-4)
    assert len(log_probs) == 2 and record["samples"][0]["text"] != record["samples"][1]["text"]
    assert log_probs[0] >= log_probs[1]


def test_score_mode_equals_direct_loss(tmp_path, trained, corpus_text):
    ckpt = trained["objects"]["best_ckpt"]
    text = corpus_text[-3000:]
    (tmp_path / "t.txt").write_text(text)
    metrics, _ = sample(compose_config("sample", [f"ckpt={ckpt}", "mode=score", f"text_file={tmp_path / 't.txt'}"], tmp_path))
    loaded = load_model(ckpt, "cpu")
    direct = score_ids(loaded.net, torch.from_numpy(loaded.tokenizer.encode(text).astype("int64")))
    assert metrics["score/loss"] == pytest.approx(direct["loss"], abs=1e-6)
    assert metrics["score/tokens"] == len(text) - 1


def test_length_zero_and_bounded_memory(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    metrics, objects = sample(compose_config("sample", [f"ckpt={ckpt}", "length=0", "stream=false"], tmp_path / "z"))
    assert objects["record"]["samples"][0]["new_tokens"] == 0
    _, objects = sample(compose_config("sample", [f"ckpt={ckpt}", "length=3000", "keep_tokens=100", "stream=false", "prompt=''"],
                                       tmp_path / "k"))
    assert objects["record"]["samples"][0]["new_tokens"] == 100  # kept in memory
    assert len((tmp_path / "k" / "sample_0.txt").read_text()) == 3000  # streamed to the file


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["temperature=-1"], ConfigError, "temperature=-1"),
        (["top_p=1.5"], ConfigError, r"top_p=1.5 is not allowed: it must be a finite number > 0 and <= 1"),
        (["mode=train"], ConfigError, r"mode='train' is not allowed: it must be one of generate, score, serve"),
        (["top_k=0"], ConfigError, r"top_k=0"),
        (["strategy=beam", "beam_width=0"], ConfigError, "beam_width=0"),
        (["length=-5"], ConfigError, "length=-5"),
        (["prompt='ROMEO 🎭'", "unknown=error"], ConfigError, r"not in the checkpoint's vocabulary: '🎭'"),
        (["mode=score"], ConfigError, "mode=score needs the text"),
        (["keep_tokens=0"], ConfigError, r"keep_tokens=0 is not allowed: it must be an integer >= 1"),
        (["stop='🎭'"], ConfigError, r"stop='🎭' has 1 character\(s\) that no token of the checkpoint's vocabulary contains"),
        (["ckpt=/nonexistent/x.ckpt"], CheckpointError, r"/nonexistent/x.ckpt does not exist; train one with `make train`"),
    ],
)
def test_bad_sampling_input(tmp_path, trained, overrides, error, match):
    ckpt = trained["objects"]["best_ckpt"]
    with pytest.raises(error, match=match):
        sample(compose_config("sample", [f"ckpt={ckpt}", *overrides], tmp_path))


def test_bad_checkpoint_files(tmp_path, trained):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_model(garbage)
    good = trained["objects"]["best_ckpt"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="is not an rnnlm checkpoint"):
        load_model(foreign)


class Payload:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, trained):
    marker = tmp_path / "pwned"
    ckpt = torch.load(trained["objects"]["best_ckpt"], weights_only=True)
    ckpt["extra"] = Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil.ckpt: it holds a pickled object \(\S*call\)"):
        load_model(evil)
    torch.save(ckpt, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)  # opcodes the safe loader lacks
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()
    torch.save({"extra": Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_sample_cli_and_temperature_multirun(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    run = run_script("sample.py", f"ckpt={ckpt}", "length=40", f"hydra.run.dir={tmp_path}/one", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "distinct-1/2/3" in run.stdout and (tmp_path / "one" / "result.json").is_file()
    sweep = run_script("sample.py", "-m", f"ckpt={ckpt}", "length=20", "temperature=0.5,1.0",
                       f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    temps = sorted(json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text())["settings"]["temperature"] for i in (0, 1))
    assert temps == [0.5, 1.0]
    missing = run_script("sample.py", "ckpt=nope.ckpt", f"hydra.run.dir={tmp_path}/bad", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: ckpt=")


def test_megabyte_prompt_is_primed_in_chunks(tmp_path, trained, corpus_text):
    ckpt = trained["objects"]["best_ckpt"]
    prompt = (corpus_text * (1_000_000 // len(corpus_text) + 1))[:1_000_000]
    (tmp_path / "prompt.txt").write_text(prompt)
    _, objects = sample(compose_config("sample", [f"ckpt={ckpt}", f"prompt_file={tmp_path / 'prompt.txt'}", "length=20",
                                                  "stream=false", "unknown=replace"], tmp_path))
    sample_out = objects["record"]["samples"][0]
    assert sample_out["new_tokens"] == 20 and len(sample_out["text"]) == 1_000_020
