"""Bad input and faults: each gets a clear message, and no training work is lost."""

import contextlib
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException

from rnnlm.data import CorpusDataModule
from rnnlm.models import RNNLM, LanguageModel
from rnnlm.training.train import train
from rnnlm.utils.errors import ConfigError, RnnlmError
from tests.conftest import TINY, compose_config
from tests.processes import ROOT, run_script, started


def test_config_typo_names_the_key(tmp_path, corpus_file):
    with pytest.raises(ConfigCompositionException, match="hiden_size"):
        compose_config("train", ["model.hiden_size=3"], tmp_path)


@pytest.mark.parametrize(
    "override, match",
    [("model.hidden_size=abc", r"model.hidden_size='abc' is not allowed: it must be an integer >= 1"),
     ("model.cell=transformer", r"model.cell='transformer' is not allowed: it must be one of lstm, gru, rnn")],
)
def test_wrong_values_name_the_allowed_ones(tmp_path, corpus_file, override, match):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", override], tmp_path)
    with pytest.raises(ConfigError, match=match):
        train(cfg)


def test_unwritable_output_dir_fails_before_training(tmp_path):
    """Refused in one line before the corpus is read (this one does not exist) or a model built."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = compose_config("train", [*TINY, "data.path=/not/read/first"], blocker / "run")
    with pytest.raises(RnnlmError, match=r"^output dir .*a_file/run is not writable \(Not a directory\); .*hydra.run.dir=") as info:
        train(cfg)
    assert "\n" not in str(info.value) and blocker.read_text() == "x" and list(tmp_path.iterdir()) == [blocker]


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tmp_path, corpus_file, monkeypatch):
    original = LanguageModel.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 25 else loss

    monkeypatch.setattr(LanguageModel, "training_step", poisoned)
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.val_check_interval=10"], tmp_path)
    with pytest.raises(RnnlmError, match=r"training loss became nan at step 26; stopped without saving these weights \(last good checkpoint: .*step000020"):
        train(cfg)
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values()), ckpt


def test_huge_vocabulary_is_capped_and_one_hot_refused(tmp_path):
    chars = [chr(0x4E00 + i) for i in range(3000)]
    text = "".join(chars[(i * 7919) % 3000] for i in range(60_000))
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    dm = CorpusDataModule(path=str(tmp_path / "zh.txt"), seq_len=16, batch_size=4)
    dm.setup()
    assert dm.vocab_size > 2900 and dm.stats["token_dtype"] == "torch.int16"
    capped = CorpusDataModule(path=str(tmp_path / "zh.txt"), seq_len=16, batch_size=4, max_vocab=500)
    capped.setup()
    assert capped.vocab_size == 500
    with pytest.raises(ConfigError, match=r"one-hot input with a vocabulary of \d+ tokens exceeds model.onehot_max_vocab=1024; set model.embedding_dim"):
        RNNLM(vocab_size=dm.vocab_size, embedding_dim=None)


@pytest.mark.slow
@pytest.mark.faults
def test_runs_started_together_get_their_own_dirs(tmp_path, corpus_file):
    args = [sys.executable, str(ROOT / "train.py"), "debug=fast", "trainer.max_steps=4", "test=false",
            f"data.path={corpus_file}", "callbacks.sample_text=null"]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(started(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                 for _ in range(2)]
        for proc in procs:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-2000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2
    assert all((run / "checkpoints" / "last.ckpt").is_file() for run in runs)


def test_settings_that_cannot_work_are_refused(corpus_file):
    from rnnlm.models.schedules import warmup_cosine

    with pytest.raises(ConfigError, match="data.order=lanes needs windows that follow each other"):
        CorpusDataModule(path=str(corpus_file), order="lanes", stride=64, seq_len=128)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=r"decays over trainer.max_steps, which is -1; set trainer.max_steps"):
        warmup_cosine(opt, total_steps=-1, warmup_steps=50)


@pytest.mark.parametrize("kind", ["missing", "directory", "text file"])
def test_train_ckpt_path_names_what_is_wrong_with_it(tmp_path, corpus_file, kind):
    target = {"missing": tmp_path / "nope.ckpt", "directory": tmp_path, "text file": corpus_file}[kind]
    expected = {"missing": r"ckpt_path=.*nope.ckpt does not exist",
                "directory": r"ckpt_path=.* is a directory, not a file",
                "text file": r"plays.txt is not a readable checkpoint"}[kind]
    cfg = compose_config("train", [*TINY, "data.path=/not/read/first", f"ckpt_path={target}"], tmp_path / "run")
    with pytest.raises(RnnlmError, match=expected) as info:
        train(cfg)  # refused before the corpus is read
    assert "\n" not in str(info.value) and "ckpt_path=last, or resume_dir=" in str(info.value)


@pytest.mark.parametrize("option", ["text_file", "prompt_file"])
def test_text_file_options_tell_a_directory_from_a_missing_file(tmp_path, trained, option):
    from rnnlm.sampling.sample import sample

    extra = ["mode=score"] if option == "text_file" else []
    ckpt = trained["objects"]["best_ckpt"]
    with pytest.raises(ConfigError, match=rf"{option}={tmp_path} is a directory, not a file; pass a UTF-8 text file"):
        sample(compose_config("sample", [f"ckpt={ckpt}", f"{option}={tmp_path}", *extra], tmp_path))
    with pytest.raises(ConfigError, match=rf"{option}=.*none.txt does not exist"):
        sample(compose_config("sample", [f"ckpt={ckpt}", f"{option}={tmp_path / 'none.txt'}", *extra], tmp_path))


def test_resuming_with_another_architecture_names_the_settings(tmp_path, corpus_file):
    base = [*TINY, f"data.path={corpus_file}", "trainer.max_steps=10", "trainer.val_check_interval=10", "test=false",
            "callbacks.sample_text=null"]
    train(compose_config("train", base, tmp_path))
    cfg = compose_config("train", [*base, "ckpt_path=last", "model.hidden_size=32", "model.cell=gru"], tmp_path)
    with pytest.raises(RnnlmError, match=r"cannot resume from .*: the config asks for model.cell='gru' \(the checkpoint "
                                         r"has 'lstm'\); model.hidden_size=32 \(the checkpoint has 48\); resume with"):
        train(cfg)


def test_a_vocabulary_of_only_unk_is_refused(corpus_file):
    with pytest.raises(ConfigError, match=r"the vocabulary holds only <unk> \(data.max_vocab=None, data.min_freq=1000000000\)"):
        CorpusDataModule(path=str(corpus_file), min_freq=10**9, seq_len=16, batch_size=4).setup()


def test_unknown_tokens_of_the_evaluation_splits_are_counted(tmp_path, corpus_text, caplog):
    cut = int(len(corpus_text) * 0.6)
    text = corpus_text[:cut] + corpus_text[cut:].replace("e", "§")  # val/test hold a char train never has
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    dm = CorpusDataModule(path=str(tmp_path / "t.txt"), seq_len=16, batch_size=4, splits=[0.6, 0.2, 0.2])
    dm.setup()
    assert dm.stats["train_unk"] == 0 and dm.stats["val_unk"] > 500 and dm.stats["test_unk"] > 500
    assert "are <unk>: the train split lacks them" in caplog.text
    clean = CorpusDataModule(path=str(tmp_path / "t.txt"), seq_len=16, batch_size=4, splits=[0.55, 0.05, 0.4])
    caplog.clear()
    clean.setup()
    assert clean.stats["val_unk"] == 0 and "val tokens" not in caplog.text


def test_a_setting_a_component_refuses_is_one_line(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.precision=bogus"], tmp_path)
    with pytest.raises(ConfigError, match=r"pytorch_lightning.Trainer refused the trainer settings: Precision 'bogus' is invalid") as info:
        train(cfg)
    assert "\n" not in str(info.value)


def test_weights_that_disagree_with_their_hyper_parameters_are_named(tmp_path, trained):
    from rnnlm.models.loading import load_model

    checkpoint = torch.load(trained["objects"]["best_ckpt"], weights_only=True)
    checkpoint["hyper_parameters"]["hidden_size"] = 40
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(RnnlmError, match=r"edited.ckpt: its weights do not fit its hyper-parameters: rnn\.\S+ is \[.*\], "
                                         r"the hyper-parameters make it \[.*40.*\].* \(and \d+ more\); use another") as info:
        load_model(tmp_path / "edited.ckpt")
    assert "\n" not in str(info.value)


def test_resuming_with_another_corpus_of_the_same_vocabulary_size_is_refused(tmp_path):
    from rnnlm.training.resume import check_architecture

    saved = {"hyper_parameters": {"vocab_size": 3, "tokenizer": {"kind": "char", "vocab": ["<unk>", "a", "b"]}}}
    check_architecture(tmp_path / "x.ckpt", saved, {"vocab_size": 3, "tokenizer": {"kind": "char", "vocab": ["<unk>", "a", "b"]}})
    with pytest.raises(RnnlmError, match=r"another vocabulary of the same size \(2 of its 3 token ids mean other tokens"):
        check_architecture(tmp_path / "x.ckpt", saved, {"vocab_size": 3, "tokenizer": {"kind": "char", "vocab": ["<unk>", "b", "a"]}})


def test_resuming_a_checkpoint_from_before_the_adaptive_softmax_names_the_output(tmp_path):
    """Checkpoints without ``output`` hold a full softmax; a config whose output=auto now picks
    the adaptive one for that vocabulary is refused in one line, not by Lightning's key list."""
    from rnnlm.training.resume import check_architecture

    vocab = ["<unk>", *(f"w{i}" for i in range(9999))]
    saved = {"hyper_parameters": {"vocab_size": 10_000, "tokenizer": {"kind": "word", "vocab": vocab}, "cell": "lstm"}}
    asked = {"vocab_size": 10_000, "tokenizer": {"kind": "word", "vocab": vocab}, "cell": "lstm"}
    check_architecture(tmp_path / "x.ckpt", saved, {**asked, "output": "softmax"})
    with pytest.raises(RnnlmError, match=r"model.output='adaptive' \(the checkpoint has 'softmax'\)") as info:
        check_architecture(tmp_path / "x.ckpt", saved, {**asked, "output": "adaptive", "adaptive_cutoffs": [10, 100]})
    assert "\n" not in str(info.value)


