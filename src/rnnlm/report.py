"""Summarise a sweep: ``python -m rnnlm.report <sweep dir> [--out DIR]``.

Finds every run dir (one with ``.hydra/config.yaml``) under the given dir, reads its
config, overrides, ``metrics.json`` and ``csv/**/metrics.csv``, and writes ``report.md``,
``report.csv``, ``val_bpc_vs_hidden.png`` and ``val_curves.png``. Needs only files on disk.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from rnnlm.utils.errors import RnnlmError
from rnnlm.utils.files import atomic_open, write_text, write_with

# Config values reported for every run: column name -> dotted key in .hydra/config.yaml.
CONFIG_COLUMNS: dict[str, str] = {
    "cell": "model.cell",
    "hidden_size": "model.hidden_size",
    "num_layers": "model.num_layers",
    "embedding_dim": "model.embedding_dim",
    "dropout": "model.dropout",
    "lr": "model.optimizer.lr",
    "seq_len": "data.seq_len",
    "batch_size": "data.batch_size",
    "tokenizer": "data.tokenizer",
}
# Facts of every run from the CSVLogger's hparams.yaml and metrics.csv (see load_facts).
FACT_COLUMNS = ("vocab", "params", "tokens/s", "chars/s")
# Lightning's ThroughputMonitor, tokens per second: of all devices together (logged with
# more than one), else of the one device.
THROUGHPUT_METRICS = ("train/items_per_sec", "train/device/items_per_sec")
# Final metrics reported for every run: column name -> key in metrics.json.
METRIC_COLUMNS: dict[str, str] = {
    "val/loss": "val/loss",
    "val/bpc": "val/bpc",
    "val/bpc_stateful": "val/bpc_stateful",
    "val/ppl": "val/ppl",
    "val/acc": "val/acc",
    "test/bpc": "test/bpc",
    "global_step": "global_step",
}
SORT_METRIC = "val/bpc"
STATUS_OK = "ok"
STATUS_NO_METRICS = "failed/no metrics"
STATUS_BAD_METRICS = "failed/unreadable metrics"
STATUS_INTERRUPTED = "interrupted"
PLOT_SIZE = (7.0, 4.5)
PLOT_DPI = 100
MAX_LEGEND = 16


class ReportError(RnnlmError):
    """The sweep dir is missing, holds no runs, or the report cannot be written."""


@dataclass
class Run:
    """One training run: where it is, what it was run with and how it ended."""

    name: str
    path: Path
    overrides: list[str]
    config: dict[str, Any]
    override_values: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run's overrides as one string, or its name when it has none."""
        return " ".join(self.overrides) if self.overrides else self.name

    @property
    def val_bpc(self) -> float | None:
        """The final validation bits per character, or None when unknown or not finite."""
        value = _as_float(self.metrics.get(SORT_METRIC))
        return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------- discovery and loading


def find_run_dirs(root: Path) -> list[Path]:
    """Return every run dir at or below ``root`` (a dir holding ``.hydra/config.yaml``), sorted."""
    if not root.exists():
        raise ReportError(f"{root} does not exist: pass a run dir or a sweep dir (e.g. outputs/train/multiruns/<date>)")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory: pass a run dir or a sweep dir")
    found = {cfg.parent.parent for cfg in root.rglob(".hydra/config.yaml") if cfg.is_file()}
    if (root / ".hydra" / "config.yaml").is_file():
        found.add(root)
    if not found:
        raise ReportError(f"no runs found under {root}: no .hydra/config.yaml in it or its subdirs")
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort key that puts job 2 before job 10."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def _as_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_config(path: Path) -> DictConfig:
    """Load a YAML config without resolving it; an unreadable file gives an empty config."""
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # a broken file should not stop the report
        return OmegaConf.create({})
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create({})


def config_value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key``: resolved when possible, else the raw string, else None."""
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=True)
    except Exception:  # interpolations like ${hydra:...} need a Hydra runtime
        node: Any = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        value = node
    if isinstance(value, DictConfig | ListConfig):
        return None
    return value


def load_overrides(path: Path) -> list[str]:
    """The job's override strings from ``.hydra/overrides.yaml`` (empty if missing)."""
    if not path.is_file():
        return []
    try:
        overrides = OmegaConf.load(path)
    except Exception:
        return []
    if not isinstance(overrides, ListConfig):
        return []
    return [str(item) for item in overrides]


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
    for override in overrides:
        parsed = parse_override(override)
        if parsed is None:
            continue
        key, text = parsed
        value = config_value(cfg, key) if not text.startswith("<deleted") else None
        values[key] = value if value is not None else text
    return values


def load_metrics(path: Path) -> tuple[dict[str, Any], str]:
    """Final metrics and a status from ``metrics.json``."""
    if not path.is_file():
        return {}, STATUS_NO_METRICS
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, STATUS_BAD_METRICS
    if not isinstance(record, dict) or not isinstance(record.get("metrics", {}), dict):
        return {}, STATUS_BAD_METRICS
    if record.get("error"):  # a multirun job that stopped on bad input (rnnlm.utils.cli)
        return {}, f"failed: {record['error']}"
    metrics = dict(record.get("metrics") or {})
    metrics["global_step"] = record.get("global_step")
    return metrics, STATUS_INTERRUPTED if record.get("interrupted") else STATUS_OK


