"""Nothing lost on a full disk: every file of a run is replaced whole or not at all."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rnnlm.models.loading import CHECKPOINT_FORMAT, load_model
from rnnlm.training.checkpoint_io import AtomicCheckpointIO, remove_partial_files
from rnnlm.training.resume import resolve_ckpt_path
from rnnlm.utils.errors import CheckpointError
from rnnlm.utils.files import TEMP_PREFIX, DiskError, write_text, write_with
from tests.conftest import TINY
from tests.mounts import tmpfs
from tests.processes import run_script, started


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_previous_version(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "version 1")

    def half_then_full(handle):
        handle.write(b"version 2, half writ")
        no_space()

    with pytest.raises(DiskError, match=r"could not write .*metrics.json \(disk full, .* free in .*\); .*free disk space"):
        write_with(path, half_then_full)
    assert path.read_text() == "version 1"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no partial file left


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"generation": 1, "w": torch.ones(3)}, path)

    def torch_save_on_a_full_disk(obj, handle):
        handle.write(b"PK\x03\x04 partial zip")
        try:
            no_space()
        except OSError:  # torch's zip writer re-raises a failed write as a RuntimeError
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(DiskError, match=r"last.ckpt \(disk full.*the checkpoints written before it are intact \(resume with resume_dir="):
        io.save_checkpoint({"generation": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["generation"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.faults
def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    """Killed with half of the new checkpoint on disk (the writer stops there and says so,
    so the kill lands mid-write every time): the previous checkpoint is whole, and what the
    killed write left is a temporary file the next run removes."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    path = checkpoints / "last.ckpt"
    torch.save({"generation": 1, "w": torch.ones(3)}, path)
    writer = textwrap.dedent(f"""
        import io, time
        import torch
        from rnnlm.training.checkpoint_io import AtomicCheckpointIO

        save = torch.save
        def half_then_wait(obj, handle):
            whole = io.BytesIO()
            save(obj, whole)
            handle.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            handle.flush()
            print("mid-write", flush=True)
            time.sleep(300)
        torch.save = half_then_wait
        AtomicCheckpointIO().save_checkpoint({{"generation": 2, "w": torch.zeros(100_000)}}, {str(path)!r})
    """)
    with started([sys.executable, "-c", writer], tmp_path, stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().strip() == "mid-write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["generation"] == 1 and ckpt["w"].tolist() == [1.0, 1.0, 1.0]
    (partial,) = [p for p in checkpoints.iterdir() if p != path]
    assert partial.name.startswith(TEMP_PREFIX) and partial.stat().st_size > 0  # the half written
    assert remove_partial_files(checkpoints) == [partial] and list(checkpoints.iterdir()) == [path]


def fake_checkpoint(path, step):
    torch.save({"rnnlm_format": CHECKPOINT_FORMAT, "global_step": step, "hyper_parameters": {}}, path)


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    fake_checkpoint(checkpoints / "last-step000010.ckpt", 10)
    time.sleep(0.01)
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")  # newest, unreadable
    path, checkpoint = resolve_ckpt_path("last", tmp_path)
    assert path.name == "last-step000010.ckpt" and checkpoint["global_step"] == 10
    assert "skipped" in caplog.text and "last.ckpt (unreadable)" in caplog.text
    (checkpoints / "last-step000010.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint that loads \(skipped: .*last.ckpt \(unreadable\)"):
        resolve_ckpt_path("last", tmp_path)


def test_sampling_a_run_dir_takes_its_newest_checkpoint_that_loads(tmp_path, trained, caplog):
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "step000010.ckpt").write_bytes(open(trained["objects"]["best_ckpt"], "rb").read())
    time.sleep(0.01)
    (run / "last.ckpt").write_bytes(b"garbage")
    loaded = load_model(tmp_path / "run")
    assert loaded.path == run / "step000010.ckpt"
    assert "last.ckpt (unreadable)" in caplog.text


@pytest.mark.slow
@pytest.mark.faults
def test_a_full_disk_is_one_error_line_and_the_run_stays_resumable(tmp_path, corpus_file):
    disk = tmp_path / "disk"
    with tmpfs(disk, "100k"):  # room for the first checkpoint of this smaller model (~53 KB), not the second
        run_dir = disk / "run"
        result = run_script("train.py", *TINY, "model.hidden_size=16", "model.embedding_dim=8", "test=false",
                            "callbacks.sample_text=null", f"data.path={corpus_file}", "trainer.max_steps=60",
                            "trainer.val_check_interval=10", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert result.returncode == 1, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: could not write {run_dir}/checkpoints/") and "(disk full, " in last, last
        files = list((run_dir / "checkpoints").iterdir())
        assert not [p for p in files if p.name.startswith(TEMP_PREFIX)], files
        for ckpt in files:  # everything with a final name loads
            assert torch.load(ckpt, weights_only=True)["global_step"] > 0
        path, _ = resolve_ckpt_path("last", run_dir)
        assert path in files


def test_a_stream_takes_its_name_when_complete_and_keeps_its_text_when_interrupted(tmp_path):
    from rnnlm.utils.files import streamed

    with streamed(tmp_path / "sample_0.txt", encoding="utf-8") as handle:
        handle.write("complete")
    assert (tmp_path / "sample_0.txt").read_text() == "complete" and not list(tmp_path.glob("*.partial"))
    with pytest.raises(KeyboardInterrupt), streamed(tmp_path / "sample_1.txt", encoding="utf-8") as handle:
        handle.write("half a sam")
        raise KeyboardInterrupt
    assert not (tmp_path / "sample_1.txt").exists()
    assert (tmp_path / "sample_1.txt.partial").read_text() == "half a sam"


def test_a_full_disk_met_by_another_writer_is_one_line(tmp_path):
    from rnnlm.utils.cli import as_user_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "csv" / "metrics.csv"))
        except OSError:
            raise RuntimeError("the logger's own wrapping") from None
    except RuntimeError as hidden:
        assert as_user_error(hidden) is None  # `from None`: the OSError is not its cause
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "csv" / "metrics.csv"))
        except OSError:
            raise RuntimeError("[enforce fail] unexpected pos")  # noqa: B904 - how writers re-raise
    except RuntimeError as wrapped:
        err = as_user_error(wrapped)
    assert isinstance(err, DiskError) and err.exit_code == 1
    assert str(err).startswith(f"could not write {tmp_path}/csv/metrics.csv (disk full, ")
    assert as_user_error(ValueError("a bug")) is None  # not ours: the traceback stays


def test_ckpt_path_last_starts_fresh_when_there_is_no_checkpoint_yet(tmp_path):
    assert resolve_ckpt_path("last", tmp_path) is None  # a requeued job's first start
    (tmp_path / "checkpoints").mkdir()
    assert resolve_ckpt_path("last", tmp_path) is None
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="holds no checkpoint that loads"):
        resolve_ckpt_path("last", tmp_path)  # checkpoints exist but none loads: refuse
