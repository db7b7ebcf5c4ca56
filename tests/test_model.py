import math

import pytest
import torch

from rnnlm.models import RNNLM
from rnnlm.utils.errors import ConfigError


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding_dim", [8, None])
def test_forward_shapes_and_state(cell, embedding_dim):
    net = RNNLM(11, cell, hidden_size=12, num_layers=2, embedding_dim=embedding_dim)
    tokens = torch.randint(0, 11, (3, 5))
    logits, state = net(tokens)
    assert logits.shape == (3, 5, 11)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2, 3, 12)
    # the state carries: feeding the halves in turn equals feeding the whole
    first, state = net(tokens[:, :2])
    second, _ = net(tokens[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_tied_weights_share_one_matrix():
    net = RNNLM(20, "gru", hidden_size=16, num_layers=1, embedding_dim=16, tie_weights=True)
    assert net.decoder.weight is net.embedding.weight
    with pytest.raises(ConfigError, match="tie_weights=true needs model.embedding_dim"):
        RNNLM(20, hidden_size=16, embedding_dim=8, tie_weights=True)


def test_input_dropout_acts_on_the_first_layer_input_in_training_only():
    net = RNNLM(11, "lstm", hidden_size=12, num_layers=1, embedding_dim=8, input_dropout=0.5)
    seen = []
    net.rnn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    tokens = torch.randint(0, 11, (3, 7))
    net.train()(tokens)
    assert (seen[-1] == 0).float().mean() > 0.25  # about half the inputs dropped...
    net.eval()(tokens)
    torch.testing.assert_close(seen[-1], net.embedding(tokens))  # ...and none in eval mode


def test_embedding_dropout_drops_whole_words_in_training_only():
    torch.manual_seed(0)
    net = RNNLM(11, "lstm", hidden_size=12, num_layers=1, embedding_dim=8, embedding_dropout=0.5)
    seen = []
    net.rnn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    tokens = torch.tensor([[3, 3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 9]] * 4)
    net.train()(tokens)
    dropped = (seen[-1] == 0).all(-1)  # a dropped word is a zero row
    assert 0 < dropped.float().mean() < 1
    for word in (3, 5, 7, 9):  # every occurrence of a word is kept or dropped together
        assert dropped[tokens == word].unique().numel() == 1
    kept = ~dropped
    torch.testing.assert_close(seen[-1][kept], 2 * net.embedding(tokens)[kept])  # scaled by 1 / (1 - p)
    net.eval()(tokens)
    torch.testing.assert_close(seen[-1], net.embedding(tokens))


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # the GRU runs rnnlm.fastpaths.gru in fp32 on the CPU
def test_weight_drop_masks_the_recurrent_weights_for_a_batch_and_trains_them(cell):
    torch.manual_seed(0)
    net = RNNLM(11, cell, hidden_size=12, num_layers=2, embedding_dim=8, weight_drop=0.5)
    plain = RNNLM(11, cell, hidden_size=12, num_layers=2, embedding_dim=8)
    plain.load_state_dict(net.state_dict())
    tokens = torch.randint(0, 11, (3, 7))
    trained, _ = net.train()(tokens)
    assert (trained - plain.train()(tokens)[0]).abs().max() > 1e-3  # the recurrence saw other weights
    trained.sum().backward()
    for layer in range(2):
        grad = getattr(net.rnn, f"weight_hh_l{layer}").grad
        assert grad is not None and 0 < (grad == 0).float().mean() < 1  # dropped entries get no gradient
        assert (getattr(net.rnn, f"weight_ih_l{layer}").grad != 0).all()  # only hidden-to-hidden weights drop
    before = net.rnn.weight_hh_l0.detach().clone()
    torch.testing.assert_close(net.eval()(tokens)[0], plain.eval()(tokens)[0])  # evaluation: all weights
    torch.testing.assert_close(net.rnn.weight_hh_l0, before)  # the parameter itself is never masked


def test_embedding_dropout_needs_an_embedding():
    with pytest.raises(ConfigError, match="embedding_dropout needs a learned embedding"):
        RNNLM(11, "lstm", hidden_size=12, embedding_dim=None, embedding_dropout=0.1)


def test_logit_scale_applies_outside_training_and_is_saved():
    net = RNNLM(11, "lstm", hidden_size=12, num_layers=1, embedding_dim=8)
    tokens = torch.randint(0, 11, (2, 5))
    raw = net.eval()(tokens)[0]
    net.logit_scale.fill_(0.5)
    torch.testing.assert_close(net(tokens)[0], 0.5 * raw)
    torch.testing.assert_close(net.train()(tokens)[0], raw)  # training fits the raw logits
    state = net.state_dict()
    assert state["logit_scale"] == 0.5
    del state["logit_scale"]  # a checkpoint from before calibration existed
    fresh = RNNLM(11, "lstm", hidden_size=12, num_layers=1, embedding_dim=8)
    fresh.load_state_dict(state)
    assert fresh.logit_scale.item() == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cell": "transformer"}, r"model.cell='transformer' is not allowed: it must be one of lstm, gru, rnn"),
        ({"hidden_size": "abc"}, r"model.hidden_size='abc' is not allowed: it must be an integer >= 1 and <= 16384"),
        ({"num_layers": 0}, r"model.num_layers=0"),
        ({"hidden_size": 10**11}, r"model.hidden_size=100000000000 is not allowed: it must be an integer >= 1 and <= 16384"),
        ({"embedding_dim": 10**20}, r"model.embedding_dim=100000000000000000000 is not allowed"),
        ({"dropout": 1.5}, r"model.dropout=1.5"),
        ({"input_dropout": -0.1}, r"model.input_dropout=-0.1 is not allowed: it must be a finite number >= 0 and < 1"),
        ({"embedding_dim": None, "onehot_max_vocab": 10}, r"one-hot input with a vocabulary of 50 .* set model.embedding_dim"),
    ],
)
def test_bad_model_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RNNLM(50, **kwargs)


