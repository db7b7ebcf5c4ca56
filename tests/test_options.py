"""Every numeric option is checked by its kind: the cases are generated from the configs."""

from __future__ import annotations

import math

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnlm.sampling.sample import sample
from rnnlm.training.train import train
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.options import OPTIONS, Choice, Number, check_config, leaves, rule_for
from tests.conftest import TINY, compose_config
from tests.processes import run_script

# Config group choices whose options differ from the defaults'.
TRAIN_VARIANTS = [[], ["model=gru"], ["callbacks=ema"], ["experiment=tinyshakespeare"], ["debug=fast"],
                  ["trainer=ddp"], ["trainer=gpu"], ["hparams_search=optuna"], ["experiment=sweep_cells"],
                  ["experiment=words_small"], ["experiment=words"]]
BAD_VALUES = [math.nan, math.inf, -math.inf, 0, -1, 0.5, 10**12]


def numeric_options(name: str, variants: list[list[str]]) -> dict[str, object]:
    """Every option of the composed configs whose value is a number (bools are not)."""
    found = {}
    for overrides in variants:
        for key, value in leaves(compose_config(name, overrides)):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(key, value)
    return found


DEFAULTS = {"train": compose_config("train", []), "sample": compose_config("sample", [])}
TRAIN_NUMBERS = numeric_options("train", TRAIN_VARIANTS)
SAMPLE_NUMBERS = numeric_options("sample", [[]])


@pytest.mark.parametrize("task, key", [*(("train", k) for k in TRAIN_NUMBERS), *(("sample", k) for k in SAMPLE_NUMBERS)])
def test_every_numeric_option_has_a_rule_that_its_default_meets(task, key):
    numbers = TRAIN_NUMBERS if task == "train" else SAMPLE_NUMBERS
    rule = rule_for(key)
    assert rule is not None, f"{task}: add a rule for {key} to rnnlm.utils.options"
    assert rule.accepts(numbers[key]), f"{task}: the default {key}={numbers[key]} breaks its own rule"


def with_value(cfg: DictConfig, key: str, value: object) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


CASES = [(task, key) for task, numbers in (("train", TRAIN_NUMBERS), ("sample", SAMPLE_NUMBERS)) for key in numbers]


@pytest.mark.parametrize("task, key", CASES)
def test_each_bad_number_is_refused_in_one_line(task, key):
    """nan and inf everywhere; zero, negative, fractional and huge values unless the
    option's kind allows them."""
    rule = rule_for(key)
    for bad in BAD_VALUES:
        cfg = with_value(DEFAULTS[task], key, bad)
        if isinstance(bad, float) and not math.isfinite(bad):
            assert not rule.accepts(bad), (key, bad)
        if rule.accepts(bad):
            check_config(cfg)  # allowed by the option's kind: no error
            continue
        with pytest.raises(ConfigError) as info:
            check_config(cfg)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{key.split('.')[0]}") and key.split(".")[-1] in message, message
        assert f"={bad} is not allowed: it must be" in message and "override" in message, message


# Values that Lightning, torch or our code document as meaningful: they must stay accepted.
MUST_ACCEPT = [("train", "trainer.devices", "auto"), ("train", "trainer.devices", "0,1"), ("train", "trainer.devices", -1),
               ("train", "trainer.devices", [0, 1]), ("train", "trainer.max_epochs", -1), ("train", "trainer.max_epochs", 0),
               ("train", "trainer.max_steps", -1), ("train", "trainer.limit_val_batches", 0),
               ("train", "trainer.limit_val_batches", 0.0), ("train", "trainer.limit_val_batches", 0.25),
               ("train", "trainer.val_check_interval", 0.5), ("train", "trainer.gradient_clip_val", None),
               ("train", "model.dropout", 0.0), ("train", "model.embedding_dim", None), ("train", "seed", 0),
               ("train", "trainer.num_sanity_val_steps", -1), ("train", "callbacks.model_checkpoint.save_top_k", -1),
               ("train", "callbacks.sample_text.every_n_steps", 0), ("train", "data.num_workers", 0),
               ("sample", "temperature", 0), ("sample", "length", 0), ("sample", "top_p", 1.0),
               ("sample", "length_penalty", -0.5), ("sample", "keep_tokens", None)]


@pytest.mark.parametrize("task, key, value", MUST_ACCEPT)
def test_documented_values_stay_accepted(task, key, value):
    check_config(with_value(DEFAULTS[task], key, value))


def test_kinds_describe_what_is_allowed():
    assert Number(1, 64, integer=True).allowed() == "an integer >= 1 and <= 64"
    assert Number(0, 1, high_open=True).allowed() == "a finite number >= 0 and < 1"
    assert Number(0, 10**9, integer=True).allowed() == "an integer >= 0 and <= 1,000,000,000"
    steps = Number(1, 10**9, fraction_or_count=True)
    assert steps.accepts(1000) and steps.accepts(0.25) and not steps.accepts(0) and not steps.accepts(1.5)
    assert not steps.accepts(10**9 + 1)
    assert not Number(1, 64, integer=True).accepts(True)  # a bool is not a count
    assert not Number(0, 1).accepts("3")
    assert Choice(("a", "b")).allowed() == "one of a, b" and not Choice(("a", "b")).accepts("c")


def test_every_number_has_an_upper_bound_that_keeps_it_finite():
    """An upper bound on every numeric rule: beyond it a value overflows, hangs or fills memory."""
    for pattern, rule in OPTIONS.items():
        if isinstance(rule, Number):
            assert math.isfinite(rule.high) and rule.high <= 2**32, pattern
            assert not rule.accepts(10**30) and not rule.accepts(1e300), pattern


def test_registries_offer_what_the_rules_allow():
    from rnnlm.data.tokenizers import TOKENIZERS
    from rnnlm.models.network import CELLS

    assert set(OPTIONS["model.cell"].names) == set(CELLS)
    assert set(OPTIONS["data.tokenizer"].names) == set(TOKENIZERS)


def test_train_checks_numbers_before_reading_the_corpus(tmp_path):
    cfg = compose_config("train", [*TINY, "data.path=/nonexistent/corpus.txt", "model.optimizer.lr=nan"], tmp_path)
    with pytest.raises(ConfigError, match=r"model.optimizer.lr=nan is not allowed: it must be a finite number > 0"):
        train(cfg)


def test_sample_checks_numbers_before_loading(tmp_path):
    cfg = compose_config("sample", ["ckpt=/nonexistent.ckpt", "top_p=inf"])
    with pytest.raises(ConfigError, match=r"top_p=inf is not allowed"):
        sample(cfg)


@pytest.mark.slow
def test_the_command_line_prints_one_error_line(tmp_path):
    result = run_script("train.py", "trainer.val_check_interval=0", "data.path=/nonexistent", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: trainer.val_check_interval=0 is not allowed") and "Traceback" not in result.stderr


@pytest.mark.parametrize("preset", ["words", "words_small", "subwords", "tinyshakespeare", "tinyshakespeare_15min", None])
def test_every_preset_sizes_its_matrices_in_multiples_of_8(preset):
    """What tensor-core kernels want on a GPU (and oneDNN's blocked layouts on a CPU)."""
    cfg = compose_config("train", [f"experiment={preset}"] if preset else [])
    sizes = {"model.hidden_size": cfg.model.hidden_size, "model.embedding_dim": cfg.model.embedding_dim,
             "data.batch_size": cfg.data.batch_size, "data.seq_len": cfg.data.seq_len}
    assert all(value is None or value % 8 == 0 for value in sizes.values()), sizes
