"""Any text on the command line: overrides Hydra cannot read as typed are quoted for it."""

import json
import random
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rnnlm.training.train import train
from rnnlm.utils.errors import ConfigError
from rnnlm.utils.overrides import quote_argv, quote_text_overrides, quote_value
from tests.conftest import TINY, compose_config
from tests.processes import run_script

# Text Hydra cannot take unquoted (or would change), without a sweep's comma, brackets or ${.
TEXTS = ["循环", "ROMEO: 你好", "héllo wörld", "\n", "\t", " tab\there ", "It's 循", "it's", "O! say #1; a=b",
         "循\\", "循\\'x", "a\\\\'b 循", "x\\\n", "循=环", "ROMEO (aside): 你好", "emoji 🙂", "say \"hi\""]
SYNTAX = ["循环,你好", "O, Juliet 循", "[循环]", "{a: 循}", "${x} 循", "choice(循,环)"]


def resolve(override: str) -> object:
    """What a config holds after Hydra parses ``override`` and OmegaConf resolves it."""
    value = OverridesParser.create().parse_override(override).value()
    return OmegaConf.create({"v": value}).v


def test_quoted_values_resolve_to_the_text():
    rng = random.Random(0)
    alphabet = ["\\", "'", '"', "$", "{", "}", "$", "a", " ", "\n", "\t", ",", "循", "=", "(", ")", "["]
    texts = [*TEXTS, *SYNTAX, *("".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(2000))]
    for text in texts:
        assert resolve(f"prompt={quote_value(text)}") == text, repr(text)


@pytest.mark.parametrize("text", TEXTS)
def test_text_reaches_the_config_unchanged(text):
    (override,) = quote_text_overrides([f"prompt={text}"])
    assert resolve(override) == text


@pytest.mark.parametrize("text", SYNTAX)
def test_text_with_hydra_syntax_is_refused_with_the_quoted_form(text):
    with pytest.raises(ConfigError, match="quote it: prompt=") as err:
        quote_text_overrides([f"prompt={text}"])
    suggested = str(err.value).split("quote it: ", 1)[1].split(" (in a sweep", 1)[0]
    assert resolve(suggested) == text


def test_what_hydra_reads_is_left_alone():
    args = ["-m", "model.hidden_size=64,128", "prompt=ROMEO:", "stop=null", "+tags=[a,b]", "prompt='quoted 循环'",
            "prompt=\"dq 你好\"", "data.path=${oc.env:HOME}/x", "-cd", "/d/a=é", "--cfg", "job", "hydra.run.dir=out/a b"]
    assert quote_text_overrides(args) == args


@pytest.fixture(scope="module")
def chinese_ckpt(tmp_path_factory):
    """A tiny model trained on text of Chinese characters, speaker names and punctuation."""
    root = tmp_path_factory.mktemp("zh")
    lines = ["ROMEO: 你好，循环往复。", "JULIET: 循环不已，你好吗？", "ROMEO: 好。"]
    (root / "zh.txt").write_text("\n".join(lines * 400), encoding="utf-8")
    cfg = compose_config("train", [*TINY, f"data.path={root / 'zh.txt'}", "trainer.max_steps=5", "test=false",
                                   "callbacks.sample_text=null", "model.stateful_eval_lanes=null"], root / "run")
    return train(cfg)[1]["last_ckpt"]


@pytest.mark.slow
def test_sample_cli_takes_any_prompt(tmp_path, chinese_ckpt):
    prompt = "ROMEO: 你好"
    result = run_script("sample.py", f"ckpt={chinese_ckpt}", f"prompt={prompt}", "stop=。", "length=30",
                        f"hydra.run.dir={tmp_path}/out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert record["settings"]["prompt"] == prompt and record["settings"]["stop"] == "。"
    assert record["samples"][0]["text"].startswith(prompt)


def test_ambiguous_text_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sample.py", "length=3", "prompt=循环,你好"])
    with pytest.raises(SystemExit) as exit_info:
        quote_argv()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: Hydra cannot read 'prompt=循环,你好': unquoted, it takes only ASCII letters, digits and a few "
        "signs, and ',', brackets and '${' are its syntax; if the value is text, quote it: prompt='循环,你好' "
        "(in a sweep or list, quote each item: -m \"prompt='a','b'\")"]


