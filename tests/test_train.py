import csv
import inspect
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.evaluation import score_totals
from rnnlm.models.loading import load_model
from rnnlm.training import precision as runtime
from rnnlm.training import train as train_module
from rnnlm.training.train import resolve_precision, summary, train
from rnnlm.utils.errors import ConfigError
from tests.conftest import CONF_DIR, TINY, compose_config
from tests.processes import run_script as run_cli


def unigram_entropy(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens.long()).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def test_training_beats_the_unigram_entropy(trained):
    dm = trained["objects"]["datamodule"]
    entropy = unigram_entropy(dm.tokens["train"])
    metrics = trained["metrics"]
    assert metrics["val/loss"] < entropy - 0.2, (metrics["val/loss"], entropy)
    assert metrics["test/loss"] < entropy
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-4)
    assert 0 < metrics["val/acc"] < 1 and metrics["val/loss_best"] <= metrics["val/loss"] + 1e-6


def test_learning_rate_decays_to_the_last_step(trained):
    cfg, trainer = trained["objects"]["cfg"], trained["objects"]["trainer"]
    assert trainer.global_step == cfg.trainer.max_steps
    final_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert final_lr == pytest.approx(cfg.model.optimizer.lr * cfg.model.scheduler.min_ratio, rel=1e-3)


def test_default_run_is_budgeted_in_steps(tmp_path):
    """The default run ends after the Trainer's max_steps however fast the machine is (no
    epoch count ends it) with the learning rate at its floor at exactly that step, also
    when the budget is changed on the command line; its precision is this CPU's best."""
    from hydra.utils import instantiate

    for budget in ([], ["trainer.max_steps=700"]):
        cfg = compose_config("train", ["trainer.accelerator=cpu", *budget], tmp_path)
        resolve_precision(cfg)
        assert cfg.trainer.precision == runtime.auto_precision("cpu", {"cell": "lstm"})[0]
        trainer = instantiate(cfg.trainer, logger=False)
        steps = trainer.max_steps
        assert steps == 700 if budget else steps > 0
        assert trainer.fit_loop.max_epochs == -1
        # The schedule as the model builds it: one scheduler step per optimiser step.
        peak = cfg.model.optimizer.lr
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer)
        lrs = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(peak * cfg.model.scheduler.min_ratio, rel=1e-6)
        assert lrs[-2] > lrs[-1] and lrs[steps // 2] > 2 * lrs[-1]  # still decaying until the last step


@pytest.mark.parametrize("cell, native, expected", [("lstm", True, "bf16-mixed"), ("lstm", False, "32-true"),
                                                     ("gru", True, "32-true"), ("rnn", True, "32-true")])
def test_auto_precision_is_bf16_only_where_it_is_faster(tmp_path, monkeypatch, cell, native, expected):
    """bf16 needs native CPU support to pay, and pays on the CPU for the LSTM only."""
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: native)
    cfg = compose_config("train", ["trainer.precision=auto", "trainer.accelerator=cpu", f"model.cell={cell}"], tmp_path)
    resolve_precision(cfg)
    assert cfg.trainer.precision == expected


def test_auto_precision_is_what_the_run_uses_and_records(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.precision=auto", "trainer.max_steps=4",
                                   "trainer.val_check_interval=4", "test=false", "callbacks.sample_text=null"], tmp_path)
    _, objects = train(cfg)
    expected = runtime.auto_precision("cpu", {"cell": "lstm"})[0]
    assert objects["trainer"].precision == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == expected


def test_bf16_lstm_is_refused_on_a_cpu_without_native_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    cfg = compose_config("train", ["trainer.precision=bf16-mixed", "trainer.accelerator=cpu"], tmp_path)
    with pytest.raises(ConfigError, match="needs a CPU with native bf16.*trainer.precision=auto"):
        resolve_precision(cfg)
    cfg = compose_config("train", ["trainer.precision=bf16-mixed", "trainer.accelerator=cpu", "model.cell=gru"], tmp_path)
    resolve_precision(cfg)  # nn.GRU runs under bf16 autocast anywhere, if slowly
    assert cfg.trainer.precision == "bf16-mixed"


