"""What an export costs and gives, measured the way users run it (``export.py``, ``sample.py``
and the page in headless Chromium), in one run:

    python -m benchmarks.export <checkpoint> <text file to score> [--length 2000] [--repeats 3]

Prints the files' sizes, ``mode=score`` bits/char of the text for the checkpoint, the fp32 and
the int8 ONNX models, and greedy characters per second (the median of ``--repeats``) from
``sample.py`` on each and from the exported page on each, with whether the texts agree."""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.browser import CHROMIUM_FLAGS, chromium_path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:"


class QuietHandler(SimpleHTTPRequestHandler):
    """Python's static file server, without a log line per request."""

    def log_message(self, *args: Any) -> None:
        pass


def _run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"{script} {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def _result(out: str) -> dict[str, Any]:
    written = [line for line in out.splitlines() if line.startswith("written: ")][-1]
    return json.loads(Path(written.removeprefix("written: ").strip()).read_text(encoding="utf-8"))


def _page_greedy(directory: Path, length: int, repeats: int) -> tuple[float, str]:
    """Greedy characters per second of the exported page (median) and its text."""
    from playwright.sync_api import sync_playwright

    handler = functools.partial(QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html?prompt={PROMPT}&strategy=greedy&length={length}&run=1"
    speeds, text = [], ""
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
            try:
                for _ in range(repeats):
                    page = browser.new_page()
                    page.goto(url)
                    page.wait_for_function("document.querySelector('#status').dataset.done === '1'", timeout=600_000)
                    speeds.append(float(page.eval_on_selector("#status", "e => e.dataset.charsPerS")))
                    text = page.eval_on_selector("#output", "e => e.textContent")
                    page.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return statistics.median(speeds), text


def _agree(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return "same text" if at is None and len(a) == len(b) else f"differs from character {at}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("text", type=Path, help="a UTF-8 text to score (e.g. the validation split)")
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ckpt, text = args.ckpt.resolve(), args.text.resolve()
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-export-") as scratch:
        work = Path(scratch)
        models = {"checkpoint": ckpt}
        for name, extra in (("fp32", []), ("int8", ["quantize=int8"])):
            _run("export.py", f"ckpt={ckpt}", f"out={work / name}", "format=web", *extra, cwd=work)
            models[name] = work / name / "model.onnx"
        print(f"{ckpt.name}: {ckpt.stat().st_size / 1e6:.2f} MB; model.onnx fp32 {models['fp32'].stat().st_size / 1e6:.2f} MB, "
              f"int8 {models['int8'].stat().st_size / 1e6:.2f} MB")
        texts: dict[str, str] = {}
        for name, model in models.items():
            scored = _result(_run("sample.py", f"ckpt={model}", "mode=score", f"text_file={text}", cwd=work))
            speeds = []
            for _ in range(args.repeats):
                sampled = _result(_run("sample.py", f"ckpt={model}", "strategy=greedy", f"prompt={PROMPT}",
                                       f"length={args.length}", "stream=false", cwd=work))
                speeds.append(sampled["tokens_per_s"])
                texts[name] = sampled["samples"][0]["text"]
            print(f"{name:>10}: {scored['bpc']:.5f} bits/char over {scored['chars']:,.0f} characters; sample.py greedy "
                  f"{statistics.median(speeds):,.0f} tokens/s; {_agree(texts[name], texts['checkpoint'])} as the checkpoint's")
        if chromium_path() is None:
            print("the page: not measured (no Chromium: apt-get install chromium)")
            return 0
        for name in ("fp32", "int8"):
            speed, shown = _page_greedy(work / name, args.length, args.repeats)
            print(f"{'page ' + name:>10}: greedy {speed:,.0f} characters/s in Chromium; {_agree(shown, texts[name])} as sample.py's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