def test_bytes_that_are_not_utf8_are_one_error_line(tmp_path):
    """``prompt=$'ab\\xffcd'``: Python hands the byte over as a lone surrogate."""
    result = run_script("sample.py", "prompt=ab\udcffcd", "ckpt=/nonexistent.ckpt", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: prompt= holds bytes that are not UTF-8 (at character 2); "
                                                     "pass UTF-8 text (prompt_file= and text_file= take a UTF-8 file)")


@pytest.mark.slow
def test_train_cli_takes_a_non_ascii_corpus_path(tmp_path, corpus_text):
    corpus = tmp_path / "pièces de théâtre" / "josé.txt"
    corpus.parent.mkdir()
    corpus.write_text(corpus_text[:40_000], encoding="utf-8")
    result = run_script("train.py", "debug=fast", "trainer=cpu", "trainer.max_steps=4", "test=false",
                        "callbacks.sample_text=null", f"data.path={corpus}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_an_interpolation_that_cannot_be_resolved_is_one_line(tmp_path):

    from rnnlm.utils.cli import as_user_error

    cfg = compose_config("sample", ["prompt=${foo}"], tmp_path)
    with pytest.raises(Exception) as raised:
        OmegaConf.to_container(cfg, resolve=True)
    err = as_user_error(raised.value)
    assert isinstance(err, ConfigError) and "\n" not in str(err)
    assert str(err).startswith("prompt: Interpolation key 'foo' not found; text that holds '${' is read as an interpolation")


def test_text_that_hydra_reads_as_a_sweep_is_refused_outside_a_multirun():
    with pytest.raises(ConfigError, match=r"'prompt=a,b' is a sweep to Hydra .* quote it: prompt='a,b'"):
        quote_text_overrides(["prompt=a,b"])
    assert quote_text_overrides(["-m", "prompt=a,b"]) == ["-m", "prompt=a,b"]  # a sweep, as asked
    assert quote_text_overrides(["model.hidden_size=16,32"]) == ["model.hidden_size=16,32"]  # not text: Hydra's to judge


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("train", ["data=text"], r"data.path= is empty; pass a UTF-8 file or directory"),
    ("train", ["experiment=tinyshakespeare"], r"data.path= is empty"),
    ("train", ["trainer.devices=1000", "trainer.accelerator=cpu"], r"trainer.devices=1000 starts 1000 training processes on a CPU with \d+ cores"),
    ("train", ["model.optimizer._target_=torch.optim.Bogus"], r"torch.optim.Bogus is no class or function that can be imported"),
    ("sample", ["stream=maybe"], r"stream='maybe' is not allowed: it must be true or false"),
    ("train", ["test=yes"], r"test='yes' is not allowed: it must be true or false"),
])
def test_careless_settings_are_one_line(tmp_path, corpus_file, name, overrides, message):
    from rnnlm.sampling.sample import sample

    extra = [f"ckpt={tmp_path / 'none.ckpt'}"] if name == "sample" else [*TINY]
    cfg = compose_config(name, [*extra, *overrides], tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        (sample if name == "sample" else train)(cfg)


def test_a_checkpoint_that_is_a_pipe_is_refused_without_reading_it(tmp_path):
    import os

    from rnnlm.models.loading import read_checkpoint
    from rnnlm.utils.errors import CheckpointError

    os.mkfifo(tmp_path / "pipe.ckpt")
    with pytest.raises(CheckpointError, match="pipe.ckpt is not a regular file"):
        read_checkpoint(tmp_path / "pipe.ckpt")
