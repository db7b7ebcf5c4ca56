"""rnnlm.report on a fake sweep written to disk: no training, a few seconds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlm.report import collect_runs, curve_labels, load_curve, main, parse_override

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSV_HEADER = (
    "epoch,lr-AdamW,step,test/acc,test/bpc,test/loss,test/ppl,train/bpc,train/loss,"
    "val/acc,val/bpc,val/loss,val/loss_best,val/ppl"
)
CONFIG = """\
task_name: train
seed: 1234
data:
  seq_len: 32
  batch_size: 8
model:
  cell: {cell}
  hidden_size: {hidden}
  num_layers: {layers}
  dropout: 0.1
  embedding_dim: 16
  optimizer:
    _target_: torch.optim.AdamW
    lr: {lr}
trainer:
  default_root_dir: ${{paths.output_dir}}
  max_steps: 20
paths:
  output_dir: ${{hydra:runtime.output_dir}}
"""
# job -> (cell, hidden_size, num_layers, lr, final val/bpc or None for a failed job)
JOBS = {
    "0": ("lstm", 64, 1, 0.002, 2.5),
    "1": ("gru", 128, 1, 0.002, 2.1),
    "2": ("lstm", 128, 1, 0.001, 2.3),
    "3": ("rnn", 64, 2, 0.002, None),
}
EXPECTED_ORDER = ["1", "2", "0", "3"]  # by val/bpc, the job without metrics last


def write_job(job_dir: Path, cell: str, hidden: int, layers: int, lr: float, bpc: float | None) -> None:
    """One Hydra job dir as train.py leaves it (or, with ``bpc=None``, as a crashed job does)."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(CONFIG.format(cell=cell, hidden=hidden, layers=layers, lr=lr))
    overrides = [f"model={cell}", f"model.hidden_size={hidden}", f"model.optimizer.lr={lr}", "debug=fast"]
    if layers != 1:
        overrides.append(f"model.num_layers={layers}")
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    if bpc is None:
        return
    loss = bpc * 0.6931
    record = {
        "metrics": {
            "train/loss": loss + 0.1,
            "val/loss": loss,
            "val/bpc": bpc,
            "val/ppl": 2**bpc,
            "val/acc": 0.5,
            "val/loss_best": loss,
            "test/loss": loss + 0.05,
            "test/bpc": bpc + 0.07,
        },
        "global_step": 20,
        "best_ckpt": str(job_dir / "checkpoints" / "best.ckpt"),
        "interrupted": False,
    }
    (job_dir / "metrics.json").write_text(json.dumps(record))
    (job_dir / "csv").mkdir()
    rows = [
        ",0.002,9,,,,,,,,,,,",
        f"0,,9,,,,,{bpc + 1.2},{loss + 0.9},,,,,",
        f"0,,9,,,,,,,0.3,{bpc + 1},{loss + 0.7},{loss + 0.7},9.0",
        f"0,,19,,,,,,,0.5,{bpc},{loss},{loss},5.0",
        f"1,,20,,,,,,,0.5,{bpc},{loss},{loss},5.0",  # train.py re-validates the best checkpoint...
        f"1,,20,0.5,{bpc + 0.07},{loss + 0.05},5.2,,,,,,,",  # ...and tests it
    ]
    (job_dir / "csv" / "metrics.csv").write_text(CSV_HEADER + "\n" + "\n".join(rows) + "\n")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 4-job multirun dir: three finished jobs with different cells and sizes, one crashed."""
    root = tmp_path / "multiruns" / "2026-11-22_15-00-00_123456"
    for name, job in JOBS.items():
        write_job(root / name, *job)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``markdown``, as lists of cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) > 1024, f"{path.name} is suspiciously small"


def test_report_on_sweep(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out

    # Printed and written tables: one row per job, in val/bpc order, the failed job last.
    assert [row[0] for row in table_rows(printed)] == EXPECTED_ORDER
    report_md = (sweep / "report.md").read_text()
    rows = table_rows(report_md)
    assert [row[0] for row in rows] == EXPECTED_ORDER
    assert rows[-1][1] == "failed/no metrics"
    assert all(row[1] == "ok" for row in rows[:-1])
    # The best run is named before the table.
    best_at = report_md.index("Best run: `1`")
    assert best_at < report_md.index("| run |")
    assert "Best run: `1`" in printed.splitlines()[0]

    with (sweep / "report.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["run"] for r in records] == EXPECTED_ORDER
    for record in records:
        cell, hidden, layers, lr, bpc = JOBS[record["run"]]
        assert record["cell"] == cell
        assert int(record["hidden_size"]) == hidden
        assert int(record["num_layers"]) == layers
        assert float(record["lr"]) == lr
        assert int(record["seq_len"]) == 32 and int(record["batch_size"]) == 8
        assert float(record["dropout"]) == 0.1
        assert record["model"] == cell and record["debug"] == "fast"  # keys named only in overrides
        if bpc is None:
            assert record["val/bpc"] == record["test/bpc"] == record["global_step"] == ""
        else:
            assert float(record["val/bpc"]) == pytest.approx(bpc)
            assert float(record["test/bpc"]) == pytest.approx(bpc + 0.07)
            assert float(record["val/loss"]) == pytest.approx(bpc * 0.6931)
            assert int(record["global_step"]) == 20
    assert float(records[0]["val/bpc"]) <= float(records[1]["val/bpc"]) <= float(records[2]["val/bpc"])

    assert_png(sweep / "val_bpc_vs_hidden.png")
    assert_png(sweep / "val_curves.png")


def test_report_out_dir_and_single_run(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([str(sweep / "2"), "--out", str(out)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0][2:4] == ["lstm", "128"]
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "val_bpc_vs_hidden.png", "val_curves.png"}
    assert not (sweep / "report.md").exists()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_clear_error_without_runs(tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nothing-here"
    if make == "empty":
        (target / "sub").mkdir(parents=True)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert ("does not exist" if make == "missing" else "no runs found") in err


def test_curve_leaves_out_post_fit_evaluation(sweep: Path) -> None:
    assert load_curve([sweep / "1" / "csv" / "metrics.csv"]) == [(9, pytest.approx(3.1)), (19, pytest.approx(2.1))]
    assert load_curve([]) == []


@pytest.mark.filterwarnings("ignore:Length of header")  # pandas, on the line with a field too many
def test_curve_of_a_resumed_run_skips_unreadable_logs(tmp_path: Path) -> None:
    """One CSV per start of the run, oldest first: a later one wins a step they share; an empty,
    header-only, binary or missing file is skipped, as are blank, text and non-finite values,
    and a field too many."""
    logs = {"first": "step,val/bpc,train/loss\n0,3.0,\n5,2.8,1.1\n9,2.7,\n", "empty": "", "header": "step,val/bpc\n",
            "binary": "\x00\xff\xfe", "second": "step,val/bpc\n9,2.6,junk\n14,abc\n15,inf\nx,1.0\n19,2.5\n"}
    for name, text in logs.items():
        (tmp_path / f"{name}.csv").write_bytes(text.encode("latin-1"))
    paths = [tmp_path / f"{name}.csv" for name in [*logs, "missing"]]
    assert load_curve(paths) == [(0, 3.0), (5, 2.8), (9, 2.6), (19, 2.5)]
    assert load_curve(paths, "train/loss") == [(5, 1.1)]
    assert load_curve(paths, "no/such/metric") == []


@pytest.mark.parametrize("missing", ["pandas", "matplotlib"])
def test_clear_error_without_the_sweep_extra(sweep: Path, missing: str) -> None:
    """pandas and matplotlib come with `pip install 'rnnlm[sweep]'`: without either, one line says so."""
    code = (f"import runpy, sys; sys.modules[{missing!r}] = None; sys.argv[1:] = [{str(sweep)!r}]; "
            "runpy.run_module('rnnlm.report', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: the sweep report needs pandas and matplotlib: pip install 'rnnlm[sweep]'\n"
    assert not (sweep / "report.md").exists()


def test_parse_override() -> None:
    assert parse_override("model.hidden_size=256") == ("model.hidden_size", "256")
    assert parse_override("+trainer.limit_test_batches=4") == ("trainer.limit_test_batches", "4")
    assert parse_override("model@foo=gru") == ("model", "gru")
    assert parse_override("hydra.run.dir=/tmp/x") is None


def test_curve_labels_drop_shared_overrides(sweep: Path) -> None:
    runs = collect_runs(sweep)
    labels, shared = curve_labels([run for run in runs if run.curve])
    assert shared == ["debug=fast"]
    assert labels[0] == "model=gru model.hidden_size=128 model.optimizer.lr=0.002"


def test_report_gives_vocabulary_parameters_and_throughput(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tokenizer comparisons: vocab and params from hparams.yaml, tokens/s (the median step)
    and chars/s (times the corpus's characters per token) from metrics.csv."""
    job = sweep / "1"
    (job / "csv" / "hparams.yaml").write_text("data/vocab_size: 16384\nmodel/params_total: 3829036\n"
                                             "data/chars: 4000\ndata/tokens: 1000\ncfg:\n  seed: 1\n")
    with (job / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row, rate in zip(rows, ["100", "", "300", "200", "", ""]):
        row["train/device/items_per_sec"] = rate
    with (job / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0]])
        writer.writeheader()
        writer.writerows(rows)
    assert main([str(sweep)]) == 0
    with (sweep / "report.csv").open(newline="") as handle:
        records = {r["run"]: r for r in csv.DictReader(handle)}
    assert records["1"]["vocab"] == "16384" and records["1"]["params"] == "3829036"
    assert float(records["1"]["tokens/s"]) == 200 and float(records["1"]["chars/s"]) == 800
    assert records["0"]["tokens/s"] == records["0"]["vocab"] == ""  # nothing logged: blank, not an error