def test_native_bf16_is_read_from_the_cpu():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags to compare with")
    assert runtime.native_cpu_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_checkpoint_is_plain_data_and_round_trips(trained):
    objects = trained["objects"]
    for path in (objects["best_ckpt"], objects["last_ckpt"]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["tokenizer"]["vocab"] == objects["datamodule"].tokenizer.vocab
    loaded = load_model(objects["best_ckpt"], device="cpu")
    assert loaded.tokenizer.vocab == objects["datamodule"].tokenizer.vocab
    x = torch.randint(0, loaded.net.vocab_size, (2, 10))
    net = objects["model"].net.eval().cpu()
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x)[0], net(x)[0])


def test_run_dir_holds_checkpoints_samples_and_logs(trained):
    out = trained["dir"]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "=== step 40 temperature 0.5 ===" in (out / "samples.txt").read_text()
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()


def test_same_seed_same_losses(tmp_path, corpus_file):
    runs = []
    for name in ("a", "b"):
        cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.max_steps=10", "trainer.val_check_interval=10",
                                       "test=false", "callbacks.sample_text=null"], tmp_path / name)
        runs.append(train(cfg)[0])
    assert runs[0]["train/loss"] == runs[1]["train/loss"]
    assert runs[0]["val/loss"] == runs[1]["val/loss"]


def config_choices() -> list[tuple[str, str]]:
    return [
        (group.name, option.stem)
        for group in sorted(Path(CONF_DIR).iterdir()) if group.is_dir() and group.name not in ("hydra",)
        for option in sorted(group.glob("*.yaml"))
    ]


class ReachedFit(Exception):
    """Raised by a stand-in for ``Trainer.fit``: everything a run needs was built."""


@pytest.mark.parametrize("group, option", config_choices())
def test_every_config_option_starts_a_run(tmp_path, monkeypatch, group, option, corpus_file):
    """Each option of each group composes into a run whose checks pass and whose data,
    model, callbacks, loggers and Trainer are built and handed to ``Trainer.fit``."""
    import pytorch_lightning as pl

    def fit(trainer, model, datamodule=None, ckpt_path=None):
        raise ReachedFit(trainer, model, datamodule)

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    logger = [] if group == "logger" else ["logger=csv"]  # not the default W&B for every option
    cfg = compose_config("train", [*logger, f"{group}={option}", f"data.path={corpus_file}"], tmp_path)
    if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="pytorch_lightning.Trainer refused the trainer settings"):
            train(cfg)
        return
    try:
        with pytest.raises(ReachedFit) as reached:
            train(cfg)
    finally:
        if option == "wandb":  # its offline run, and the wandb-core process it started, end here
            import wandb

            wandb.finish()
            wandb.teardown()
    trainer, model, datamodule = reached.value.args
    assert model.net.vocab_size == datamodule.vocab_size == len(datamodule.tokenizer.vocab)
    assert trainer.max_steps == cfg.trainer.max_steps and model.hparams.cell == cfg.model.cell


