"""``format=web``: a static directory that samples the model in the browser, with no server code:
the page (``page/``), the model as ONNX with ``rnnlm.json``, and onnxruntime-web's WebAssembly
runtime copied in from its npm package (installed once, at export time, with npm; the page
fetches nothing from elsewhere). Serve it from any static host: ``python -m http.server -d <out>``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rnnlm.exporting.onnx_export import export_onnx
from rnnlm.models.loading import LoadedModel
from rnnlm.utils.errors import ConfigError

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page")
PAGE_FILES = ("index.html", "sampler.js", "page.css")
ORT_WEB_VERSION = "1.31.1"  # the npm package onnxruntime-web
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # the WebAssembly build
# Where the runtime is looked for, then installed: RNNLM_WEB_RUNTIME, or the user's cache.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnlm" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def web_runtime() -> Path:
    """The directory holding onnxruntime-web's files, installed from npm the first time."""
    given = os.environ.get("RNNLM_WEB_RUNTIME")
    roots = [Path(given)] if given else [CACHE]
    for root in roots:
        dist = root / "node_modules" / "onnxruntime-web" / "dist"
        if all((dist / name).is_file() for name in ORT_FILES):
            return dist
    if given:
        raise ConfigError(f"RNNLM_WEB_RUNTIME={given} holds no node_modules/onnxruntime-web/dist; "
                          f"run `npm install --prefix {given} onnxruntime-web@{ORT_WEB_VERSION}` or unset it")
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("format=web copies onnxruntime-web's WebAssembly runtime into the page, installed once with "
                          "npm, which is not on PATH; install Node.js and npm (or pass format=onnx)")
    log.info("installing onnxruntime-web %s into %s (once)", ORT_WEB_VERSION, CACHE)
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--no-save",
                           f"onnxruntime-web@{ORT_WEB_VERSION}"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"npm could not install onnxruntime-web@{ORT_WEB_VERSION} ({last}); "
                          "check the connection to the npm registry, or set RNNLM_WEB_RUNTIME to an installed copy")
    return web_runtime()


def export_web(loaded: LoadedModel, out: Path, quantize: str | None = None) -> dict[str, Any]:
    """The model as ONNX plus the page and the runtime, in ``out``."""
    if loaded.tokenizer.kind == "bpe":
        raise ConfigError("format=web takes char and word models: a BPE model's prompts need the tokenizers library's "
                          "byte-level BPE, which the page does not carry; export it with format=onnx for sample.py")
    runtime = web_runtime()
    written = export_onnx(loaded, out, quantize)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(runtime / name, out / "ort" / name)
    return written
