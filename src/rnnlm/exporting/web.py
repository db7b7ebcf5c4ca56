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
from rnnlm.utils.options import OPTIONS

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page")
PAGE_FILES = ("index.html", "sampler.js", "page.css")
ORT_WEB_VERSION = "1.31.1"  # the npm package onnxruntime-web
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # the WebAssembly build
# Where the runtime is looked for, then installed: RNNLM_WEB_RUNTIME, or the user's cache.
NPM_SECONDS = 600  # an npm that cannot reach its registry retries for minutes
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnlm" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def _installed(root: Path) -> Path | None:
    dist = root / "node_modules" / "onnxruntime-web" / "dist"
    return dist if all((dist / name).is_file() for name in ORT_FILES) else None


def web_runtime() -> Path:
    """The directory holding onnxruntime-web's files, installed from npm the first time."""
    given = os.environ.get("RNNLM_WEB_RUNTIME")
    found = _installed(Path(given) if given else CACHE)
    if found is not None:
        return found
    if given:
        raise ConfigError(f"RNNLM_WEB_RUNTIME={given} holds no node_modules/onnxruntime-web/dist; "
                          f"run `npm install --prefix {given} onnxruntime-web@{ORT_WEB_VERSION}` or unset it")
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("format=web copies onnxruntime-web's WebAssembly runtime into the page, installed once with "
                          "npm, which is not on PATH; install Node.js and npm (or pass format=onnx)")
    log.info("installing onnxruntime-web %s into %s (once)", ORT_WEB_VERSION, CACHE)
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--no-save", f"onnxruntime-web@{ORT_WEB_VERSION}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=NPM_SECONDS)
        problem = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        problem = f"no answer in {NPM_SECONDS} s"
    found = _installed(CACHE)
    if problem is not None or found is None:
        raise ConfigError(f"npm could not install onnxruntime-web@{ORT_WEB_VERSION} ({problem or 'its files are not where expected'}); "
                          "check the connection to the npm registry, or set RNNLM_WEB_RUNTIME to an installed copy")
    return found


def export_web(loaded: LoadedModel, out: Path, quantize: str | None = None) -> dict[str, Any]:
    """The model as ONNX plus the page and the runtime, in ``out``."""
    if loaded.tokenizer.kind == "bpe":
        raise ConfigError("format=web takes char and word models: a BPE model's prompts need the tokenizers library's "
                          "byte-level BPE, which the page does not carry; export it with format=onnx for sample.py")
    runtime = web_runtime()
    limits = {key: [OPTIONS[key].low, OPTIONS[key].high] for key in ("length", "temperature", "top_k", "top_p", "seed")}
    written = export_onnx(loaded, out, quantize, extra={"limits": limits})  # the page checks as sample.py does
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(runtime / name, out / "ort" / name)
    return written
