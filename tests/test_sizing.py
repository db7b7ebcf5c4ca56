"""experiment=words sizes itself to the train split (rnnlm.training.sizing)."""

import json

import pytest
import yaml

from rnnlm.training import sizing
from rnnlm.training.sizing import differences, size_to_corpus
from rnnlm.training.train import train
from rnnlm.utils.errors import ConfigError
from tests.conftest import TINY, compose_config
from tests.processes import run_script

SMALL = 1_000  # tokens: far below experiment=words' threshold
LARGE = 10**9


def sized(*overrides):
    """The run ``overrides`` compose, sized to a small train split as its command line would be."""
    cfg = compose_config("train", ["experiment=words", *overrides])
    return cfg, size_to_corpus(cfg, SMALL, ["experiment=words", *overrides])


def test_a_small_train_split_takes_the_small_presets_settings():
    small = compose_config("train", ["experiment=words_small"])
    for overrides in (None, ["experiment=words"]):  # outside a Hydra run, and with its command line
        cfg = compose_config("train", ["experiment=words"])
        changed = size_to_corpus(cfg, SMALL, overrides)
        assert {"model.tie_weights", "model.dropout", "model.optimizer.weight_decay", "model.scheduler", "callbacks.ema",
                "callbacks.validation_schedule.passes", "trainer.max_steps"} <= set(changed)
        for key in ("model", "callbacks", "trainer", "data", "tags"):
            assert cfg[key] == small[key], key  # the whole of words_small, the scheduler's node included
        assert "total_steps" not in cfg.model.scheduler  # replaced whole, not merged into the cosine one


def test_a_large_train_split_keeps_the_run_and_the_small_preset_is_not_resized():
    cfg = compose_config("train", ["experiment=words"])
    assert size_to_corpus(cfg, LARGE) == {} and cfg == compose_config("train", ["experiment=words"])
    assert size_to_corpus(cfg, cfg.corpus_sizing.small_below_tokens) == {}  # the threshold itself is large
    small = compose_config("train", ["experiment=words_small"])
    assert size_to_corpus(small, SMALL) == {}
    off = compose_config("train", ["experiment=words", "corpus_sizing=null"])
    assert size_to_corpus(off, SMALL, ["experiment=words", "corpus_sizing=null"]) == {}


def test_command_line_overrides_apply_as_they_would_to_the_small_preset():
    cfg, changed = sized("model.dropout=0.3", "model=gru", "trainer=cpu", "~callbacks.sample_text")
    assert cfg.model.dropout == 0.3 and "model.dropout" not in changed  # a value given is kept
    assert cfg.model.cell == "gru" and cfg.model.tie_weights is True  # a group chosen still gets the preset
    assert cfg.trainer.max_steps == 100000 and cfg.callbacks.ema.decay == 0.99
    assert "sample_text" not in cfg.callbacks
    cfg, changed = sized("model.dropout=0.2", "callbacks=none")  # the preset's own value, named: kept
    assert cfg.model.dropout == 0.2 and not any("_target_" in node for node in cfg.callbacks.values())  # none built
    cfg, _ = sized("model/scheduler=cosine")  # as experiment=words_small model/scheduler=cosine would be
    assert cfg.model.scheduler._target_.endswith("warmup_cosine") and cfg.trainer.max_steps == 100000


def test_the_threshold_given_on_the_command_line_applies_and_is_not_passed_on():
    overrides = ["experiment=words", "corpus_sizing.small_below_tokens=5000000", "corpus_sizing.small_preset=words_small"]
    cfg = compose_config("train", overrides)
    assert size_to_corpus(cfg, 2_000_000, overrides)["model.tie_weights"] is True  # words_small has no rule to set


def test_a_preset_built_on_words_is_not_resized(monkeypatch):
    from types import SimpleNamespace

    hydra = SimpleNamespace(runtime=SimpleNamespace(choices={"experiment": "my_words"}), output_subdir=None)
    monkeypatch.setattr(sizing, "HydraConfig", SimpleNamespace(initialized=lambda: True, get=lambda: hydra))
    cfg = compose_config("train", ["experiment=words"])  # stands for a preset whose defaults hold words
    assert size_to_corpus(cfg, SMALL, ["experiment=my_words"]) == {}
    hydra.runtime.choices["experiment"] = "words"
    assert size_to_corpus(cfg, SMALL, ["experiment=words"])["model.tie_weights"] is True


def test_a_value_set_after_composing_is_kept():
    cfg = compose_config("train", ["experiment=words"])
    cfg.model.optimizer.weight_decay = 0.05
    assert "model.optimizer.weight_decay" not in size_to_corpus(cfg, SMALL)
    assert cfg.model.optimizer.weight_decay == 0.05 and cfg.model.tie_weights is True


def test_differences_replace_a_component_with_another_target_whole():
    small = {"a": {"_target_": "X", "p": 1}, "b": {"q": 2, "r": 3}, "c": {"_target_": "Z"}}
    base = {"a": {"_target_": "Y", "p": 1, "s": 4}, "b": {"q": 2, "r": 0}}
    found = {key: value for key, value, _ in differences(small, base)}
    assert found == {"a": {"_target_": "X", "p": 1}, "b.r": 3, "c": {"_target_": "Z"}}


def test_a_small_preset_that_would_change_what_was_read_before_is_refused(monkeypatch):
    real = sizing.compose_run
    monkeypatch.setattr(sizing, "compose_run", lambda overrides: real(
        [*overrides, "data.seq_len=16"] if "experiment=words_small" in overrides else overrides))
    with pytest.raises(ConfigError, match="sets data.seq_len, which is read before the corpus is prepared"):
        sized()


def test_a_small_preset_that_does_not_compose_is_one_line():
    cfg = compose_config("train", ["experiment=words", "corpus_sizing.small_preset=word_smal"])
    with pytest.raises(ConfigError, match="corpus sizing could not compose .*experiment=word_smal: ") as err:
        size_to_corpus(cfg, SMALL)
    assert "\n" not in str(err.value)


def test_a_sized_setting_that_clashes_with_an_override_names_the_sizing(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, "experiment=words", f"data.path={corpus_file}"], tmp_path)
    with pytest.raises(ConfigError, match=r"embedding_dim \(16\) == model.hidden_size \(48\).*corpus sizing gave this "
                                          r"run experiment=words_small's settings; corpus_sizing=null"):
        train(cfg)


@pytest.mark.slow
def test_a_sized_run_says_so_saves_what_it_ran_and_resumes(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    base = ["experiment=words", *(o for o in TINY if "embedding_dim" not in o and "max_steps" not in o),
            f"data.path={corpus_file}", "callbacks.sample_text=null", "test=false"]
    first = run_script("train.py", *base, "trainer.max_steps=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "corpus sizing: the train split holds" in first.stdout + first.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["sized_as"] == "words_small"
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["tie_weights"] is True and saved["model"]["scheduler"]["_target_"].endswith("WarmupPlateau")
    assert saved["model"]["hidden_size"] == 48 and saved["trainer"]["max_steps"] == 6  # overrides kept
    resumed = run_script("train.py", *base, "trainer.max_steps=8", f"resume_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the same corpus sizes the resumed run the same
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["model"]["tie_weights"] is True
