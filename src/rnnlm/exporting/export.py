"""``export(cfg)``: what ``python export.py`` does: a checkpoint as ONNX, or as a static web page
that samples it in the browser, optionally quantized to int8."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from rnnlm.exporting.onnx_export import export_onnx
from rnnlm.models.loading import TRAIN_HINT, load_model
from rnnlm.utils.errors import CheckpointError, ConfigError
from rnnlm.utils.options import check_config

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    check_config(cfg)
    ckpt = cfg.get("ckpt")
    path = Path(to_absolute_path(str(ckpt) if ckpt else "outputs"))
    if not ckpt and not path.is_dir():
        raise CheckpointError(f"no checkpoint found under {path}/; {TRAIN_HINT}")
    if path.suffix == ".onnx":
        raise ConfigError(f"ckpt={path} is already exported; pass the checkpoint it came from")
    loaded = load_model(path, "cpu")
    out = Path(to_absolute_path(str(cfg.out)))
    if cfg.format == "web":
        from rnnlm.exporting.web import export_web

        written = export_web(loaded, out, cfg.get("quantize"))
    else:
        written = export_onnx(loaded, out, cfg.get("quantize"))
    return {"bytes": float(written["bytes"])}, {"written": written, "out": out, "format": cfg.format}


def report(metrics: dict[str, float], objects: dict[str, Any]) -> str:
    written = objects["written"]
    meta = written["meta"]
    quantized = f", {meta['quantized']}" if meta["quantized"] else ""
    if objects["format"] == "web":
        what = f"a static page: serve it with `python -m http.server -d {objects['out']}` and open http://127.0.0.1:8000/"
    else:
        what = f"run it with `python sample.py ckpt={written['model']}`"
    return (f"exported {meta['source']} (step {meta['global_step']}, {meta['cell']} {meta['num_layers']}x{meta['hidden_size']}, "
            f"{meta['tokenizer']['kind']} vocabulary {meta['vocab_size']:,}{quantized}) to {objects['out']}: "
            f"{written['model'].name} {metrics['bytes'] / 1e6:.2f} MB; {what}")
