import json
import pickle
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from rnnlm.generation import score_ids
from rnnlm.models.loading import load_model
from rnnlm.sampling.sample import sample
from rnnlm.utils.errors import CheckpointError, ConfigError
from tests.conftest import CONF_DIR
from tests.processes import run_script


def sample_cfg(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    return cfg


def test_generate_writes_samples_and_statistics(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    cfg = sample_cfg(tmp_path, f"ckpt={ckpt}", "length=80", "num_samples=3", "prompt=ROMEO:", "stream=false")
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
    greedy, _ = sample(sample_cfg(tmp_path / "g", f"ckpt={ckpt}", "length=300", "strategy=greedy", "stream=false"))
    hot, _ = sample(sample_cfg(tmp_path / "h", f"ckpt={ckpt}", "length=300", "temperature=1.5", "stream=false"))
    assert greedy["sample/repetition_4"] > hot["sample/repetition_4"]
    assert greedy["sample/nll_per_token"] < hot["sample/nll_per_token"]


def test_beam_returns_ranked_beams(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    sample(sample_cfg(tmp_path, f"ckpt={ckpt}", "length=30", "strategy=beam", "beam_width=4", "num_samples=2"))
    record = json.loads((tmp_path / "result.json").read_text())
    scores = [s["score"] for s in record["samples"]]
    assert len(scores) == 2 and scores[0] >= scores[1]


def test_score_mode_equals_direct_loss(tmp_path, trained, corpus_text):
    ckpt = trained["objects"]["best_ckpt"]
    text = corpus_text[-3000:]
    (tmp_path / "t.txt").write_text(text)
    metrics, _ = sample(sample_cfg(tmp_path, f"ckpt={ckpt}", "mode=score", f"text_file={tmp_path / 't.txt'}"))
    loaded = load_model(ckpt, "cpu")
    direct = score_ids(loaded.net, torch.from_numpy(loaded.tokenizer.encode(text).astype("int64")))
    assert metrics["score/loss"] == pytest.approx(direct["loss"], abs=1e-6)
    assert metrics["score/tokens"] == len(text) - 1


def test_length_zero_and_bounded_memory(tmp_path, trained):
    ckpt = trained["objects"]["best_ckpt"]
    metrics, objects = sample(sample_cfg(tmp_path / "z", f"ckpt={ckpt}", "length=0", "stream=false"))
    assert objects["record"]["samples"][0]["new_tokens"] == 0
    _, objects = sample(sample_cfg(tmp_path / "k", f"ckpt={ckpt}", "length=3000", "keep_tokens=100", "stream=false", "prompt=''"))
    assert objects["record"]["samples"][0]["new_tokens"] == 100  # kept in memory
    assert len((tmp_path / "k" / "sample_0.txt").read_text()) == 3000  # streamed to the file


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["temperature=-1"], ConfigError, "temperature=-1"),
        (["top_p=1.5"], ConfigError, r"top_p=1.5 is not allowed: it must be a finite number > 0 and <= 1"),
        (["top_k=0"], ConfigError, r"top_k=0"),
        (["strategy=beam", "beam_width=0"], ConfigError, "beam_width=0"),
        (["length=-5"], ConfigError, "length=-5"),
        (["prompt='ROMEO 🎭'", "unknown=error"], ConfigError, r"not in the checkpoint's vocabulary: '🎭'"),
        (["mode=score"], ConfigError, "mode=score needs the text"),
        (["keep_tokens=0"], ConfigError, r"keep_tokens=0 is not allowed: it must be an integer >= 1"),
        (["stop='🎭'"], ConfigError, r"stop='🎭' has 1 char\(s\) not in the checkpoint's vocabulary"),
        (["ckpt=/nonexistent/x.ckpt"], CheckpointError, r"/nonexistent/x.ckpt does not exist; train one with `make train`"),
    ],
)
def test_bad_sampling_input(tmp_path, trained, overrides, error, match):
    ckpt = trained["objects"]["best_ckpt"]
    with pytest.raises(error, match=match):
        sample(sample_cfg(tmp_path, f"ckpt={ckpt}", *overrides))


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
    _, objects = sample(sample_cfg(tmp_path, f"ckpt={ckpt}", f"prompt_file={tmp_path / 'prompt.txt'}", "length=20",
                                   "stream=false", "unknown=replace"))
    sample_out = objects["record"]["samples"][0]
    assert sample_out["new_tokens"] == 20 and len(sample_out["text"]) == 1_000_020
