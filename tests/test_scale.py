"""Scale-out paths on the CPU: 2-process DDP, multirun launchers, Optuna."""

import json

import pytest
import yaml

from tests.processes import run_script

FAST = ["debug=fast", "trainer.max_steps=10", "trainer.val_check_interval=5", "callbacks.sample_text.every_n_steps=5"]


def run(args, cwd, timeout=400):
    result = run_script("train.py", *args, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


def job_dirs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


@pytest.mark.slow
def test_ddp_two_cpu_processes_share_one_run_dir(tmp_path, corpus_file):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    result = run([*FAST, f"data.path={corpus_file}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  f"hydra.run.dir={out}", f"data.cache_dir={cache}"], tmp_path)
    output = result.stdout + result.stderr
    assert "MEMBER: 2/2" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]  # rank 1 wrote nowhere else
    # Prepared once (by rank 0, in prepare_data), mapped by both ranks.
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file(), sorted(p.name for p in cache.iterdir())
    assert output.count("corpus: prepared") == 1 and output.count("corpus: reusing") == 1, output[-3000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len([c for c in ckpts if c.startswith("step")]) == 1
    record = json.loads((out / "metrics.json").read_text())
    assert record["global_step"] == 10 and record["metrics"]["val/loss"] > 0
    assert result.stdout.count("best checkpoint:") == 1  # only rank 0 reports


@pytest.mark.slow
def test_multirun_jobs_are_separate_wandb_runs(tmp_path, corpus_file):
    sweep = tmp_path / "sweep"
    run(["-m", *FAST, f"data.path={corpus_file}", "logger=wandb", "model=lstm,gru", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    run_ids = set()
    for job in jobs:
        assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        run_ids.add(offline[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2


@pytest.mark.slow
def test_optuna_sweep_returns_a_best_value(tmp_path, corpus_file):
    sweep = tmp_path / "optuna"
    run([*FAST, f"data.path={corpus_file}", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.sampler.n_startup_trials=2",
         f"hydra.sweep.dir={sweep}"], tmp_path)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((job / "metrics.json").read_text())["metrics"]["val/bpc"] for job in sweep.glob("[0-9]*")]
    assert len(trials) == 2 and best["best_value"] == pytest.approx(min(trials), rel=1e-6)
    assert "model.hidden_size" in best["best_params"]


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path, corpus_file):
    sweep = tmp_path / "submitit"
    run(["-m", *FAST, f"data.path={corpus_file}", "model.hidden_size=16,24", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    sizes = sorted(yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["model"]["hidden_size"] for j in jobs)
    assert sizes == [16, 24] and all((j / "metrics.json").is_file() for j in jobs)


def test_a_relaunched_rank_runs_its_job_not_a_sweep(monkeypatch):
    """Lightning re-runs sys.argv for DDP ranks > 0; inside a sweep that must be this job
    alone, even when a preset (hparams_search=optuna) sets hydra.mode=MULTIRUN."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from rnnlm.utils import cli

    hydra_cfg = OmegaConf.create({"overrides": {"task": ["hparams_search=optuna", "model.hidden_size=64"]},
                                  "run": {"dir": "outputs/x"}, "runtime": {"output_dir": "/sweep/3"}})
    monkeypatch.setattr(cli, "_in_multirun", lambda: True)
    monkeypatch.setattr(cli, "HydraConfig", SimpleNamespace(get=lambda: hydra_cfg))
    monkeypatch.setattr(cli.sys, "argv", ["train.py", "-m", "hparams_search=optuna"])
    cli.pin_job_for_relaunch()
    assert cli.sys.argv == ["train.py", "hparams_search=optuna", "model.hidden_size=64", "hydra.mode=RUN"]
    assert hydra_cfg.run.dir == "/sweep/3"
