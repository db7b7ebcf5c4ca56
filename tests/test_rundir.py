"""A run dir is checked and owned before Hydra writes into it; a sweep sums up its failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rnnlm.models.loading import CHECKPOINT_FORMAT
from rnnlm.report import collect_runs
from rnnlm.training.resume import resolve_ckpt_path
from rnnlm.utils.errors import CheckpointError, ConfigError, RnnlmError
from rnnlm.utils.files import DiskError
from rnnlm.utils.rundir import LOCK_NAME, check_resume_dir, lock, unlock
from tests.conftest import TINY
from tests.mounts import tmpfs
from tests.processes import ROOT, run_script, started

QUIET = ["test=false", "callbacks.sample_text=null"]  # nothing after fitting, no samples


def test_a_dir_has_one_owner_and_a_killed_owner_leaves_no_stale_lock(tmp_path):
    holder = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from rnnlm.utils.rundir import lock
        lock(Path({str(tmp_path)!r}))
        print("locked", flush=True)
        time.sleep(300)
    """)
    with started([sys.executable, "-c", holder], tmp_path, stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RnnlmError, match=rf"run dir {tmp_path} is in use by another run \(pid {proc.pid} on .*\); wait"):
            lock(tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lock(tmp_path)  # the kernel dropped the dead process's lock
    unlock(tmp_path)
    assert (tmp_path / LOCK_NAME).is_file()


@pytest.mark.slow
@pytest.mark.faults
def test_a_second_run_into_a_busy_run_dir_refuses_and_writes_nothing(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), *TINY, *QUIET, f"data.path={corpus_file}", "trainer.max_steps=400",
            "trainer.val_check_interval=400", f"hydra.run.dir={run_dir}"]
    with started(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as first:
        deadline = time.monotonic() + 120
        while not (run_dir / ".hydra" / "overrides.yaml").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = run_script("train.py", *TINY, *QUIET, f"data.path={corpus_file}", "seed=7", f"hydra.run.dir={run_dir}",
                            cwd=tmp_path)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines()[-1].startswith(f"error: run dir {run_dir} is in use by another run (pid {first.pid}")
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr[-2000:]
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "seed=7" not in overrides and "trainer.max_steps=400" in overrides  # only the first run's files
    assert "seed=7" not in (run_dir / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("script", ["train.py", "sample.py"])
def test_a_read_only_output_dir_fails_before_anything_runs(tmp_path, script):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        for run_dir in (disk, disk / "new"):  # an existing dir (Hydra's log file would fail first) and a new one
            result = run_script(script, f"hydra.run.dir={run_dir}", "data.path=/nonexistent", cwd=tmp_path) \
                if script == "train.py" else run_script(script, f"hydra.run.dir={run_dir}", "ckpt=/nonexistent", cwd=tmp_path)
            assert result.returncode == 2, result.stderr[-2000:]
            assert result.stderr.strip() == (f"error: output dir {run_dir} is not writable (Read-only file system); "
                                             "fix its permissions or pass hydra.run.dir=<a writable dir>")


def test_resume_dir_must_be_a_run_dir_with_a_checkpoint_that_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"resume_dir=.*nope does not exist; pass the dir of an earlier run"):
        check_resume_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"resume_dir=.*file is a file, not a directory"):
        check_resume_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"holds no checkpoints/ dir, so it is not a run dir"):
        check_resume_dir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"checkpoints/ holds no checkpoint; pass the dir of an earlier run"):
        check_resume_dir(tmp_path)
    (tmp_path / "train.log").write_text("")  # a train.py run killed before its first checkpoint
    with pytest.raises(ConfigError, match=r"is a run that ended before its first checkpoint: there is nothing to resume"):
        check_resume_dir(tmp_path)
    (tmp_path / "checkpoints").rmdir()
    with pytest.raises(ConfigError, match=r"is a run that ended before its first checkpoint"):
        check_resume_dir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    assert check_resume_dir(tmp_path) == tmp_path  # its structure; whether one loads is read once, by the run
    with pytest.raises(CheckpointError, match=r"resume_dir=.*holds no checkpoint that loads \(skipped: .*last.ckpt \(unreadable\)\)"):
        resolve_ckpt_path("last", tmp_path, resuming=True)
    torch.save({"rnnlm_format": CHECKPOINT_FORMAT}, tmp_path / "checkpoints" / "last-step000005.ckpt")
    assert resolve_ckpt_path("last", tmp_path, resuming=True)[0].name == "last-step000005.ckpt"


@pytest.mark.slow
@pytest.mark.faults
def test_resume_dir_that_does_not_exist_is_refused_before_it_is_created(tmp_path):
    result = run_script("train.py", f"resume_dir={tmp_path / 'nope'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: resume_dir={tmp_path / 'nope'} does not exist")
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
@pytest.mark.faults
def test_a_sweep_job_with_bad_input_fails_in_one_line_and_the_others_run(tmp_path, corpus_file):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", *TINY, *QUIET, f"data.path={corpus_file}", "trainer.max_steps=4",
                        "trainer.val_check_interval=4", "model.num_layers=1,0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = "model.num_layers=0 is not allowed: it must be an integer >= 1"
    assert f"error: job 1 ({sweep / '1'}): {error}" in result.stderr
    assert "1 job(s) of the sweep failed on bad input; the others ran to the end" in result.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["global_step"] == 4
    assert error in json.loads((sweep / "1" / "metrics.json").read_text())["error"]
    assert error in (sweep / "1" / "train.log").read_text()
    statuses = {run.name: run.status for run in collect_runs(sweep)}
    assert statuses["0"] == "ok" and statuses["1"].startswith(f"failed: {error}")


def test_a_filesystem_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock(tmp_path)  # not "in use by another run"
    assert "cannot be locked (No locks available)" in caplog.text


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path):
    from rnnlm.utils.rundir import claim

    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(RnnlmError, match=r"cannot create the run dir's lock file .*\.rnnlm\.lock \(Is a directory\)"):
        claim(tmp_path)


def test_a_disk_too_full_for_the_first_files_is_refused_before_hydra_writes(tmp_path):
    from rnnlm.utils.rundir import check_writable

    with tmpfs(tmp_path / "disk", "16k") as disk:
        (disk / "filler").write_bytes(b"\0" * 8192)
        with pytest.raises(DiskError, match=r"output dir .*run cannot hold the run's files \(No space left on device, .* free\); free disk space") as info:
            check_writable(disk / "run")
        assert info.value.exit_code == 1  # not bad input: a sweep stops rather than records it


@pytest.mark.slow
@pytest.mark.faults
def test_an_optuna_trial_with_bad_input_is_marked_failed_and_the_study_goes_on(tmp_path, corpus_file):
    sweep = tmp_path / "optuna"
    result = run_script("train.py", *TINY, *QUIET, f"data.path={corpus_file}", "hparams_search=optuna",
                        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", "data.batch_size=0",
                        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "2 job(s) of the sweep failed on bad input" in result.stderr
    assert result.stderr.count("data.batch_size=0 is not allowed") == 2