def test_memory_report_counts_the_input_matrix():
    onehot = RNNLM(30, "lstm", hidden_size=8, num_layers=1, embedding_dim=None).memory_report()
    assert onehot["params_input"] == 30 * 4 * 8
    emb = RNNLM(30, "lstm", hidden_size=8, num_layers=1, embedding_dim=5).memory_report()
    assert emb["params_input"] == 30 * 5


def test_warmup_cosine_schedule():
    from rnnlm.models.schedules import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, min_ratio=0.1)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    import math

    def closed_form(step: int) -> float:  # the curve, written out
        if step < 10:
            return (step + 1) / 10
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((step - 10) / 100, 1.0)))

    assert lrs == pytest.approx([closed_form(step) for step in range(120)], abs=1e-12)


def test_a_schedule_resumed_with_more_steps_decays_to_the_new_end():
    """What the closed form has over torch's SequentialLR, which saves its milestones and T_max."""
    import math

    from rnnlm.models.schedules import warmup_cosine

    def run(total_steps: int, steps: int, state=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine(opt, total_steps=total_steps, warmup_steps=4, min_ratio=0.1)
        if state is not None:
            sched.load_state_dict(state)
        for _ in range(steps):
            opt.step()
            sched.step()
        return opt.param_groups[0]["lr"], sched.state_dict()

    _, state = run(40, 20)
    lr, _ = run(80, 1, state)  # step 21 of an 80-step run
    assert lr == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (21 - 4) / 76)))


def test_network_settings_are_declared_once_in_rnnlm():
    """LanguageModel passes every network setting through to RNNLM and stores them all (the
    defaults too) as flat plain hyper-parameters; the model config sets each of them."""
    import functools
    import inspect

    from omegaconf import OmegaConf

    from rnnlm.models import LanguageModel
    from tests.conftest import CONF_DIR

    declared = set(inspect.signature(RNNLM).parameters) - {"vocab_size"}
    tokenizer = {"kind": "char", "vocab": ["<unk>", *"abcdefghijklmnopqrs"]}
    model = LanguageModel(vocab_size=20, tokenizer=tokenizer, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                          hidden_size=12, num_layers=1, input_dropout=0.25)
    assert declared <= set(model.hparams)
    assert model.hparams["input_dropout"] == 0.25 and model.net.input_dropout.p == 0.25
    assert model.hparams["embedding_dim"] == 64  # RNNLM's default, stored
    assert set(LanguageModel.architecture(model.hparams)) == declared | {"vocab_size"}
    assert declared <= set(OmegaConf.load(f"{CONF_DIR}/model/lstm.yaml"))
    with pytest.raises(ConfigError, match="model.hiden_size is not a setting of the model; it has cell, hidden_size"):
        LanguageModel(vocab_size=20, tokenizer={}, optimizer=functools.partial(torch.optim.SGD, lr=0.1), hiden_size=3)


