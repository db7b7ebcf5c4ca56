"""The continuous cache: the mixture it scores, that it never sees a target before scoring it,
and its figures from train.py and sample.py mode=score."""

import functools
import json
import math

import pytest
import torch

from rnnlm.models.cache import LAMBDAS, THETAS, CacheFit, best_fit, cache_lanes, cache_totals, score_with_cache
from rnnlm.models.evaluation import score_totals
from rnnlm.models.module import LanguageModel
from rnnlm.models.network import RNNLM
from rnnlm.sampling.sample import sample
from rnnlm.training.train import summary, train
from rnnlm.utils.errors import ConfigError
from tests.conftest import TINY, compose_config
from tests.test_splits import TEST, TRAIN, VALID, write


def tiny_net(vocab: int = 11, width: int = 8) -> RNNLM:
    torch.manual_seed(0)
    net = RNNLM(vocab, hidden_size=width, num_layers=1, embedding_dim=width).eval()
    net.logit_scale.fill_(1.3)  # the calibrated logits are the model's
    return net


def direct_totals(net, ids, size, lanes, thetas, lambdas):
    """The mixture's summed NLL position by position, each lane read whole."""
    lane_len = (len(ids) - 1) // lanes
    totals = torch.zeros(len(thetas), len(lambdas), dtype=torch.float64)
    for lane in range(lanes):
        tokens = ids[lane * lane_len: (lane + 1) * lane_len + 1]
        with torch.no_grad():
            hidden, _ = net.features(tokens[None, :-1])
            log_model = (net.output_logits(hidden) * net.logit_scale).log_softmax(-1)[0]
        hidden, targets = hidden[0].double(), tokens[1:]
        for t in range(lane_len):
            p_model = float(log_model[t, targets[t]].exp())
            for i, theta in enumerate(thetas):
                past = range(max(0, t - size), t)
                weights = [math.exp(theta * float(hidden[t] @ hidden[j])) for j in past]
                hit = sum(w for w, j in zip(weights, past) if targets[j] == targets[t])
                p_cache = hit / sum(weights) if weights else 0.0
                for k, lam in enumerate(lambdas):
                    totals[i, k] -= math.log((1 - lam) * p_model + lam * p_cache)
    return totals


def test_the_mixture_is_the_papers_sum_over_the_last_size_positions():
    net = tiny_net()
    ids = torch.randint(0, 11, (83,), generator=torch.Generator().manual_seed(1))
    thetas, lambdas = (0.5, 2.0), (0.0, 0.3, 0.6)
    # Chunks of 7 and a cache of 10: the window slides across chunk boundaries in each of 2 lanes.
    totals, targets = cache_totals(net, ids, size=10, lanes=2, thetas=thetas, lambdas=lambdas, chunk=7)
    assert torch.allclose(totals, direct_totals(net, ids, 10, 2, thetas, lambdas), rtol=1e-5)
    assert targets.shape == (2, 41) and torch.equal(targets.reshape(-1), ids[1:83].view(2, 41).reshape(-1))


def test_lambda_zero_is_the_model_read_in_order():
    net = tiny_net()
    ids = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(2))
    totals, _ = cache_totals(net, ids, size=20, lanes=3, thetas=(1.0,), lambdas=(0.0,))
    nll, *_ = score_totals(net, ids, lanes=3)
    assert float(totals[0, 0]) == pytest.approx(nll, rel=1e-6)


def test_a_target_is_never_in_the_cache_that_scores_it():
    # No token follows twice: a cache that held the target being scored would find it.
    net = tiny_net(vocab=64)
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    totals, _ = cache_totals(net, ids, size=100, lanes=1)
    assert best_fit(totals, 63).lam == 0.0
    assert bool((totals[:, 1:] > totals[:, :1]).all())  # any share of the cache only costs


def test_a_repeated_passage_is_predicted_from_the_cache():
    # Untrained, the states are small and alike: a sharp theta tells them apart.
    net, thetas = tiny_net(vocab=64, width=32), (1.0, 30.0, 300.0)
    passage = torch.randint(0, 64, (120,), generator=torch.Generator().manual_seed(4))
    ids = torch.cat([passage, passage])
    totals, _ = cache_totals(net, ids, size=200, lanes=1, thetas=thetas)
    fit = best_fit(totals, len(ids) - 1, thetas)
    assert fit.lam > 0 and fit.loss < 0.75 * float(totals[0, 0]) / (len(ids) - 1)


