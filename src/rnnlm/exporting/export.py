"""``export(cfg)``: what ``python export.py`` does: a checkpoint as ONNX, or as a static web page
that samples it in the browser, optionally quantized to int8."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from rnnlm.exporting.onnx_export import export_onnx
from rnnlm.generation.plan import score_text, text_ids
from rnnlm.models.loading import TRAIN_HINT, load_model, load_onnx
from rnnlm.utils.errors import CheckpointError, ConfigError
from rnnlm.utils.options import check_config, existing_path

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
    metrics = {"bytes": float(written["bytes"])}
    if cfg.get("text_file"):  # the exported model's bits/char on held-out text (int8: and fp32's, side by side)
        text = read_text(cfg.text_file)
        metrics["bpc"] = onnx_bpc(written["model"], text)
        if cfg.get("quantize"):
            with tempfile.TemporaryDirectory(prefix="rnnlm-export-fp32-") as scratch:
                metrics["fp32_bpc"] = onnx_bpc(export_onnx(loaded, Path(scratch))["model"], text)
    return metrics, {"written": written, "out": out, "format": cfg.format}


def read_text(option: Any) -> str:
    path = existing_path("text_file", to_absolute_path(str(option)), "pass a UTF-8 text held out from training")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"text_file={path} is not UTF-8 (byte {err.start}); pass a UTF-8 text") from None


def onnx_bpc(model: Path, text: str) -> float:
    """``sample.py mode=score``'s bits per character of ``text`` under an exported model."""
    loaded = load_onnx(model)
    return float(score_text(loaded, *text_ids(loaded, text))["bpc"])


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
            f"{written['model'].name} {metrics['bytes'] / 1e6:.2f} MB{scored(metrics)}; {what}")


def scored(metrics: dict[str, float]) -> str:
    if "bpc" not in metrics:
        return ""
    fp32 = f" (fp32: {metrics['fp32_bpc']:.5f})" if "fp32_bpc" in metrics else ""
    return f", {metrics['bpc']:.5f} bits/char on text_file{fp32}"