def test_the_optimiser_comes_from_the_config_only():
    from rnnlm.models import LanguageModel

    with pytest.raises(ConfigError, match="model.optimizer is null"):
        LanguageModel(vocab_size=20, tokenizer={}, optimizer=None)


def test_compile_leaves_the_recurrent_stack_eager_and_copies_run_on_their_own_weights(monkeypatch):
    """model.compile=true compiles the layers around nn.LSTM, never through it (dynamo would
    meet the LSTM and break the graph there); a deep copy (an EMA's average) uses its own weights."""
    import copy
    import functools

    from torch._dynamo.utils import counters

    from rnnlm.models.network import RNNLM

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # traced, not built
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = RNNLM(50, "lstm", hidden_size=16, num_layers=1, embedding_dim=8)
    tokens, targets = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 7))
    eager_loss = net.loss(tokens, targets)[0].item()
    net.compile_around_recurrence()
    assert net.loss(tokens, targets)[0].item() == pytest.approx(eager_loss, abs=1e-6)
    assert net(tokens)[0].shape == (2, 7, 50)
    assert counters["stats"]["unique_graphs"] >= 2  # the layers around the stack were traced
    assert not counters["graph_break"], dict(counters["graph_break"])  # and the stack never was
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.zero_()
    assert twin.loss(tokens, targets)[0].item() == pytest.approx(math.log(50), abs=1e-5)  # uniform: its own zeros
    assert net.loss(tokens, targets)[0].item() == pytest.approx(eager_loss, abs=1e-6)


def test_plateau_schedule_cuts_the_rate_when_validation_stalls_and_resumes_exactly():
    from rnnlm.models.schedules import WarmupPlateau

    def fresh(**kwargs):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, WarmupPlateau(opt, **kwargs)

    def validated(opt, sched, loss):  # one step, then a validation
        opt.step()
        sched.step()
        sched.observe(loss)

    opt, sched = fresh(warmup_steps=4, factor=0.25, patience=1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    validated(opt, sched, 5.0)  # the first validation is the best so far
    validated(opt, sched, 5.2)  # one without improvement: patience 1 allows it
    assert opt.param_groups[0]["lr"] == 1.0
    sched.observe(5.3)  # a second validation of the same step counts once
    assert opt.param_groups[0]["lr"] == 1.0
    validated(opt, sched, 5.1)  # the second in a row: cut at once
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25) and sched.get_last_lr() == pytest.approx([0.25])
    validated(opt, sched, 4.0)
    validated(opt, sched, 4.5)
    state = sched.state_dict()
    opt2, resumed = fresh(warmup_steps=4, factor=0.25, patience=1)
    resumed.load_state_dict(state)
    validated(opt, sched, 4.4)  # the second without improvement since 4.0, in both
    validated(opt2, resumed, 4.4)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.0625)
    _, patient = fresh(warmup_steps=4, factor=0.5, patience=3)
    patient.load_state_dict(state)  # a resume with other settings keeps them, and the progress
    assert (patient.patience, patient.factor, patient.best, patient.scale) == (3, 0.5, 4.0, 0.25)


def test_a_run_on_the_plateau_schedule_cuts_at_each_stalled_validation(tmp_path, corpus_file):
    from rnnlm.training.train import train
    from tests.conftest import TINY, compose_config

    # threshold 100 nats: after the first validation (the best so far), none counts as an
    # improvement, so each one cuts the rate.
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "model/scheduler=plateau", "model.scheduler.warmup_steps=0",
                                   "model.scheduler.threshold=100", "trainer.max_steps=30", "trainer.val_check_interval=10",
                                   "callbacks.early_stopping=null", "callbacks.sample_text=null", "test=false"], tmp_path)
    _, objects = train(cfg)
    lr = objects["trainer"].optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(cfg.model.optimizer.lr * 0.25**2)  # validations at steps 10, 20 and 30
    saved = torch.load(objects["last_ckpt"], weights_only=True)["lr_schedulers"][0]
    assert saved["scale"] == pytest.approx(0.25**2) and saved["bad_validations"] == 0