def test_lanes_are_long_enough_for_the_cache_to_fill():
    assert cache_lanes(1_000_000, 2000, 64) == 62
    assert cache_lanes(30_000, 2000, 64) == 1
    assert cache_lanes(10**9, 100, 64) == 64


def test_train_chooses_the_cache_on_val_and_reports_test_with_it(tmp_path):
    root = write(tmp_path / "wikitext", {"wiki.train.tokens": TRAIN * 4, "wiki.valid.tokens": VALID, "wiki.test.tokens": TEST})
    cfg = compose_config("train", [*TINY, "data=wikitext2", f"data.path={root}", "data.seq_len=8", "data.batch_size=8",
                                   "trainer.max_steps=10", "callbacks.sample_text=null", "model.cache_size=30",
                                   "model.stateful_eval_lanes=1"], tmp_path / "run")
    metrics, objects = train(cfg)
    assert metrics["val/cache_size"] == 30 and metrics["val/cache_theta"] in THETAS
    # The test file repeats one line: the cache predicts it from its first reading.
    assert metrics["test/bpc_cache"] < metrics["test/bpc_stateful"] - 0.1
    # One lane each: the same targets, so the same characters (each <unk> as written).
    for split in ("val", "test"):
        per_char = metrics[f"{split}/bpc_stateful"] / metrics[f"{split}/loss_stateful"]
        assert metrics[f"{split}/bpc_cache"] / metrics[f"{split}/loss_cache"] == pytest.approx(per_char, rel=1e-6)
    # Test reads with the settings chosen before it, not with its own best: given a poor choice,
    # its loss is that choice's.
    model, trainer, test_ids = objects["model"], objects["trainer"], objects["datamodule"].tokens["test"]
    model.cache_fit = CacheFit(theta=0.1, lam=0.05, loss=0.0)
    trainer.test(model, datamodule=objects["datamodule"], ckpt_path=objects["best_ckpt"], verbose=False)
    grid, targets = cache_totals(model.net, test_ids, 30, 1)
    poor = float(grid[THETAS.index(0.1), LAMBDAS.index(0.05)]) / targets.numel()
    assert float(trainer.callback_metrics["test/loss_cache"]) == pytest.approx(poor, rel=1e-5)
    assert poor > float(grid.min()) / targets.numel() + 0.1
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert recorded["test/bpc_cache"] == metrics["test/bpc_cache"]
    text = summary(metrics, objects, temperatures=(), length=0)
    assert "with the continuous cache" in text and "cache_size=30 cache_theta=" in text

    # The same cache on the test text from sample.py: lambda 0 is the model's own figure.
    ckpt, text = objects["best_ckpt"], tmp_path / "scored.txt"
    text.write_text("Here " + TEST + " castles", encoding="utf-8")  # first and last tokens of other lengths
    scored = {}
    for lam in (0.0, metrics["val/cache_lambda"]):
        cfg = compose_config("sample", [f"ckpt={ckpt}", "mode=score", f"text_file={text}",
                                        "cache_size=30", f"cache_theta={metrics['val/cache_theta']}", f"cache_lambda={lam}"],
                             tmp_path / f"score{lam}")
        scored[lam] = sample(cfg)[0]
    assert scored[0.0]["score/bpc_cache"] == pytest.approx(scored[0.0]["score/bpc"], rel=1e-6)
    assert scored[metrics["val/cache_lambda"]]["score/bpc_cache"] < scored[0.0]["score/bpc"] - 0.1


@pytest.mark.parametrize("size", [0, 10_001, 2.5])
def test_a_cache_size_out_of_bounds_is_refused(size):
    with pytest.raises(ConfigError, match="model.cache_size"):
        LanguageModel(vocab_size=20, tokenizer={}, optimizer=functools.partial(torch.optim.SGD, lr=0.1), cache_size=size)


def test_an_exported_model_has_no_cache():
    with pytest.raises(ConfigError, match="cache_size needs a checkpoint"):
        score_with_cache(object(), torch.arange(5), torch.ones(5), 10, 1.0, 0.1)