def find_metrics_csvs(run_dir: Path) -> list[Path]:
    """The CSVLogger files of a run, oldest first: one ``csv/version_N/metrics.csv`` per
    start of the run (a resumed run adds a version rather than overwriting the history)."""
    if not (run_dir / "csv").is_dir():
        return []
    return sorted((run_dir / "csv").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)


def load_curve(paths: Sequence[Path], metric: str = SORT_METRIC) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``metric`` from CSVLogger files, one per step (the last wins).

    After fitting, ``train`` re-validates the best checkpoint and tests it at the final step;
    a validation row at a step that also has test rows is that re-evaluation, not part of the
    curve, and is left out.
    """
    points: dict[int, float] = {}
    test_steps: set[int] = set()
    for path in paths:
        try:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    step = _as_float(row.get("step"))
                    if step is None:
                        continue
                    if any(key and key.startswith("test/") and value for key, value in row.items()):
                        test_steps.add(int(step))
                    value = _as_float(row.get(metric))
                    if value is not None and math.isfinite(value):
                        points[int(step)] = value
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return sorted((step, value) for step, value in points.items() if step not in test_steps)


def load_facts(paths: Sequence[Path]) -> dict[str, Any]:
    """Vocabulary, parameters, and training tokens and characters per second (the median
    over the logged steps) from a run's CSVLogger files (``metrics.csv`` beside its
    ``hparams.yaml``); missing ones are None."""
    hparams: dict[str, Any] = {}
    rates: list[float] = []
    for path in paths:
        try:
            if path.with_name("hparams.yaml").is_file():
                loaded = yaml.safe_load(path.with_name("hparams.yaml").read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    hparams = {str(k): v for k, v in loaded.items() if not isinstance(v, dict | list)}
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    rate = next((v for key in THROUGHPUT_METRICS if (v := _as_float(row.get(key))) is not None), None)
                    if rate is not None and math.isfinite(rate) and rate > 0:
                        rates.append(rate)
        except Exception:  # a broken file should not stop the report
            continue
    tokens_per_s = float(statistics.median(rates)) if rates else None
    chars, tokens = _as_float(hparams.get("data/chars")), _as_float(hparams.get("data/tokens"))
    return {"vocab": hparams.get("data/vocab_size"), "params": hparams.get("model/params_total"),
            "tokens/s": tokens_per_s,
            "chars/s": tokens_per_s * chars / tokens if tokens_per_s and chars and tokens else None}


def load_run(run_dir: Path, root: Path) -> Run:
    """Read everything the report needs from one run dir."""
    cfg = load_config(run_dir / ".hydra" / "config.yaml")
    overrides = load_overrides(run_dir / ".hydra" / "overrides.yaml")
    metrics, status = load_metrics(run_dir / "metrics.json")
    csvs = find_metrics_csvs(run_dir)
    name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
    return Run(
        name=name or str(run_dir),
        path=run_dir,
        overrides=overrides,
        config={column: config_value(cfg, key) for column, key in CONFIG_COLUMNS.items()},
        override_values=override_values(overrides, cfg),
        metrics=metrics,
        status=status,
        curve=load_curve(csvs),
        facts=load_facts(csvs),
    )


def collect_runs(root: Path) -> list[Run]:
    """Load every run under ``root``, sorted by val/bpc (runs without one last)."""
    runs = [load_run(run_dir, root) for run_dir in find_run_dirs(root)]
    return sorted(runs, key=lambda run: (run.val_bpc is None, run.val_bpc or 0.0))


# ---------------------------------------------------------------- the table


def override_columns(runs: Sequence[Run]) -> list[str]:
    """Overridden keys that are not already config columns, in first-seen order."""
    known = set(CONFIG_COLUMNS.values())
    columns: list[str] = []
    for run in runs:
        for key in run.override_values:
            if key not in known and key not in columns:
                columns.append(key)
    return columns


def table_columns(runs: Sequence[Run]) -> list[str]:
    """All columns of the report, in order."""
    return ["run", "status", *CONFIG_COLUMNS, *override_columns(runs), *FACT_COLUMNS, *METRIC_COLUMNS]


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run with every column (None where unknown)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "status": run.status, **run.config}
        for key in override_columns(runs):
            row[key] = run.override_values.get(key)
        row.update(run.facts)
        row.update({column: run.metrics.get(key) for column, key in METRIC_COLUMNS.items()})
        rows.append(row)
    return rows


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


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(format_cell(row.get(column), column in METRIC_COLUMNS) for column in columns) + " |"
        )
    return "\n".join(lines)


def best_line(runs: Sequence[Run]) -> str:
    """One sentence naming the run with the lowest val/bpc."""
    best = next((run for run in runs if run.val_bpc is not None), None)
    if best is None:
        return "Best run: none (no run has a val/bpc)."
    return f"Best run: `{best.name}` ({best.label}): val/bpc {best.val_bpc:.4f}, at {best.path}"


def markdown_report(root: Path, runs: Sequence[Run]) -> str:
    """The whole ``report.md``: title, best run, counts, the table and the plots."""
    finished = sum(run.val_bpc is not None for run in runs)
    return "\n".join(
        [
            f"# Sweep report: {root}",
            "",
            f"**{best_line(runs)}**",
            "",
            f"{len(runs)} runs, {finished} with a val/bpc; sorted by val/bpc (lower is better).",
            "",
            markdown_table(table_columns(runs), table_rows(runs)),
            "",
            "![val/bpc against hidden size](val_bpc_vs_hidden.png)",
            "",
            "![validation curves](val_curves.png)",
            "",
        ]
    )


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write the table as CSV, with full-precision numbers and blanks for unknowns."""
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: "" if row.get(column) is None else row[column] for column in columns})


