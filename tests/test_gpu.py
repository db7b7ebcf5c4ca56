"""The GPU path: training in each precision and cell, exact resume, sampling that gives the CPU
engine's text, stateful evaluation, DDP on two GPUs. Marked ``gpu``: skipped, with the reason,
where CUDA is absent (``python -m benchmarks --gpu`` runs them on a GPU machine)."""

import copy
import json
import math

import pytest
import torch

from rnnlm.data.tokenizers import CharTokenizer
from rnnlm.models.cache import THETAS, cache_lanes, cache_totals
from rnnlm.models.loading import CHECKPOINT_FORMAT
from rnnlm.models.network import RNNLM
from rnnlm.sampling.sample import sample
from rnnlm.training.train import train
from tests.conftest import TINY, compose_config
from tests.processes import run_script

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
# The suite's tiny run, on one GPU.
GPU_TINY = [*(o for o in TINY if not o.startswith("trainer=")), "trainer=gpu"]
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]
TEXT = "ROMEO: But, soft! what light through yonder window breaks?\nJULIET: Ay me!\n\n" * 30


def needs_bf16(precision: str) -> None:
    if precision.startswith("bf16") and DEVICE == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")


def run(tmp_path, corpus_file, name, *overrides):
    cfg = compose_config("train", [*GPU_TINY, f"data.path={corpus_file}", "callbacks.sample_text=null", *overrides],
                         tmp_path / name)
    return train(cfg)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_cell_trains_in_each_precision(tmp_path, corpus_file, cell, precision):
    needs_bf16(precision)
    metrics, objects = run(tmp_path, corpus_file, "run", f"model.cell={cell}", f"trainer.precision={precision}",
                           "trainer.max_steps=30", "test=false")
    assert objects["trainer"].precision == precision
    assert next(objects["model"].parameters()).device.type == DEVICE
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] < math.log(objects["datamodule"].vocab_size)


def test_auto_precision_probes_each_precision_and_picks_one_that_runs(tmp_path, corpus_file):
    from rnnlm.training.precision import CUDA_PRECISIONS, probe_precisions

    network = {"vocab_size": 100, "cell": "lstm", "hidden_size": 64, "num_layers": 2, "embedding_dim": 16}
    timings = probe_precisions(network, CUDA_PRECISIONS)
    assert isinstance(timings["32-true"], float) and isinstance(timings["16-mixed"], float), timings
    if torch.cuda.is_bf16_supported(including_emulation=False):
        assert isinstance(timings["bf16-mixed"], float), timings
    metrics, objects = run(tmp_path, corpus_file, "run", "trainer.precision=auto", "trainer.max_steps=10", "test=false")
    assert objects["trainer"].precision in PRECISIONS and math.isfinite(metrics["val/loss"])


def test_resume_matches_an_uninterrupted_run(tmp_path, corpus_file):
    """Without dropout (cuDNN's RNN dropout is nondeterministic, pytorch #18110) a resumed run
    continues the uninterrupted one's loss curve."""
    full, _ = run(tmp_path, corpus_file, "full", "trainer.max_steps=30")
    _, broken = run(tmp_path, corpus_file, "broken", "trainer.max_steps=30",
                    "+callbacks.stop._target_=tests.conftest.StopAtStep", "+callbacks.stop.step=15")
    assert broken["trainer"].global_step == 15
    resumed, objects = run(tmp_path, corpus_file, "broken", "trainer.max_steps=30", "ckpt_path=last")
    assert objects["trainer"].global_step == 30
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], abs=1e-4)
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], abs=1e-4)


def test_stateful_evaluation_reads_the_split_in_order(tmp_path, corpus_file):
    metrics, objects = run(tmp_path, corpus_file, "run", "model.stateful_eval_lanes=1", "model.cache_size=30",
                           "trainer.max_steps=20")
    net = objects["model"].net.eval()
    for split in ("val", "test"):
        ids = objects["datamodule"].tokens[split].long().to(net.logit_scale.device)
        with torch.no_grad():
            logits, _ = net(ids[None])
        loss = float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[1:]))
        assert metrics[f"{split}/loss_stateful"] == pytest.approx(loss, rel=1e-4)
    # The continuous cache on the GPU (fp64 similarities) as on the CPU, with val's choice.
    test_ids, chosen = objects["datamodule"].tokens["test"], ((metrics["val/cache_theta"],), (metrics["val/cache_lambda"],))
    nll, targets = cache_totals(copy.deepcopy(net).cpu(), test_ids, 30, cache_lanes(len(test_ids), 30), *chosen)
    assert metrics["test/loss_cache"] == pytest.approx(float(nll[0, 0]) / targets.numel(), rel=1e-3)


