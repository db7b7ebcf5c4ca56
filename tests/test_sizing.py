"""experiment=words sizes itself to the train split (rnnlm.training.sizing)."""

import pytest
import yaml

from rnnlm.training.sizing import differences, size_to_corpus
from rnnlm.utils.errors import ConfigError
from tests.conftest import TINY, compose_config
from tests.processes import run_script

SMALL = 1_000  # tokens: far below experiment=words' threshold
LARGE = 10**9


def words(*overrides):
    return compose_config("train", ["experiment=words", *overrides])


def test_a_small_train_split_takes_the_small_presets_settings():
    small, cfg = compose_config("train", ["experiment=words_small"]), words()
    changed = size_to_corpus(cfg, SMALL)
    assert {"model.tie_weights", "model.dropout", "model.optimizer.weight_decay", "model.scheduler", "callbacks.ema",
            "callbacks.validation_schedule.passes", "trainer.max_steps"} <= set(changed)
    for key in ("model", "callbacks", "trainer", "data", "tags"):
        assert cfg[key] == small[key], key  # the whole of words_small, the scheduler's node included
    assert "total_steps" not in cfg.model.scheduler  # replaced whole, not merged into the cosine one


def test_a_large_train_split_keeps_the_preset_and_the_small_preset_is_not_resized():
    cfg = words()
    assert size_to_corpus(cfg, LARGE) == {} and cfg == words()
    assert size_to_corpus(cfg, words().corpus_sizing.small_below_tokens) == {}  # the threshold itself is large
    small = compose_config("train", ["experiment=words_small"])
    assert size_to_corpus(small, SMALL) == {}


def test_a_setting_given_on_the_command_line_is_kept():
    cfg = words("model.dropout=0.3", "callbacks=none")
    changed = size_to_corpus(cfg, SMALL)
    assert cfg.model.dropout == 0.3 and "model.dropout" not in changed
    assert "ema" not in cfg.callbacks and not cfg.callbacks  # no callback added to a run that chose none
    assert cfg.model.tie_weights is True  # what was not overridden still follows the corpus


def test_differences_replace_a_component_with_another_target_whole():
    small = {"a": {"_target_": "X", "p": 1}, "b": {"q": 2, "r": 3}, "c": {"_target_": "Z"}}
    base = {"a": {"_target_": "Y", "p": 1, "s": 4}, "b": {"q": 2, "r": 0}}
    found = {key: value for key, value, _ in differences(small, base)}
    assert found == {"a": {"_target_": "X", "p": 1}, "b.r": 3, "c": {"_target_": "Z"}}


def test_a_small_preset_that_would_change_the_prepared_corpus_is_refused(monkeypatch):
    from rnnlm.training import sizing

    real = sizing.compose_preset
    monkeypatch.setattr(sizing, "compose_preset",
                        lambda name: compose_config("train", ["experiment=words_small", "data.seq_len=16"])
                        if name == "words_small" else real(name))
    with pytest.raises(ConfigError, match="data.seq_len; a corpus_sizing preset may not change data"):
        size_to_corpus(words(), SMALL)


@pytest.mark.slow
def test_a_sized_run_says_so_saves_what_it_ran_and_resumes(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    base = ["experiment=words", *(o for o in TINY if "embedding_dim" not in o and "max_steps" not in o),
            f"data.path={corpus_file}", "callbacks.sample_text=null", "test=false"]
    first = run_script("train.py", *base, "trainer.max_steps=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "corpus sizing: the train split holds" in first.stdout + first.stderr
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["tie_weights"] is True and saved["model"]["scheduler"]["_target_"].endswith("WarmupPlateau")
    assert saved["model"]["hidden_size"] == 48 and saved["trainer"]["max_steps"] == 6  # overrides kept
    resumed = run_script("train.py", *base, "trainer.max_steps=8", f"resume_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the same corpus sizes the resumed run the same
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["model"]["tie_weights"] is True


def test_a_setting_named_on_the_command_line_is_kept_even_at_the_presets_value(monkeypatch):
    from types import SimpleNamespace

    from rnnlm.training import sizing

    task = ["experiment=words", "model/scheduler=cosine", "model.dropout=0.2", "model.optimizer=adamw"]
    monkeypatch.setattr(sizing, "HydraConfig", SimpleNamespace(initialized=lambda: True, get=lambda: SimpleNamespace(
        overrides=SimpleNamespace(task=task), output_subdir=None)))
    cfg = words()
    changed = size_to_corpus(cfg, SMALL)
    assert cfg.model.scheduler._target_.endswith("warmup_cosine") and cfg.model.dropout == 0.2
    assert "model.optimizer.weight_decay" not in changed  # inside a group the command line named
    assert cfg.model.tie_weights is True