# ---------------------------------------------------------------- the plots


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (also used by docs/plot_tinyshakespeare.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_data(ax: Any, text: str) -> None:
    """Mark an empty plot so it is not mistaken for a broken one."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_bpc_vs_hidden(runs: Sequence[Run], path: Path) -> None:
    """Final val/bpc against hidden size, one line (best per size) per (cell, num_layers)."""
    plt = pyplot()
    groups: dict[tuple[str, str], dict[float, list[float]]] = {}
    for run in runs:
        size, bpc = _as_float(run.config.get("hidden_size")), run.val_bpc
        if size is None or size <= 0 or bpc is None:
            continue
        key = (str(run.config.get("cell")), str(run.config.get("num_layers")))
        groups.setdefault(key, {}).setdefault(size, []).append(bpc)
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    try:
        sizes = sorted({size for group in groups.values() for size in group})
        for (cell, layers), points in sorted(groups.items()):
            xs = sorted(points)
            (line,) = ax.plot(xs, [min(points[x]) for x in xs], marker="o", label=f"{cell}, {layers} layer(s)")
            every = [(x, y) for x in xs for y in points[x]]
            if len(every) > len(xs):  # several runs share a size: show them all, line through the best
                ax.scatter(*zip(*every), color=line.get_color(), alpha=0.35, s=16)
        if len(sizes) > 1:
            ax.set_xscale("log", base=2)
        if sizes:
            ax.set_xticks(sizes, [f"{size:g}" for size in sizes])
            ax.legend(fontsize="small")
        else:
            _no_data(ax, "no run has both a hidden size and a val/bpc")
        ax.set_xlabel("hidden size")
        ax.set_ylabel("final val bpc")
        ax.set_title("Validation bits per character against hidden size")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        write_with(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)


def curve_labels(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Legend labels (each run's overrides minus those every run shares) and the shared ones."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    labels = [" ".join(o for o in run.overrides if o not in common) or run.name for run in runs]
    shared = [o for o in runs[0].overrides if o in common] if runs else []
    return labels, shared


def plot_val_curves(runs: Sequence[Run], path: Path) -> None:
    """val/bpc against step for every run with a CSV log, labelled by its overrides."""
    plt = pyplot()
    drawn = [run for run in runs if run.curve]
    labels, shared = curve_labels(drawn)
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    try:
        for run, label in zip(drawn, labels):
            steps, values = zip(*run.curve)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        if not drawn:
            _no_data(ax, "no validation rows in any csv/metrics.csv")
        elif len(drawn) <= MAX_LEGEND:
            ax.legend(fontsize="x-small" if len(drawn) > 6 else "small")
        ax.set_xlabel("step")
        ax.set_ylabel("val bpc")
        title = "Validation bits per character"
        if shared:
            everyone = " ".join(shared)
            title += f"\n(all runs: {everyone if len(everyone) <= 70 else everyone[:67] + '...'})"
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        write_with(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- entry point


def write_report(root: Path, out: Path | None = None) -> str:
    """Collect the runs under ``root``, write all report files to ``out`` and return the table."""
    runs = collect_runs(root)
    out = root if out is None else out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot create output dir {out}: {err.strerror or err}") from err
    columns, rows = table_columns(runs), table_rows(runs)
    try:
        write_text(out / "report.md", markdown_report(root, runs))
        write_csv(out / "report.csv", columns, rows)
        plot_bpc_vs_hidden(runs, out / "val_bpc_vs_hidden.png")
        plot_val_curves(runs, out / "val_curves.png")
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from err
    return f"{best_line(runs)}\n\n{markdown_table(columns, rows)}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m rnnlm.report",
        description="Tabulate and plot the runs of a sweep (or of any dir holding run dirs).",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun sweep dir, a single run dir, or any dir holding runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write report.md/.csv and plots (default: sweep_dir)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the report; print the table, or ``error: <message>`` and return 2."""
    args = parse_args(argv)
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
