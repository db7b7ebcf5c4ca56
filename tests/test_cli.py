"""Any text on the command line: overrides Hydra's grammar cannot read unquoted are quoted."""

import json

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rnnlm.cli import quote_text_overrides
from rnnlm.train import train
from tests.conftest import TINY, compose_train
from tests.processes import run_script

TEXTS = ["循环", "ROMEO: 你好", "héllo, wörld", "\n", "tab\there", "It's 循", "循\\", "循\\'x", "a\\\\'b 循", "${x} 循",
         "循=环", "Ελληνικά [1,2]", "emoji 🙂"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_reaches_the_config_unchanged(text):
    (override,) = quote_text_overrides([f"prompt={text}"])
    parsed = OverridesParser.create().parse_override(override)
    cfg = OmegaConf.create({"prompt": parsed.value()})
    assert cfg.prompt == text


def test_what_hydra_reads_is_left_alone():
    argv = ["train.py", "-m", "model.hidden_size=64,128", "prompt=ROMEO:", "stop=null", "+tags=[a,b]",
            "prompt='quoted 循环'", "data.path=${oc.env:HOME}/x", "--cfg", "job"]
    assert quote_text_overrides(argv) == argv


@pytest.fixture(scope="module")
def chinese_ckpt(tmp_path_factory):
    """A tiny model trained on text of Chinese characters, speaker names and punctuation."""
    root = tmp_path_factory.mktemp("zh")
    lines = ["ROMEO: 你好，循环往复。", "JULIET: 循环不已，你好吗？", "ROMEO: 好。"]
    (root / "zh.txt").write_text("\n".join(lines * 400), encoding="utf-8")
    cfg = compose_train([*TINY, f"data.path={root / 'zh.txt'}", "trainer.max_steps=5", "test=false",
                         "callbacks.sample_text=null", "model.stateful_eval_lanes=null"], root / "run")
    return train(cfg)[1]["last_ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["循环", "ROMEO: 你好"])
def test_sample_cli_takes_any_prompt(tmp_path, chinese_ckpt, prompt):
    result = run_script("sample.py", f"ckpt={chinese_ckpt}", f"prompt={prompt}", "stop=。", "length=30",
                        f"hydra.run.dir={tmp_path}/out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert record["settings"]["prompt"] == prompt and record["settings"]["stop"] == "。"
    assert record["samples"][0]["text"].startswith(prompt)
