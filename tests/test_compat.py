"""A checkpoint in the first ``rnnlm/1`` layout samples and resumes.

``tests/data/lstm-rnnlm1.ckpt`` was written by ``train.py`` at commit 78bcf60 (format
``rnnlm/1``: flat network hyper-parameters, a ``LambdaLR`` cosine schedule, the logit scale
fitted by the LightningModule) with::

    python train.py data.path=<the first 150,000 characters of the embedded plays>
        model.hidden_size=16 model.num_layers=1 model.embedding_dim=8 data.seq_len=32
        data.batch_size=8 trainer=cpu trainer.precision=32-true trainer.max_steps=30
        trainer.val_check_interval=15 trainer.limit_val_batches=2 data.calibration=0.05
        test=false logger=csv callbacks.sample_text=null
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from rnnlm.generation import DecodeSettings, generate, score_ids
from rnnlm.generation.prompt import encode_prompt
from rnnlm.models.loading import load_model
from rnnlm.training.train import train
from tests.conftest import TINY, compose_config

OLD = Path(__file__).parent / "data" / "lstm-rnnlm1.ckpt"
SCORED = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
OLD_SETTINGS = ["model.hidden_size=16", "model.num_layers=1", "model.embedding_dim=8", "data.seq_len=32",
                "data.batch_size=8", "data.calibration=0.05"]


def test_an_old_checkpoint_samples_with_its_fitted_scale():
    loaded = load_model(OLD, device="cpu")
    assert loaded.global_step == 30 and loaded.net.hidden_size == 16
    assert loaded.net.logit_scale.item() == pytest.approx(1.1196, abs=1e-4)
    # Its weights land where they belong and its scale applies: the loss of a fixed text is
    # the one measured when this test was written (3.3240 nats/char without the scale).
    ids = torch.from_numpy(loaded.tokenizer.encode(SCORED).astype("int64"))
    assert score_ids(loaded.net, ids)["loss"] == pytest.approx(3.30631, abs=1e-4)
    # Sampling draws from softmax(scaled logits / T): the tokens the network's own output
    # gives at each prefix, drawn with the same seed.
    prompt = encode_prompt(loaded.tokenizer, "ROMEO:\n")
    tokens = generate(loaded.net, prompt, 40, 1, DecodeSettings(temperature=0.8), seed=0).tokens[0]
    generator, expected = torch.Generator().manual_seed(0), list(prompt)
    with torch.no_grad():
        for _ in range(40):
            logits, _ = loaded.net(torch.tensor(expected)[None])
            expected.append(int(torch.multinomial((logits[0, -1] / 0.8).softmax(-1), 1, generator=generator)))
    assert tokens == expected[len(prompt):]


def test_an_old_checkpoint_resumes_on_the_same_learning_rate_curve(tmp_path, corpus_file):
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(OLD, ckpt)
    overrides = [o for o in TINY if not o.startswith(("model.", "data.seq_len", "data.batch_size"))]
    cfg = compose_config("train", [*overrides, *OLD_SETTINGS, f"data.path={corpus_file}", f"ckpt_path={ckpt}", "trainer.max_steps=36",
                                   "trainer.val_check_interval=36", "test=false", "callbacks.sample_text=null"], tmp_path / "run")
    _, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step == 36
    # The schedule is the config's: a 36-step decay, ending at 5% of 0.008.
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.008 * 0.05)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 36
    assert math.isfinite(trainer.callback_metrics["val/loss"])