@pytest.mark.slow
def test_train_cli_smoke(tmp_path, corpus_file):
    result = run_cli("train.py", *TINY, f"data.path={corpus_file}", "logger=wandb", f"hydra.run.dir={tmp_path}/run",
                     "trainer.max_steps=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for expected in ("val: loss", "perplexity", "bits/char", "best checkpoint:", "wandb sync", "temperature 0.8"):
        assert expected in out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_train_cli_bad_corpus_is_one_line(tmp_path):
    result = run_cli("train.py", f"data.path={tmp_path}/nope.txt", "logger=csv", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: corpus path {tmp_path}/nope.txt does not exist; pass data.path=<a UTF-8 file or a directory>"
    assert "Traceback" not in result.stderr


def read_in_order(net: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Mean NLL of every token of ``tokens`` after the first, predicted from everything
    before it: one forward pass over the whole split, the state carried throughout."""
    ids = tokens.long()
    with torch.no_grad():
        logits, _ = net.eval()(ids[None])
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[1:]))


def test_stateful_evaluation_is_logged_next_to_per_window(tmp_path, corpus_file, trained):
    """loss_stateful: the split read in order from its first token to its last, with the state
    carried, by the weights the per-window figures are of (the best checkpoint). One lane
    reads it exactly so; the default lanes read parts of it side by side, close to that."""
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "model.stateful_eval_lanes=1",
                                   "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    for split in ("val", "test"):
        loss = read_in_order(objects["model"].net, objects["datamodule"].tokens[split])
        assert metrics[f"{split}/loss_stateful"] == pytest.approx(loss, rel=1e-5)
        assert metrics[f"{split}/bpc_stateful"] == pytest.approx(loss / math.log(2), rel=1e-5)  # a token is a char
        assert math.isfinite(metrics[f"{split}/loss"])  # per window, each from a zero state: logged beside it
        default = read_in_order(trained["objects"]["model"].net, trained["objects"]["datamodule"].tokens[split])
        assert trained["metrics"][f"{split}/loss_stateful"] == pytest.approx(default, rel=0.01)


def test_stateful_evaluation_scores_the_averaged_weights(tmp_path, corpus_file):
    # decay=1 keeps the average at the weights after the first step, far behind the trained ones:
    # validation, the test after fitting and the checkpoint must all hold that average.
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "model.optimizer.lr=0.01", "test=true",
                                   "callbacks=ema", "callbacks.sample_text=null", "callbacks.ema.decay=1.0"], tmp_path)
    metrics, objects = train(cfg)
    assert metrics["train/loss"] < metrics["val/loss"] - 0.5, metrics
    assert metrics["val/loss_stateful"] == pytest.approx(metrics["val/loss"], abs=0.1)
    assert metrics["test/loss_stateful"] == pytest.approx(metrics["val/loss_stateful"], abs=0.2)
    ckpt = torch.load(objects["last_ckpt"], weights_only=True)
    assert "current_model_state" in ckpt  # the averaged weights are the ones sampled from


def test_averaged_weights_keep_the_fitted_logit_scale(tmp_path, corpus_file):
    # The EMA averages buffers too; a checkpoint taken 5 steps after a validation must still
    # hold the scale that validation fitted.
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "data.calibration=0.05", "test=false",
                                   "callbacks=ema", "callbacks.ema.decay=0.9", "callbacks.sample_text=null",
                                   "callbacks.periodic_checkpoint.every_n_train_steps=25"], tmp_path)
    _, objects = train(cfg)
    order = [type(c).__name__ for c in objects["trainer"].callbacks]
    assert order.index("Calibrate") == order.index("EMAWeightAveraging") + 1  # fits on the swapped-in average
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    fitted = next(float(r["calibration/logit_scale"]) for r in rows if r.get("calibration/logit_scale") and r["step"] == "19")
    # Lightning's ThroughputMonitor counts windows and tokens with our batch functions
    counted = [r for r in rows if r.get("train/lengths")]
    assert counted and all(float(r["train/samples"]) == 16 * float(r["train/batches"]) for r in counted)
    assert all(float(r["train/lengths"]) == 32 * float(r["train/samples"]) for r in counted)
    assert [float(r["train/time"]) for r in counted] == sorted(float(r["train/time"]) for r in counted)
    assert not [name for name in rows[0] if name.startswith(("validate/", "test/time"))]  # training throughput only
    ckpt = torch.load(tmp_path / "checkpoints" / "last-step000025.ckpt", weights_only=True)
    assert fitted != pytest.approx(1.0, abs=0.05)
    assert float(ckpt["state_dict"]["net.logit_scale"]) == pytest.approx(fitted)


def test_a_held_out_slice_is_fitted_on_without_the_default_callbacks(tmp_path, corpus_file):
    tiny = [o for o in TINY if not o.startswith("callbacks.")]
    cfg = compose_config("train", [*tiny, f"data.path={corpus_file}", "data.calibration=0.05", "test=false", "callbacks=none",
                                   "trainer.max_steps=10", "trainer.val_check_interval=10"], tmp_path)
    metrics, _ = train(cfg)
    assert metrics["calibration/logit_scale"] != 1.0


def test_calibration_fits_the_logit_scale_the_checkpoint_keeps(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "data.calibration=0.05", "test=false",
                                   "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    scale = metrics["calibration/logit_scale"]
    assert scale != 1.0 and metrics["calibration/loss"] <= metrics["calibration/loss_raw"]
    assert load_model(objects["best_ckpt"], device="cpu").net.logit_scale.item() == pytest.approx(scale)


@pytest.mark.parametrize("order", ["lanes", "shuffle"])
def test_lanes_training_carries_the_state(tmp_path, corpus_file, monkeypatch, order):
    """With lanes each training batch starts from the state the previous one ended in;
    shuffled windows always start from zero."""
    from rnnlm.models import RNNLM

    calls = []
    loss = RNNLM.loss  # training's forward pass

    def recording(self, tokens, targets, state=None):
        value, new_state = loss(self, tokens, targets, state)
        calls.append((state, new_state))
        return value, new_state

    monkeypatch.setattr(RNNLM, "loss", recording)
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", f"data.order={order}", "test=false", "trainer.max_steps=8",
                                   "trainer.val_check_interval=8", "callbacks.sample_text=null"], tmp_path)
    train(cfg)
    assert len(calls) == 8 and calls[0][0] is None
    for (passed, _), (_, previous) in zip(calls[1:], calls[:-1]):
        if order == "shuffle":
            assert passed is None
        else:
            for given, ended in zip(passed, previous):  # (h, c) of the LSTM
                torch.testing.assert_close(given, ended.detach())


@pytest.mark.slow
def test_compile_path_trains_on_cpu(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "model.compile=true", "trainer.max_steps=6",
                                   "trainer.val_check_interval=3", "test=false", "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    ckpt = torch.load(objects["last_ckpt"], weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # loads without torch.compile


def test_last_step_is_validated_and_checkpointed(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.max_steps=25", "trainer.val_check_interval=10",
                                   "test=false", "callbacks.sample_text=null"], tmp_path)
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 25
    ckpt = torch.load(objects["last_ckpt"], weights_only=True)
    assert ckpt["global_step"] == 25  # last.ckpt follows the validation at the final step


@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.skipif(
    not runtime.native_cpu_bf16(), reason="oneDNN has no bf16 LSTM for a CPU without native bf16")), "gru"])
def test_bf16_mixed_trains_on_cpu_and_checkpoints_fp32(tmp_path, corpus_file, cell):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", f"model.cell={cell}", "trainer.precision=bf16-mixed", "model.optimizer.lr=0.01",
                                   "trainer.max_steps=40", "trainer.val_check_interval=40", "test=false",
                                   "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert metrics["val/loss"] < unigram_entropy(dm.tokens["train"])
    ckpt = torch.load(objects["last_ckpt"], weights_only=True)
    assert all(t.dtype == torch.float32 for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_a_run_without_a_logger_trains(tmp_path, corpus_file):
    """The default callbacks include a LearningRateMonitor, which Lightning refuses without a logger."""
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
                                   "test=false", "callbacks.sample_text=null"], tmp_path)
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 2 and (tmp_path / "metrics.json").is_file()


def corpus_with_unknowns() -> str:
    """Text with what tokenizers get wrong when counting characters: a literal "<unk>" (as
    WikiText writes it) and other special-token look-alikes, and words and characters seen
    only late (in the val/test splits), each of its own length."""
    lines = []
    for i in range(400):
        rare = f" zq{'x' * (i % 7)}{i}w" if i > 300 else ""  # new words, never in the train split
        accent = " café señor" if i > 370 else ""  # characters the train split (lines < 369) lacks
        lines.append(f"The <unk> of line {i % 13} met <|endoftext|> and <s>{rare}{accent}, said {['ROMEO', 'JULIET'][i % 2]}.")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
def test_bits_per_character_count_the_text_as_written(tmp_path, tokenizer):
    """*/bpc divides the model's bits by the characters of the text it scored as written:
    each <unk> counts the characters it replaced, text that looks like a special token is
    text; bpt is per token."""
    text = corpus_with_unknowns()
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    extra = {"char": [], "word": ["data.max_vocab=60"], "bpe": ["data.vocab_size=300"]}[tokenizer]
    cfg = compose_config("train", [*TINY, f"data.path={tmp_path / 'corpus.txt'}", f"data.tokenizer={tokenizer}", *extra,
                                   "data.seq_len=8", "trainer.max_steps=10", "test=false", "callbacks.sample_text=null",
                                   "model.stateful_eval_lanes=1", "data.cache_dir=null", "trainer.limit_val_batches=1.0"], tmp_path / "run")
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    read = text.strip("\n")  # as the corpus reader gives a document
    val_text = read[int(len(read) * 0.9) : int(len(read) * 0.95)]  # the split's characters (data.splits)
    ids, chars = dm.tokenizer.encode_with_chars(val_text)
    assert np.array_equal(ids, dm.tokens["val"].numpy()) and chars.sum() == len(val_text)
    if tokenizer != "bpe":
        assert (ids == 0).sum() > 5  # the case at hand: <unk> of several lengths
    else:
        assert (ids == 0).sum() == 0 and "<unk>" in dm.tokenizer.decode(ids)  # the text "<unk>" is text
    nll_sum, _, count, _ = score_totals(objects["model"].net, dm.tokens["val"], 1, chunk=256)
    assert count == len(ids) - 1
    assert metrics["val/bpc_stateful"] == pytest.approx(nll_sum / math.log(2) / (len(val_text) - chars[0]), rel=1e-4)
    assert metrics["val/bpt_stateful"] == pytest.approx(nll_sum / count / math.log(2), rel=1e-4)
    windows = (len(ids) - 1) // 8  # val windows tile the split: the per-window figures' characters
    assert metrics["val/bpt"] / metrics["val/bpc"] == pytest.approx(chars[1 : 1 + windows * 8].sum() / (windows * 8), rel=1e-4)
    # sample.py mode=score counts the same characters: the text's own, less the unscored first token's.
    from rnnlm.sampling.sample import sample

    (tmp_path / "val.txt").write_text(val_text, encoding="utf-8")
    scored, _ = sample(compose_config("sample", [f"ckpt={objects['last_ckpt']}", "mode=score", f"text_file={tmp_path / 'val.txt'}"],
                                      tmp_path / "score"))
    assert scored["score/bpt"] * scored["score/tokens"] / scored["score/bpc"] == pytest.approx(len(val_text) - chars[0], rel=1e-6)


def test_a_bpe_model_trains_checkpoints_as_plain_data_and_samples_any_text(tmp_path, corpus_file):
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "data.tokenizer=bpe", "data.vocab_size=300",
                                   "trainer.max_steps=10", "test=false", "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert dm.vocab_size == 300 and dm.stats["val_unk"] == 0 and int((dm.tokens["train"] == 0).sum()) == 0
    assert metrics["val/bpt"] / metrics["val/bpc"] > 1.2  # a token stands for more than one character
    tokens, lengths = dm.tokens["val"], torch.tensor(dm.tokenizer.char_lengths())
    lanes = min(cfg.model.stateful_eval_lanes, (len(tokens) - 1) // 2)
    nll_sum, _, count, chars = score_totals(objects["model"].net, tokens, lanes, chunk=256, char_lengths=lengths)
    assert chars == pytest.approx(float(lengths[tokens[1 : 1 + count].long()].sum()), rel=1e-6)
    assert metrics["val/bpc_stateful"] == pytest.approx(nll_sum / chars / math.log(2), rel=1e-4)
    ckpt = torch.load(objects["last_ckpt"], weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["tokenizer"]["kind"] == "bpe"
    loaded = load_model(objects["last_ckpt"], "cpu")
    from rnnlm.generation import DecodeSettings, generate
    from rnnlm.generation.prompt import encode_prompt

    ids = encode_prompt(loaded.tokenizer, "ROMEO: 你好")  # never seen: bytes, no <unk>
    assert loaded.tokenizer.decode(ids) == "ROMEO: 你好"
    out = generate(loaded.net, ids, 20, 2, DecodeSettings(temperature=0.8), seed=0)
    for tokens in out.tokens:
        assert len(tokens) == 20
        text = loaded.tokenizer.decode([*ids, *tokens])
        assert text.startswith("ROMEO: 你好") and len(text) > len("ROMEO: 你好")
        # What sample.py streams token by token (a character may span tokens) is that text;
        # only the bytes of a character the sample cut short are held back.
        piece = loaded.tokenizer.streamer()
        streamed = "".join(piece(t) for t in [*ids, *tokens])
        assert text.startswith(streamed) and set(text[len(streamed):]) <= {"\ufffd"}, (text, streamed)
    # stop= ends a stream once its text holds the string, inside a merged token too, cut there.
    from rnnlm.sampling.sample import sample

    for strategy in ("sample", "beam"):
        _, found = sample(compose_config("sample", [f"ckpt={objects['last_ckpt']}", "stop=e", "prompt=The", "length=200",
                                                    f"strategy={strategy}", "num_samples=2", "stream=false", "seed=1"],
                                         tmp_path / strategy))
        for i, record in enumerate(found["record"]["samples"]):
            new = record["text"][len("The"):]
            assert new.endswith("e") and "e" not in new[:-1] and record["new_tokens"] < 200, new
            assert (tmp_path / strategy / f"sample_{i}.txt").read_text(encoding="utf-8") == record["text"]


def test_vocabulary_settings_are_refused_for_the_wrong_tokenizer():
    from rnnlm.data import CorpusDataModule

    with pytest.raises(ConfigError, match="data.max_vocab=500 does not apply to data.tokenizer=bpe; .* data.vocab_size=500"):
        CorpusDataModule(tokenizer="bpe", max_vocab=500)
    with pytest.raises(ConfigError, match="data.vocab_size=500 is the size data.tokenizer=bpe learns; .*data.max_vocab=500"):
        CorpusDataModule(tokenizer="word", vocab_size=500)
    with pytest.raises(ConfigError, match="data.vocab_size=100 is not allowed: it must be an integer >= 257"):
        CorpusDataModule(tokenizer="bpe", vocab_size=100)


def test_an_adaptive_word_model_trains_calibrates_scores_and_decodes_every_way(tmp_path, corpus_file, caplog):
    """output=adaptive: training's loss, val/stateful scoring, calibration, the checkpoint
    (loaded weights_only), sampling, beam search and score mode."""
    from rnnlm.generation import DecodeSettings, generate
    from rnnlm.sampling.sample import sample

    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "data.tokenizer=word", "data.max_vocab=400",
                                   "model.output=adaptive", "data.calibration=0.05", "trainer.max_steps=12", "test=false",
                                   "callbacks.sample_text=null"], tmp_path)
    metrics, objects = train(cfg)
    model, dm = objects["model"], objects["datamodule"]
    assert model.net.adaptive is not None and model.net.decoder is None
    cutoffs = model.hparams.adaptive_cutoffs
    assert cutoffs == model.net.adaptive.cutoffs[:-1] and 0 < cutoffs[0] < 400  # chosen from the train split's counts
    assert math.isfinite(metrics["val/bpc"]) and math.isfinite(metrics["val/bpc_stateful"])
    assert metrics["calibration/logit_scale"] != 1.0  # fitted on the adaptive log-probabilities
    ckpt = torch.load(objects["last_ckpt"], weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["output"] == "adaptive" and ckpt["hyper_parameters"]["adaptive_cutoffs"] == cutoffs
    loaded = load_model(objects["last_ckpt"], "cpu")
    tokens = dm.tokens["val"]
    lanes = min(cfg.model.stateful_eval_lanes, (len(tokens) - 1) // 2)
    nll_sum, _, count, _ = score_totals(loaded.net, tokens, lanes, chunk=256)
    assert metrics["val/loss_stateful"] == pytest.approx(nll_sum / count, rel=1e-4)  # the checkpoint scores as trained
    ids = torch.from_numpy(loaded.tokenizer.encode(" the").astype("int64")).tolist()
    for settings in (DecodeSettings("greedy"), DecodeSettings(temperature=0.8, top_k=20), DecodeSettings(top_p=0.9),
                     DecodeSettings("beam", beam_width=3)):
        out = generate(loaded.net, ids, 8, 1, settings, seed=0)
        assert len(out.tokens[0]) == 8 and all(0 <= t < 400 for t in out.tokens[0]), settings
    with caplog.at_level("WARNING"):  # a word the vocabulary lacks: <unk>, and a warning naming it
        _, result = sample(compose_config("sample", [f"ckpt={objects['last_ckpt']}", "prompt='ROMEO zyzzyva'", "length=6",
                                                     "stream=false"], tmp_path / "s"))
    assert "' zyzzyva'" in caplog.text and "mapped to <unk>" in caplog.text
    assert result["record"]["samples"][0]["new_tokens"] == 6
    (tmp_path / "t.txt").write_text(corpus_file.read_text()[-2000:])
    scored, _ = sample(compose_config("sample", [f"ckpt={objects['last_ckpt']}", "mode=score", f"text_file={tmp_path / 't.txt'}"],
                                      tmp_path / "score"))
    assert math.isfinite(scored["score/bpc"]) and scored["score/bpt"] > scored["score/bpc"]


def test_an_error_on_rank_zero_ends_the_ranks_it_launched(monkeypatch):
    """Through the launcher's public kill(): what Lightning's DDP launcher offers for it."""
    import signal

    import pytorch_lightning as pl

    from rnnlm.training.train import stop_launched_ranks

    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    launcher = trainer.strategy.launcher
    assert list(inspect.signature(launcher.kill).parameters) == ["signum"]
    killed = []
    monkeypatch.setattr(launcher, "kill", killed.append)
    stop_launched_ranks(trainer)
    assert killed == [signal.SIGKILL]


def test_a_small_corpus_is_validated_every_two_passes_and_stops_when_it_no_longer_improves(tmp_path, corpus_text):
    (tmp_path / "small.txt").write_text(corpus_text[:12_000], encoding="utf-8")  # ~10,800 train tokens
    cfg = compose_config("train", [*TINY, f"data.path={tmp_path / 'small.txt'}", "data.seq_len=32", "data.batch_size=16",
                                   "trainer.max_steps=200", "trainer.val_check_interval=100", "test=false",
                                   "callbacks.sample_text=null", "callbacks.early_stopping.patience=1",
                                   "callbacks.early_stopping.min_delta=10"], tmp_path / "run")
    metrics, objects = train(cfg)
    trainer, dm = objects["trainer"], objects["datamodule"]
    per_pass = len(dm.datasets["train"]) // 16
    assert trainer.val_check_interval == 2 * per_pass < 100  # two passes, not the 100 steps asked for
    # The first validation sets the best; the second does not beat it by 10 bits: stopped there.
    assert trainer.global_step == 4 * per_pass and metrics["train/passes"] == pytest.approx(4.0)
    assert f"trained {trainer.global_step:,} steps: 4.0 passes over the train split" in summary(metrics, objects)


def test_the_sample_prompt_the_vocabulary_lacks_starts_a_document_without_warnings(caplog):
    from rnnlm.data.tokenizers import WordTokenizer
    from rnnlm.models.network import RNNLM
    from rnnlm.training.callbacks import sample_texts

    tokenizer = WordTokenizer.fit("a b c. " * 50)  # no newline: "\n" is no token
    assert tokenizer.unknown("\n")
    net = RNNLM(len(tokenizer), "gru", hidden_size=8, num_layers=1, embedding_dim=4)
    with caplog.at_level(logging.WARNING):
        samples = sample_texts(net, tokenizer, [0.5, 1.0], 5, prompt="\n")
    assert len(samples) == 2 and not caplog.records


def test_a_resumed_run_keeps_the_patience_it_asks_for():
    from rnnlm.training.callbacks import EarlyStopping

    stopper = EarlyStopping(monitor="val/bpc", patience=10)
    stopper.load_state_dict({"wait_count": 3, "stopped_epoch": 0, "best_score": torch.tensor(2.0), "patience": 3})
    assert stopper.patience == 10 and stopper.wait_count == 3


@pytest.mark.parametrize("timings, expected", [
    ({"bf16-mixed": 0.010, "16-mixed": 0.012, "32-true": 0.020}, "bf16-mixed"),
    ({"bf16-mixed": 0.0105, "16-mixed": 0.010, "32-true": 0.020}, "bf16-mixed"),  # within the noise margin: no loss scaling
    ({"bf16-mixed": 0.015, "16-mixed": 0.012, "32-true": 0.020}, "16-mixed"),  # bf16 on a slow path
    ({"bf16-mixed": "RuntimeError: cuDNN error", "16-mixed": 0.012, "32-true": 0.020}, "16-mixed"),
    ({"bf16-mixed": 0.030, "16-mixed": 0.025, "32-true": 0.020}, "32-true"),  # never slower than fp32
    ({"bf16-mixed": "RuntimeError: x", "16-mixed": "RuntimeError: y", "32-true": "RuntimeError: z"}, "32-true"),
])
def test_auto_precision_on_a_gpu_is_the_fastest_that_ran(tmp_path, monkeypatch, caplog, timings, expected):
    """On CUDA, trainer.precision=auto times one step of the configured network at the run's
    batch (in a child process) per precision and uses the fastest that ran, a later one only if
    10% faster; the log line says what it measured."""
    asked = []
    monkeypatch.setenv(train_module.PRECISION_ENV, "")  # restored after the test: auto sets it for launched ranks
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda value: None)
    monkeypatch.setattr(runtime, "probe_precisions", lambda *args, **kwargs: asked.append((args, kwargs)) or dict(timings))
    cfg = compose_config("train", ["trainer.precision=auto", "trainer.accelerator=gpu", "model.cell=gru",
                                   "model.hidden_size=24", "model.num_layers=3", "data.batch_size=8"], tmp_path)
    with caplog.at_level(logging.INFO, logger="rnnlm.training.train"):
        resolve_precision(cfg, vocab_size=9000)
    assert cfg.trainer.precision == expected
    (network, precisions), kwargs = asked[0]
    assert precisions == runtime.CUDA_PRECISIONS and kwargs == {"batch_size": 8, "seq_len": 256}
    assert network == {"vocab_size": 9000, "cell": "gru", "hidden_size": 24, "num_layers": 3, "embedding_dim": 64,
                       "output": "adaptive", "tie_weights": False}  # the run's network, output layer included
    line = next(r.getMessage() for r in caplog.records if "trainer.precision=auto" in r.getMessage())
    assert expected in line and ("failed" in line) == any(isinstance(t, str) for t in timings.values())
    assert os.environ[train_module.PRECISION_ENV] == expected  # what Lightning's launched ranks inherit


def test_auto_precision_on_a_gpu_is_the_resumed_runs_and_rank_zeros(tmp_path, monkeypatch):
    """A resumed run keeps the precision its checkpoint was trained in, and a rank Lightning
    launched takes rank 0's: neither probes, so a timing cannot make them differ."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda value: None)
    monkeypatch.setattr(runtime, "probe_precisions", lambda *args, **kwargs: pytest.fail("probed"))
    cfg = compose_config("train", ["trainer.precision=auto", "trainer.accelerator=gpu"], tmp_path)
    monkeypatch.setenv(train_module.PRECISION_ENV, "")
    resolve_precision(cfg, resumed="16-mixed")
    assert cfg.trainer.precision == "16-mixed"
    monkeypatch.setenv(train_module.PRECISION_ENV, "bf16-mixed")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = compose_config("train", ["trainer.precision=auto", "trainer.accelerator=gpu"], tmp_path)
    resolve_precision(cfg, resumed="16-mixed")
    assert cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16", "16-mixed", "16"])
def test_an_explicit_gpu_precision_that_fails_its_probe_is_one_line(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda value: None)
    monkeypatch.setattr(runtime, "probe_precisions",
                        lambda network, precisions, **kw: {p: "RuntimeError: no bf16 LSTM kernel" for p in precisions})
    cfg = compose_config("train", [f"trainer.precision={precision}", "trainer.accelerator=gpu"], tmp_path)
    with pytest.raises(ConfigError, match=rf"^trainer.precision={precision} fails on this GPU for a LSTM "
                                          r"\(RuntimeError: no bf16 LSTM kernel\); use trainer.precision=auto"):
        resolve_precision(cfg)
    monkeypatch.setattr(runtime, "probe_precisions", lambda network, precisions, **kw: {p: 0.01 for p in precisions})
    resolve_precision(cfg)  # one that runs is honoured
    assert str(cfg.trainer.precision) == precision


def test_the_precision_probe_times_a_real_step_in_a_child_and_reports_failures():
    network = {"vocab_size": 20, "cell": "lstm", "hidden_size": 8, "num_layers": 1, "embedding_dim": 8}
    timings = runtime.probe_precisions(network, ["32-true"], device="cpu", batch_size=4, seq_len=8)
    assert isinstance(timings["32-true"], float) and 0 < timings["32-true"] < 60
    failed = runtime.probe_precisions(network, ["32-true", "16-mixed"], device="nonexistent")
    assert all(isinstance(reason, str) and reason.startswith("RuntimeError") for reason in failed.values()), failed


def test_a_checkpoint_records_the_precision_it_was_trained_in(tmp_path, trained):
    ckpt = torch.load(trained["objects"]["last_ckpt"], weights_only=True)
    assert ckpt["rnnlm_precision"] == "32-true"


def test_the_small_corpus_preset_ties_its_matrices_and_cuts_its_rate_on_plateaus(tmp_path, corpus_file):
    from rnnlm.models.schedules import WarmupPlateau

    cfg = compose_config("train", [*TINY, "experiment=words_small", f"data.path={corpus_file}", "model.embedding_dim=${model.hidden_size}",
                                   "trainer.max_steps=20", "trainer.val_check_interval=10", "callbacks.sample_text=null",
                                   "test=false"], tmp_path)
    metrics, objects = train(cfg)
    net = objects["model"].net
    assert net.decoder.weight is net.embedding.weight and net.adaptive is None
    assert isinstance(objects["trainer"].lr_scheduler_configs[0].scheduler, WarmupPlateau)
    assert objects["trainer"].optimizers[0].param_groups[0]["weight_decay"] == 0.1
    assert math.isfinite(metrics["val/bpc"])
