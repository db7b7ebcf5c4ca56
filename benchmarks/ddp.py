"""``--ddp``: each rank's anonymous memory in a 2-rank CPU DDP run of ``train.py``, on a small
corpus and on a large one, both prepared first (``prepare_only=true``, the login-node recipe).

The ranks map the prepared token file, so what they hold of the corpus is page cache (shared,
reclaimable), not ``RssAnon``; the difference between the two corpora is what a rank's own
memory grows by with the corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from benchmarks.common import MB, Plan, proc_status_mb
from benchmarks.data import write_corpus


class RecordMemory(pl.Callback):
    """Writes this rank's ``RssAnon`` and ``VmRSS`` (MB) at the start and end of training to
    ``<output_dir>/rank<global_rank>.json``."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.record: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.update(start_anon_mb=proc_status_mb("RssAnon"), start_rss_mb=proc_status_mb("VmRSS"))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.update(end_anon_mb=proc_status_mb("RssAnon"), end_rss_mb=proc_status_mb("VmRSS"),
                           steps=trainer.global_step)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record), encoding="utf-8")


def train_script() -> Path:
    """The repository's ``train.py`` (the package is installed editable from ``src/``)."""
    import rnnlm

    script = Path(rnnlm.__file__).resolve().parents[2] / "train.py"
    if not script.is_file():
        raise SystemExit(f"--ddp runs the repository's train.py, which is not at {script}; run it from a checkout")
    return script


def _run(command: list[str], cwd: str) -> None:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "WANDB_MODE": "disabled"}, stdin=subprocess.DEVNULL, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-6:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def measure_ddp_memory(plan: Plan, text: str, sizes_mb: tuple[float, ...], directory: str | None = None,
                       steps: int = 30) -> dict[str, Any]:
    """Per corpus size: prepare it, then train ``steps`` steps with 2 CPU ranks; each rank's memory."""
    script = train_script()
    per_size: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-ddp-", dir=directory) as tmp:
        for size in sizes_mb:
            path, cache = Path(tmp) / f"corpus-{size:g}mb.txt", Path(tmp) / "cache"
            write_corpus(path, text, int(size * MB))
            common = [f"data.path={path}", f"data.cache_dir={cache}", f"data.seq_len={plan.seq_len}",
                      f"data.batch_size={plan.batch_size}", "model.hidden_size=64", "model.num_layers=1",
                      "model.stateful_eval_lanes=null", "logger=none", "callbacks=none", "test=false",
                      f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                      "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false"]
            start = time.perf_counter()
            _run([sys.executable, str(script), *common, "prepare_only=true", f"hydra.run.dir={tmp}/prepare-{size:g}"], tmp)
            prepare_s = time.perf_counter() - start
            memory = Path(tmp) / f"memory-{size:g}"
            start = time.perf_counter()
            _run([sys.executable, str(script), *common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  "+callbacks.memory._target_=benchmarks.ddp.RecordMemory", f"+callbacks.memory.output_dir={memory}",
                  f"hydra.run.dir={tmp}/train-{size:g}"], tmp)
            ranks = [json.loads((memory / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
            per_size[f"{size:g}mb"] = {"prepare_s": prepare_s, "train_s": time.perf_counter() - start, "ranks": ranks}
            path.unlink()
    small, large = (per_size[f"{size:g}mb"] for size in (min(sizes_mb), max(sizes_mb)))
    return {
        "ddp_by_size": per_size,
        "ddp_anon_growth_mb": [big["end_anon_mb"] - little["end_anon_mb"]
                               for little, big in zip(small["ranks"], large["ranks"])],
    }