def test_ctrl_c_during_a_checkpoint_write_takes_effect_once_it_is_written(tmp_path):
    """SIGINT inside torch.save would break its zip writer, whose clean-up then raises a
    RuntimeError instead of the KeyboardInterrupt: the write finishes first."""
    import os
    import signal

    from rnnlm.training.checkpoint_io import AtomicCheckpointIO

    class Interrupting(dict):
        def __reduce_ex__(self, protocol):  # runs inside torch.save's pickling
            os.kill(os.getpid(), signal.SIGINT)
            return dict, (dict(self),)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the suite inherited
    try:
        with pytest.raises(KeyboardInterrupt):
            AtomicCheckpointIO().save_checkpoint({"state": Interrupting(a=torch.ones(3))}, tmp_path / "x.ckpt")
        assert torch.load(tmp_path / "x.ckpt", weights_only=False)["state"]["a"].tolist() == [1, 1, 1]  # our own file
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_resuming_a_bpe_run_on_other_merges_is_refused(tmp_path):
    """A BPE state has no vocabulary list: its merges (the tokenizers JSON) decide what an id means."""
    from rnnlm.data.tokenizers import BPETokenizer
    from rnnlm.training.resume import check_architecture

    ours = BPETokenizer.fit("the cat sat on the mat. " * 40, 300).to_dict()
    other = BPETokenizer.fit("a dog ran in the fog! " * 40, 300).to_dict()
    saved = {"hyper_parameters": {"vocab_size": 300, "tokenizer": ours}}
    check_architecture(tmp_path / "x.ckpt", saved, {"vocab_size": 300, "tokenizer": dict(ours)})
    with pytest.raises(RnnlmError, match=r"another vocabulary of the same size \(\d+ of its \d+ token ids mean other tokens"):
        check_architecture(tmp_path / "x.ckpt", saved, {"vocab_size": 300, "tokenizer": other})


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path, corpus_file):
    """Hydra writes a resumed run's config to .hydra-pending/ until every check has passed."""
    run_dir = tmp_path / "run"
    base = [*(o for o in TINY if not o.startswith("trainer.max_steps")), f"data.path={corpus_file}",
            "callbacks.sample_text=null", "test=false"]
    first = run_script("train.py", *base, "trainer.max_steps=10", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    refused = run_script("train.py", *(o for o in base if "hidden_size" not in o), "model.hidden_size=32",
                         "trainer.max_steps=10", f"resume_dir={run_dir}", cwd=tmp_path)
    assert refused.returncode == 2 and "the checkpoint has 48" in refused.stderr.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == before
    assert not (run_dir / ".hydra-pending").exists()
    resumed = run_script("train.py", *base, "trainer.max_steps=15", f"resume_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trainer.max_steps=15" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert not (run_dir / ".hydra-pending").exists()
