"""``--playground``: the playground's latencies, at a client of a real server on a local port.

The server is ``sample.py mode=serve`` in a process of its own. Time from the request to the
first generated token, one stream's characters per second next to the bare engine's
(``generate`` in this process, the same settings: the ratio is what serving costs), the round
trip of scoring a 10,000-character text, and, where Chromium is installed, what the page
sees: press to first character, one stream's characters per second as drawn, score to drawn.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCORE_CHARS = 10_000


def _stream(url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from it to the end, characters) of one generation."""
    import httpx

    start = time.perf_counter()
    first = None
    chars = 0
    with httpx.stream("POST", url + "api/generate", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            message = json.loads(line[6:])
            for event in message.get("events", []):
                if event["type"] == "step":
                    first = first or time.perf_counter()
                    chars += sum(len(p) for p in event["pieces"])
    end = time.perf_counter()
    return first - start, end - first, chars


def _browser_figures(url: str, text: str, repeats: int) -> dict[str, Any]:
    from benchmarks.browser import chromium_path, generated, opened

    if chromium_path() is None:
        return {"browser": "no chromium: page figures not measured"}
    firsts, scores = [], []
    with opened(url, 1300, 900) as page:
        page.fill("#length", "100")
        for i in range(repeats):
            page.fill("#seed", str(i))
            generated(page)
            firsts.append(float(page.get_attribute("#gen-status", "data-first-ms")))
        page.fill("#length", "3000")
        generated(page, 120_000)
        drawn = float(page.get_attribute("#gen-status", "data-chars-per-s"))
        page.click("button[data-tab='score']")
        page.fill("#score-text", text)
        for _ in range(repeats):
            page.evaluate("delete document.querySelector('#score-timing').dataset.totalMs")
            page.click("#score")
            page.wait_for_selector("#score-timing[data-total-ms]", timeout=60_000)
            scores.append(float(page.get_attribute("#score-timing", "data-total-ms")))
    return {"page_first_char_ms": statistics.median(firsts), "page_stream_chars_per_s": drawn,
            "page_score_10k_drawn_ms": statistics.median(scores), "browser": chromium_path()}


@contextlib.contextmanager
def served(option: str) -> Iterator[str]:
    """``sample.py mode=serve <option>`` in a process of its own (as a user runs it: the
    client here does not share its interpreter); its URL; stopped with Ctrl-C at the end."""
    root = Path(__file__).resolve().parents[3]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.out"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, str(root / "sample.py"), "mode=serve", "port=0", option,
                                     f"hydra.run.dir={tmp}/run"], cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while "playground: http" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sample.py mode=serve did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield log.read_text().split("playground: ")[1].split()[0]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def newest_checkpoint(root: Path) -> Path:
    from rnnlm.sampling.playground.catalogue import Catalogue

    entries = Catalogue(root).entries()
    if not entries:
        raise SystemExit(f"no checkpoint under {root}/: pass one, python -m benchmarks --playground <ckpt>")
    return entries[0].path


def measure_playground(ckpt: str | None, text: str, repeats: int = 5, screenshot: str | None = None) -> dict[str, Any]:
    """The figures above for ``ckpt`` (a .ckpt file; None: the newest under ./outputs), and
    a picture of the page at ``screenshot``."""
    import httpx

    from rnnlm.generation.decoding import DecodeSettings, generate
    from rnnlm.generation.prompt import encode_prompt
    from rnnlm.models.loading import load_model

    root = Path("outputs").resolve()
    path = Path(ckpt).resolve() if ckpt else newest_checkpoint(root)
    loaded = load_model(path)
    score_text = text[int(len(text) * 0.9) :][:SCORE_CHARS]  # the validation split's start
    long = 3000
    with served(f"ckpt={path}" if ckpt else f"checkpoints={root}") as url:
        _stream(url, {"length": 50})  # warm-up
        firsts = [_stream(url, {"length": 100, "seed": i})[0] for i in range(repeats)]
        rates, bare = [], []
        ids = encode_prompt(loaded.tokenizer, "\n")
        for i in range(3):  # interleaved: the machine's speed drifts
            _, seconds, chars = _stream(url, {"length": long, "seed": i, "temperature": 0.8})
            rates.append(chars / seconds)
            start = time.perf_counter()
            tokens = generate(loaded.net, ids, long, 1, DecodeSettings(temperature=0.8), seed=i).tokens[0]
            bare.append(len(loaded.tokenizer.decode(tokens)) / (time.perf_counter() - start))
        scores = []
        for _ in range(repeats):
            start = time.perf_counter()
            httpx.post(url + "api/score", json={"text": score_text}, timeout=300).raise_for_status()
            scores.append(time.perf_counter() - start)
        result = {"ckpt": str(path), "first_token_ms": statistics.median(firsts) * 1000,
                  "stream_chars_per_s": statistics.median(rates), "engine_chars_per_s": statistics.median(bare),
                  "score_10k_ms": statistics.median(scores) * 1000}
        result["stream_over_engine"] = result["stream_chars_per_s"] / result["engine_chars_per_s"]
        try:
            result.update(_browser_figures(url, score_text, repeats))
        except ImportError:
            result["browser"] = "playwright not installed: page figures not measured"
        if screenshot:
            from benchmarks.browser import screenshot as take

            result["screenshot"] = str(take(url, Path(screenshot)))
    return result


def format_playground(result: dict[str, Any]) -> str:
    rows = [
        ("checkpoint", result["ckpt"]),
        ("request to first token", f"{result['first_token_ms']:.1f} ms (median of the requests)"),
        ("one stream", f"{result['stream_chars_per_s']:,.0f} chars/s; the bare engine {result['engine_chars_per_s']:,.0f} "
                       f"chars/s: {result['stream_over_engine']:.2f}x"),
        (f"score {SCORE_CHARS:,} chars", f"{result['score_10k_ms']:.0f} ms round trip"),
    ]
    if "page_first_char_ms" in result:
        rows += [("page: Generate to first char", f"{result['page_first_char_ms']:.1f} ms"),
                 ("page: one stream drawn", f"{result['page_stream_chars_per_s']:,.0f} chars/s"),
                 ("page: Score to drawn (10k chars)", f"{result['page_score_10k_drawn_ms']:.0f} ms")]
    else:
        rows.append(("page", result.get("browser", "")))
    return "\n".join(f"{name:<34}{value}" for name, value in rows)
