"""The page `python export.py format=web` writes, in a real browser: Debian's headless Chromium
driven by Playwright opens it from a local static server (Python's http.server: no rnnlm code
serves it) and samples the model with onnxruntime-web. Skipped, saying why, without Chromium,
Playwright or npm (the page's runtime is installed from the npm registry at export time)."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
import torch

from rnnlm.models.loading import load_model
from rnnlm.sampling.sample import sample
from tests.conftest import compose_config
from tests.test_export import TOKENIZERS, run_export, write_checkpoint

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium(browser):
    """The suite's headless Chromium (tests/conftest.py), once npm can install the page's runtime."""
    if shutil.which("npm") is None:
        pytest.skip("BROWSER TESTS NOT RUN: format=web installs onnxruntime-web with npm, which is not on PATH")
    return browser


@pytest.fixture
def served(tmp_path):
    """A plain static file server on a free local port, for the directory given."""
    servers = []

    def serve(directory):
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    try:
        yield serve
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    """Python's static file server, without a log line per request."""

    def log_message(self, *args: Any) -> None:
        pass


def first_near_tie(ckpt, prompt_ids, length):
    """The first greedy step whose two best logits differ by less than 1e-4 (None: no such step):
    WebAssembly's float sums may order such a pair differently from the CPU kernels."""
    loaded = load_model(ckpt, "cpu")
    ids, state = torch.tensor([prompt_ids]), None
    with torch.no_grad():
        for step in range(length):
            logits, state = loaded.net(ids, state)
            top = logits[0, -1].topk(2).values
            if float(top[0] - top[1]) < 1e-4:
                return step
            ids = logits[0, -1].argmax().view(1, 1)
    return None


@pytest.mark.parametrize("model", ["trained char LSTM", "word GRU"])
def test_the_exported_page_samples_the_checkpoints_greedy_text(tmp_path, chromium, served, trained, model):
    if model == "trained char LSTM":
        ckpt = trained["objects"]["best_ckpt"]
    else:  # random weights, calibrated: the graph's logit scale is what the page samples from
        ckpt = write_checkpoint(tmp_path / "last.ckpt", TOKENIZERS["word"](), "gru", scale=1.25)
    out = run_export(tmp_path, ckpt, "format=web")[1]["out"]
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "model.onnx", "ort", "page.css", "rnnlm.json", "sampler.js"]
    prompt, length = "ROMEO:", 120
    _, objects = sample(compose_config("sample", [f"ckpt={ckpt}", "strategy=greedy", f"prompt={prompt}", f"length={length}",
                                                  "stream=false"], tmp_path / "sample"))
    expected = objects["record"]["samples"][0]["text"]
    url = served(out)
    context = chromium.new_context()
    tab = context.new_page()
    problems, requests = [], []
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.on("request", lambda request: requests.append(request.url))
    try:
        tab.goto(f"{url}index.html?prompt={quote(prompt)}&strategy=greedy&length={length}&run=1")
        tab.wait_for_function("document.querySelector('#status').dataset.done === '1'", timeout=60_000)
        shown = tab.eval_on_selector("#output", "e => e.textContent")
        loaded = load_model(ckpt, "cpu")
        tie = first_near_tie(ckpt, loaded.tokenizer.encode(prompt).tolist(), length)
        if tie is None:
            assert shown == expected
        else:  # equal up to the first near-tie, where the two runtimes may part
            assert shown[: len(prompt) + tie] == expected[: len(prompt) + tie]
        assert not problems, problems
        assert all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]  # nothing leaves the machine
        title = tab.get_attribute("#output span:not(.prompt)", "title")
        assert title.startswith("p = ") and len(title.splitlines()) == 6  # the token's p and the top five
    finally:
        context.close()


def test_a_bpe_model_is_refused_for_the_web_in_one_line(tmp_path):
    from rnnlm.utils.errors import ConfigError

    ckpt = write_checkpoint(tmp_path / "last.ckpt", TOKENIZERS["bpe"]())
    with pytest.raises(ConfigError, match="format=web takes char and word models"):
        run_export(tmp_path, ckpt, "format=web")
