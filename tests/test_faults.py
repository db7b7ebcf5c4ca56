"""Bad input and faults: each gets a clear message, and no training work is lost."""

import contextlib
import math
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hydra.errors import ConfigCompositionException

from rnnlm.data import CorpusDataModule
from rnnlm.errors import ConfigError, RnnlmError
from rnnlm.models import LanguageModel
from rnnlm.train import check_writable, train
from tests.conftest import TINY, compose_train
from tests.processes import ROOT, started


def test_config_typo_names_the_key(tmp_path, corpus_file):
    with pytest.raises(ConfigCompositionException, match="hiden_size"):
        compose_train(["model.hiden_size=3"], tmp_path)


@pytest.mark.parametrize(
    "override, match",
    [("model.hidden_size=abc", r"model.hidden_size='abc'; it must be a positive integer"),
     ("model.cell=transformer", r"model.cell='transformer'; use one of \['gru', 'lstm', 'rnn'\]")],
)
def test_wrong_values_name_the_allowed_ones(tmp_path, corpus_file, override, match):
    cfg = compose_train([*TINY, f"data.path={corpus_file}", override], tmp_path)
    with pytest.raises(ConfigError, match=match):
        train(cfg)


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(RnnlmError, match=r"output dir .*a_file/run is not writable .*hydra.run.dir="):
        check_writable(blocker / "run")


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tmp_path, corpus_file, monkeypatch):
    original = LanguageModel.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 25 else loss

    monkeypatch.setattr(LanguageModel, "training_step", poisoned)
    cfg = compose_train([*TINY, f"data.path={corpus_file}", "trainer.val_check_interval=10"], tmp_path)
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
        LanguageModel(vocab_size=dm.vocab_size, tokenizer=dm.tokenizer.to_dict(), embedding_dim=None)


@pytest.mark.faults
def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    """Checkpoints go through Lightning's atomic save (temp file + rename)."""
    path = tmp_path / "last.ckpt"
    torch.save({"generation": 1, "w": torch.ones(3)}, path)
    writer = textwrap.dedent(f"""
        import torch
        from lightning_fabric.utilities.cloud_io import _atomic_save
        print("writing", flush=True)
        while True:
            _atomic_save({{"generation": 2, "w": torch.randn(50_000_000)}}, {str(path)!r})
    """)
    with started([sys.executable, "-c", writer], tmp_path, stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(1.5)  # ~200 MB per write: killed in the middle of one
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["generation"] in (1, 2) and math.isfinite(float(ckpt["w"].sum()))


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