def write_checkpoint(path, cell):
    tokenizer = CharTokenizer.fit(TEXT)
    torch.manual_seed(0)
    arch = {"vocab_size": len(tokenizer), "cell": cell, "hidden_size": 64, "num_layers": 2, "embedding_dim": 16}
    net = RNNLM(**arch)
    torch.save({"rnnlm_format": CHECKPOINT_FORMAT, "global_step": 1, "hyper_parameters": {**arch, "tokenizer": tokenizer.to_dict()},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def sampled(tmp_path, ckpt, name, *overrides):
    metrics, objects = sample(compose_config("sample", [f"ckpt={ckpt}", "stream=false", *overrides], tmp_path / name))
    return metrics, objects["record"]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_greedy_text_on_the_gpu_is_the_cpu_engines(tmp_path, cell):
    """The same weights decode the same greedy text on both devices, up to the first step whose
    two best logits differ by less than the devices' rounding (1e-4) should there be one."""
    ckpt = write_checkpoint(tmp_path / "last.ckpt", cell)
    greedy = ["strategy=greedy", "prompt=ROMEO:", "length=200"]
    _, cpu = sampled(tmp_path, ckpt, "cpu", "device=cpu", *greedy)
    _, gpu = sampled(tmp_path, ckpt, "gpu", f"device={DEVICE}", *greedy)
    cpu_text, gpu_text = cpu["samples"][0]["text"], gpu["samples"][0]["text"]
    agree = next((i for i, (a, b) in enumerate(zip(cpu_text, gpu_text)) if a != b), len(cpu_text))
    if agree < len(cpu_text):  # a near-tie: the CPU's two best logits at that step are within 1e-4
        tokenizer = CharTokenizer.fit(TEXT)
        net = RNNLM(**{"vocab_size": len(tokenizer), "cell": cell, "hidden_size": 64, "num_layers": 2, "embedding_dim": 16})
        net.load_state_dict({k[4:]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()})
        ids = torch.tensor([tokenizer.encode("ROMEO:" + cpu_text[:agree])])
        with torch.no_grad():
            top = net.eval()(ids)[0][0, -1].topk(2).values
        assert float(top[0] - top[1]) < 1e-4, (agree, cpu_text[:agree + 5], gpu_text[:agree + 5])
    assert len(gpu_text) == len(cpu_text)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam", "stochastic_beam"])
def test_every_strategy_runs_on_the_gpu(tmp_path, strategy):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", "lstm")
    metrics, record = sampled(tmp_path, ckpt, "run", f"device={DEVICE}", f"strategy={strategy}", "prompt=ROMEO:",
                              "length=50", "num_samples=4", "seed=1")
    assert len(record["samples"]) == 4
    assert all(len(s["text"]) > 0 for s in record["samples"])


@pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.device_count() < 2, reason="DDP needs 2 GPUs")
def test_ddp_on_two_gpus_carries_each_ranks_own_streams(tmp_path, corpus_file):
    """Two ranks, state carried across batches (each rank its own contiguous lanes), and the
    stateful evaluation over both ranks' parts: the same figures as one process reading the
    whole split in order, the weights being the same."""
    overrides = [o for o in GPU_TINY if not o.startswith("trainer=")]
    result = run_script("train.py", *overrides, "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2",
                        "data.order=lanes", "model.stateful_eval_lanes=1", "model.cache_size=30", f"data.path={corpus_file}",
                        "trainer.max_steps=20", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(record["metrics"]["val/loss_stateful"]) and math.isfinite(record["metrics"]["test/loss"])
    # The cache's grid summed over both ranks: one choice, and a test figure with it.
    assert record["metrics"]["val/cache_theta"] in THETAS and math.isfinite(record["metrics"]["test/bpc_cache"])
