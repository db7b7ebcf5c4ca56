"""Resuming continues exactly: same data order, optimiser state and step as an unbroken run."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnlm.training.callbacks import AdoptResumedConfig
from rnnlm.training.train import train
from tests.conftest import TINY, compose_config
from tests.processes import ROOT, run_script, started

KILL_RUN_STEPS = 3000
RESUME = [*TINY, "test=false", "callbacks.sample_text=null", "trainer.val_check_interval=10",
          "callbacks.periodic_checkpoint.every_n_train_steps=5", "data.batch_size=8"]


def run(tmp_path, corpus_file, name, *extra):
    cfg = compose_config("train", [*RESUME, f"data.path={corpus_file}", *extra], tmp_path / name)
    return train(cfg)


def test_resume_matches_an_uninterrupted_run(tmp_path, corpus_file):
    full, _ = run(tmp_path, corpus_file, "full", "trainer.max_steps=30")
    # Same config (so the same LR schedule over 30 steps), stopped mid-epoch after step 15.
    _, broken = run(tmp_path, corpus_file, "broken", "trainer.max_steps=30",
                    "+callbacks.stop._target_=tests.conftest.StopAtStep", "+callbacks.stop.step=15")
    assert broken["trainer"].global_step == 15
    ckpts = sorted(p.name for p in (tmp_path / "broken" / "checkpoints").glob("last*.ckpt"))
    assert "last-step000015.ckpt" in ckpts
    resumed, objects = run(tmp_path, corpus_file, "broken", "trainer.max_steps=30", "ckpt_path=last")
    assert objects["trainer"].global_step == 30
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], abs=1e-5)
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], abs=1e-5)


def test_a_run_on_the_plateau_schedule_resumes_exactly(tmp_path, corpus_file):
    """The plateau's best loss, count and scale are in the checkpoint: a run broken after a
    learning-rate cut continues as the unbroken one (threshold 100: every validation after the
    first cuts the rate). It is broken at a validation step: a stop elsewhere validates there
    (Lightning does when asked to stop), which the unbroken run does not."""
    plateau = ["model/scheduler=plateau", "model.scheduler.warmup_steps=0", "model.scheduler.threshold=100",
               "trainer.max_steps=30", "trainer.val_check_interval=10", "callbacks.early_stopping=null"]
    full, whole = run(tmp_path, corpus_file, "full", *plateau)
    run(tmp_path, corpus_file, "broken", *plateau, "+callbacks.stop._target_=tests.conftest.StopAtStep", "+callbacks.stop.step=20")
    resumed, objects = run(tmp_path, corpus_file, "broken", *plateau, "ckpt_path=last")
    lr = objects["trainer"].optimizers[0].param_groups[0]["lr"]
    assert lr == whole["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(objects["cfg"].model.optimizer.lr / 16)
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], abs=1e-5)


def test_a_resumed_config_is_adopted_only_once_lightning_has_restored_the_checkpoint(tmp_path, corpus_file, monkeypatch):
    run(tmp_path, corpus_file, "first", "trainer.max_steps=10")
    steps = []
    monkeypatch.setattr("rnnlm.training.callbacks.promote_pending_config", lambda: None)
    monkeypatch.setattr(AdoptResumedConfig, "on_train_start", lambda self, trainer, module: steps.append(trainer.global_step))
    run(tmp_path, corpus_file, "first", "trainer.max_steps=12", "ckpt_path=last")
    assert steps == [10]  # once, with the trainer at the checkpoint's step: after Lightning's restore


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, corpus_file, sig):
    """SIGKILL loses at most the steps since the periodic checkpoint; SIGTERM/SIGINT save one.

    The child gets the default signal dispositions (tests.processes), so SIGINT interrupts it
    even when the suite runs as a background job, which inherits SIGINT ignored."""
    out = tmp_path / "run"
    # Enough steps that the signal lands mid-run, few enough that a child that ignored it ends on its own.
    args = [*RESUME, f"data.path={corpus_file}",
            f"trainer.max_steps={KILL_RUN_STEPS}", "trainer.val_check_interval=1000", "logger=csv", f"hydra.run.dir={out}"]
    log = tmp_path / "output.log"  # a file, not a pipe: an unread pipe that fills would stall the child's writes
    with log.open("w") as sink, started([sys.executable, str(ROOT / "train.py"), *args], tmp_path,
                                        stdout=sink, stderr=subprocess.STDOUT) as proc:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("last-step*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        assert proc.poll() is None, "the run ended before the signal: raise KILL_RUN_STEPS"
        proc.send_signal(sig)
        proc.wait(timeout=120)
    output = log.read_text()
    ckpts = {p.name for p in (out / "checkpoints").glob("last*.ckpt")}
    assert ckpts, output[-2000:]
    newest_step = max(int(p.stem[len("last-step"):]) for p in (out / "checkpoints").glob("last-step*.ckpt"))
    assert newest_step < KILL_RUN_STEPS, output[-2000:]
    # 128 + the signal after saving, as schedulers expect from a terminated job.
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), output[-2000:]
    if sig != signal.SIGKILL:
        assert "last-interrupted.ckpt" in ckpts, output[-2000:]
        assert f"interrupted: {sig.name} at step " in output and "resume with resume_dir=" in output
    newest = max((out / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    step = torch.load(newest, weights_only=True)["global_step"]
    resumed = run_script("train.py", *args[:-1], f"resume_dir={out}", f"trainer.max_steps={step + 5}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {newest}" in resumed.stdout + resumed.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 5
