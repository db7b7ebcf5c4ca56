"""The playground's server: its API against a real server on a local port, what it computes,
and ``sample.py mode=serve`` from the command line. The page itself: test_playground_browser.py."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from rnnlm.generation.decoding import DecodeSettings
from rnnlm.generation.decoding import generate as generate_tokens
from rnnlm.generation.plan import score_text, text_ids
from rnnlm.generation.prompt import encode_prompt
from rnnlm.generation.stopping import text_pieces
from rnnlm.models.loading import load_model
from rnnlm.models.network import RNNLM
from rnnlm.sampling.playground.analysis import layer_states, rank_units, token_probabilities
from rnnlm.sampling.playground.app import MAX_GENERATIONS, MAX_LENGTH, MAX_TEXT_CHARS
from rnnlm.sampling.playground.server import bind, serve
from rnnlm.utils.errors import CheckpointError, ConfigError
from tests.conftest import compose_config, running_playground
from tests.processes import ROOT, run_script, started

TEXT = "ROMEO:\nWhat light through yonder window breaks?\n\nJULIET:\nAy me!\n"


def events_of(response: httpx.Response) -> list[dict]:
    """Every event of a finished generation stream, batches unpacked."""
    found = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            message = json.loads(line[6:])
            found += message["events"] if message["type"] == "batch" else [message]
    return found


def generate(url: str, **settings) -> list[dict]:
    with httpx.stream("POST", url + "api/generate", json=settings, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return events_of(response)


# ---- what the playground computes -------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_states_are_the_networks_own(cell):
    torch.manual_seed(0)
    net = RNNLM(30, cell, hidden_size=24, num_layers=2, embedding_dim=8).eval()
    ids = torch.randint(0, 30, (200,))
    states = layer_states(net, ids)
    outputs, final = net.rnn(net.embed(ids[None]))
    assert torch.allclose(states[1]["hidden"], outputs[0], atol=1e-5)
    if cell == "lstm":  # the cell state, rebuilt from the gates, ends where nn.LSTM's does
        assert set(states[0]) == {"hidden", "cell"}
        for layer in range(2):
            assert torch.allclose(states[layer]["cell"][-1], final[1][layer, 0], atol=1e-5)
            assert torch.allclose(states[layer]["hidden"][-1], final[0][layer, 0], atol=1e-5)
    else:
        assert set(states[0]) == {"hidden"}


def test_find_cells_ranks_a_unit_that_tracks_line_position_first():
    text = "HERMIA:\nO cross! too high.\n(Aside) \"so\" low\n" * 6
    pieces = list(text)
    column = np.zeros(len(text))
    for i in range(1, len(text)):
        column[i] = 0 if text[i - 1] == "\n" else column[i - 1] + 1
    noise = torch.randn(len(text), 6, generator=torch.Generator().manual_seed(0))
    hidden = noise.clone()
    hidden[:, 4] = torch.from_numpy(column).float() * 0.1 + 0.01 * noise[:, 0]
    cell = noise.flip(1)
    cell[:, 2] = -torch.tensor([ch.isupper() or ch == ":" for ch in text], dtype=torch.float32)
    ranked = rank_units([{"hidden": hidden, "cell": cell}], pieces)
    assert ranked["line_position"]["units"][0] == {"layer": 0, "state": "hidden", "unit": 4,
                                                   "corr": pytest.approx(1.0, abs=0.01)}
    top_speaker = ranked["speaker"]["units"][0]
    assert (top_speaker["state"], top_speaker["unit"]) == ("cell", 2) and top_speaker["corr"] < 0
    assert ranked["brackets"]["units"] and ranked["quotes"]["units"]
    assert ranked["quotes"]["units"][0]["corr"] != 0
    assert rank_units([{"hidden": hidden[:5]}], pieces[:5])["quotes"]["note"]  # no quotes in "HERMI"


def test_token_probabilities_match_the_score(trained, corpus_text):
    loaded = load_model(trained["objects"]["best_ckpt"])
    ids, chars = text_ids(loaded, corpus_text[:3000])
    details = token_probabilities(loaded.net, ids)
    figures = score_text(loaded, ids, chars)
    assert len(details["prob"]) == ids.numel() - 1 == figures["tokens"]
    assert -sum(math.log(p) for p in details["prob"]) / figures["tokens"] == pytest.approx(figures["loss"], rel=1e-4)
    assert all(row[0] >= row[-1] for row in details["top_probs"]) and len(details["top_ids"][0]) == 5
    assert "".join(text_pieces(loaded.tokenizer, ids.tolist())) == corpus_text[:3000]


# ---- the API --------------------------------------------------------------------------

def test_checkpoints_are_listed_newest_first_with_step_and_bits_per_char(playground, trained):
    url, _ = playground
    data = httpx.get(url + "api/checkpoints").json()
    entries = data["checkpoints"]
    assert len(entries) >= 2
    assert [e["mtime"] for e in entries] == sorted((e["mtime"] for e in entries), reverse=True)
    last = next(e for e in entries if e["id"].endswith("checkpoints/last.ckpt"))
    assert last["step"] == 120 and last["val_bpc"] == pytest.approx(trained["metrics"]["val/bpc"], rel=1e-3)
    assert data["defaults"]["temperature"] == 0.8 and data["limits"]["length"] == MAX_LENGTH
    info = httpx.post(url + "api/model", json={"ckpt": last["id"]}).json()
    assert info["cell"] == "lstm" and info["states"] == ["hidden", "cell"] and len(info["vocabulary"]) == info["vocab_size"]


def test_generation_streams_the_engines_tokens(playground, trained):
    url, _ = playground
    events = generate(url, prompt="ROMEO:", length=60, seed=7, num_samples=2, temperature=0.8, top_k=10)
    assert events[0]["type"] == "start" and events[0]["seed"] == 7
    steps = [e for e in events if e["type"] == "step"]
    done = events[-1]
    assert len(steps) == 60 and done["type"] == "done" and done["tokens"] == 120 and not done["stopped"]
    for step in steps:
        for i in range(2):
            top_ids, top_probs = step["top"][0][i], step["top"][1][i]
            assert len(top_ids) == 5 and top_probs == sorted(top_probs, reverse=True)
            assert step["ids"][i] in step["atop"][0][i] or step["q"][i] < step["atop"][1][i][-1] + 1e-6
            assert len(step["atop"][0][i]) <= 5 and sum(step["atop"][1][i]) <= 1 + 1e-4
    # The same text as sample.py's engine gives for that seed and these settings.
    loaded = load_model(next(Path(trained["dir"]).rglob("last.ckpt")))
    ids = encode_prompt(loaded.tokenizer, "ROMEO:")
    expected = generate_tokens(loaded.net, ids, 60, 2, DecodeSettings(temperature=0.8, top_k=10), 7)
    assert [[s["ids"][i] for s in steps] for i in range(2)] == expected.tokens
    again = generate(url, prompt="ROMEO:", length=60, seed=7, num_samples=2, temperature=0.8, top_k=10)
    assert [e["ids"] for e in again if e["type"] == "step"] == [s["ids"] for s in steps]


def test_greedy_and_beam_generations(playground):
    url, _ = playground
    greedy = [e for e in generate(url, prompt="The ", length=20, strategy="greedy") if e["type"] == "step"]
    assert all(s["ids"][0] == s["top"][0][0][0] and s["atop"][1][0] == [1.0] for s in greedy)
    beams = [e for e in generate(url, prompt="The ", length=15, strategy="beam", num_samples=2) if e["type"] == "beam"]
    assert [b["stream"] for b in beams] == [0, 1] and all(len(b["ids"]) == 15 == len(b["p"]) for b in beams)
    wide = generate(url, prompt="The ", length=3, beam_width=40)  # the beam cap is for beam search only
    assert wide[-1]["type"] == "done"
    empty = generate(url, prompt="The ", length=0, strategy="beam")  # its NLL is NaN: sent as null
    assert empty[-1]["type"] == "done" and empty[-1]["nll_per_token"] == [None]


def test_a_stop_string_ends_each_stream_where_its_text_holds_it(playground):
    url, _ = playground
    full = [e for e in generate(url, prompt="ROMEO:", length=80, seed=3, num_samples=3) if e["type"] == "step"]
    texts = ["".join(s["pieces"][i] for s in full) for i in range(3)]
    stop = texts[0][20:22]
    events = generate(url, prompt="ROMEO:", length=80, seed=3, num_samples=3, stop=stop)
    steps, done = [e for e in events if e["type"] == "step"], events[-1]
    for i, whole in enumerate(texts):
        cut = "".join(s["pieces"][i] for s in steps)
        ids = [s["ids"][i] for s in steps if s["ids"][i] is not None]
        assert cut == (whole[: whole.find(stop) + len(stop)] if stop in whole else whole)
        assert ids == [s["ids"][i] for s in full][: len(ids)]
    assert done["tokens"] == sum(s["ids"][i] is not None for s in steps for i in range(3)) < 240
    beams = [e for e in generate(url, prompt="ROMEO:", length=40, strategy="beam", num_samples=2, stop="e")
             if e["type"] == "beam"]
    assert all("e" not in "".join(b["pieces"])[:-1] for b in beams)
    refused = httpx.post(url + "api/generate", json={"stop": "🎭"})
    assert refused.status_code == 400 and "no token of the checkpoint's vocabulary contains" in refused.json()["error"]


def test_scoring_gives_the_numbers_of_score_mode(playground, trained):
    url, _ = playground
    result = httpx.post(url + "api/score", json={"text": TEXT}).json()
    newest = httpx.get(url + "api/checkpoints").json()["checkpoints"][0]["id"]
    loaded = load_model(Path(trained["dir"]) / newest)
    assert result["figures"] == score_text(loaded, *text_ids(loaded, TEXT))  # to the bit: one computation
    assert "".join(result["pieces"]) == TEXT and len(result["p"]) == len(result["pieces"]) - 1
    # The second table: what sampling at the page's settings draws from, sharper at T=0.5.
    sharp = httpx.post(url + "api/score", json={"text": TEXT, "temperature": 0.5, "top_k": 3}).json()
    assert sharp["figures"] == result["figures"] and len(sharp["q"]) == len(result["p"])
    assert all(len(ids) == 3 or probs[3:] == [0.0] * (len(probs) - 3) for ids, probs in zip(*sharp["atop"]))
    assert all(a[0] >= r[0] - 1e-6 for a, r in zip(sharp["atop"][1], result["top"][1]))
    assert "atop" not in httpx.post(url + "api/score", json={"text": TEXT, "temperature": 0}).json()


def test_cell_view_and_find_cells(playground):
    url, _ = playground
    result = httpx.post(url + "api/cells", json={"text": TEXT, "layer": 0, "state": "cell", "unit": 3}).json()
    assert len(result["values"]) == len(result["pieces"]) == len(TEXT)
    assert result["max_abs"] == pytest.approx(max(abs(v) for v in result["values"]), abs=1e-3) and result["max_abs"] > 0
    found = httpx.post(url + "api/find", json={"text": TEXT}).json()["properties"]
    assert set(found) == {"quotes", "brackets", "line_position", "speaker", "word"}
    assert len(found["line_position"]["units"]) == 8 and found["quotes"]["units"] == []
    bad = httpx.post(url + "api/cells", json={"text": TEXT, "layer": 3, "state": "cell", "unit": 0})
    assert bad.status_code == 400 and "layer=3" in bad.json()["error"] and "1 layers" in bad.json()["error"]


@pytest.mark.parametrize("path, body, match", [
    ("api/generate", {"temperature": -1}, "temperature=-1 is not allowed: it must be a finite number >= 0"),
    ("api/generate", {"top_p": 2}, "top_p=2 is not allowed"),
    ("api/generate", {"strategy": "nucleus"}, "strategy='nucleus' is not allowed: it must be one of greedy, sample"),
    ("api/generate", {"length": MAX_LENGTH + 1}, f"length={MAX_LENGTH + 1} is above the playground's cap of {MAX_LENGTH}"),
    ("api/generate", {"num_samples": 50}, "num_samples=50 is above the playground's cap"),
    ("api/generate", {"prompt": "x" * 10_001}, "the prompt has 10,001 characters"),
    ("api/generate", {"length": "many"}, "length='many' is not allowed"),
    ("api/generate", {"path": "/etc/passwd"}, "unknown setting 'path'"),
    ("api/generate", {"ckpt": "../../../etc/passwd"}, "is not one of the checkpoints under"),
    ("api/score", {"ckpt": "/work/../tmp/x.ckpt", "text": "ab"}, "is not one of the checkpoints under"),
    ("api/score", {"text": "x" * (MAX_TEXT_CHARS + 1)}, "at most 20,000"),
    ("api/score", {"text": ""}, "the text is empty"),
    ("api/score", {"text": "a"}, "at least two tokens"),
    ("api/score", {"text": "ab", "top_k": 0}, "top_k=0 is not allowed"),
    ("api/cells", {"text": "abc", "layer": 0, "state": "cell", "unit": 999}, "unit=999; it must be an integer in [0, 47]"),
    ("api/generate", {"beam_width": 1000, "strategy": "beam"}, "beam_width=1000 is above the playground's cap of 16"),
    ("api/generate", {"strategy": "beam", "length": 4000}, "too long for beam search (at most 1000)"),
    ("api/generate", {"seed": 10**400, "length": 1}, "is not allowed"),  # too long for a torch seed
    ("api/generate", {"stop": "x" * 1001, "length": 5}, "stop= has 1,001 characters; it must have at most 1,000"),
])
def test_bad_requests_get_one_line_errors(playground, path, body, match):
    url, _ = playground
    response = httpx.post(url + path, json=body)
    assert response.status_code == 400
    message = response.json()["error"]
    assert match in message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("key, value", [("length_penalty", 10**30), ("temperature", 10**30), ("top_p", 1e300),
                                        ("beam_width", 10**20), ("length", 10**20), ("num_samples", 10**20)])
def test_the_page_and_the_command_line_refuse_a_value_with_the_same_line(playground, tmp_path, key, value):
    """Past its upper bound a number is refused before anything runs, in the same words: a beam
    search with length_penalty=10**30 once froze the server computing an exact integer power."""
    from rnnlm.sampling.sample import sample

    with pytest.raises(ConfigError) as on_the_command_line:
        sample(compose_config("sample", [f"{key}={value}", "ckpt=/nonexistent.ckpt"], tmp_path))
    response = httpx.post(playground[0] + "api/generate", json={"strategy": "beam", "length": 5, key: value})
    assert response.status_code == 400
    assert response.json()["error"] == str(on_the_command_line.value)
    assert f"{key}=" in response.json()["error"] and "<=" in response.json()["error"]


def test_beam_search_at_the_largest_length_penalty_ends(playground):
    events = generate(playground[0], strategy="beam", length=8, length_penalty=10, beam_width=4)
    assert events[-1]["type"] == "done"


def test_malformed_and_oversized_bodies(playground):
    url, _ = playground
    as_json = {"Content-Type": "application/json"}
    assert httpx.post(url + "api/score", content=b"{not json", headers=as_json).json()["error"].startswith("the request body is not JSON")
    assert "JSON object" in httpx.post(url + "api/score", json=[1, 2]).json()["error"]
    big = httpx.post(url + "api/score", content=b"x" * (2 << 20), headers=as_json)
    assert big.status_code == 400 and "at most 1048576" in big.json()["error"]
    chunked = httpx.post(url + "api/score", content=iter([b"x" * (1 << 19)] * 4), headers=as_json)  # no length
    assert chunked.status_code == 400 and "at most 1048576" in chunked.json()["error"]
    # A form or text/plain POST (what another web page may send here unasked) is refused.
    plain = httpx.post(url + "api/generate", content=b'{"length": 5}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 400 and "Content-Type: application/json" in plain.json()["error"]
    assert httpx.get(url + "static/%2e%2e/%2e%2e/conftest.py").status_code == 404
    deep = httpx.post(url + "api/score", content=b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=as_json)
    assert deep.status_code == 400 and deep.json()["error"].startswith("the request body nests too deeply")
    surrogate = httpx.post(url + "api/generate", content=b'{"stop": "\\udfff", "length": 5}', headers=as_json)
    assert surrogate.status_code == 400 and surrogate.json()["error"] == "stop= is not valid text: a lone UTF-16 surrogate at character 0"
    wrong = httpx.get(url + "api/generate")  # Starlette's own refusals answer in JSON too
    assert wrong.status_code == 405 and wrong.json()["error"] == "GET /api/generate: Method Not Allowed"
    assert httpx.get(url + "api/nothing").json()["error"] == "GET /api/nothing: Not Found"
    assert httpx.get(url + "static/..%2f..%2fapp.py").status_code == 404
    assert httpx.get(url + "api/nothing").status_code == 404
    surrogate = httpx.post(url + "api/score", content=b'{"text": "ab\\ud800c"}', headers=as_json)
    assert surrogate.status_code == 400
    assert surrogate.json()["error"] == "the text is not valid text: a lone UTF-16 surrogate at character 2"


def test_only_this_machines_names_are_served(playground):
    url, _ = playground
    port = url.rsplit(":", 1)[1].strip("/")
    assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
    rebound = httpx.get(url + "api/checkpoints", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400  # a DNS-rebinding page names its own host


@pytest.mark.parametrize("body", [
    {"prompt": "${oc.env:HOME}", "length": 3},
    {"prompt": "echo ${HOME} ${", "length": 3},
])
def test_prompts_are_plain_text(playground, body):
    start = generate(playground[0], **body)[0]
    assert start["prompt"] == body["prompt"]  # as typed: nothing in it is resolved


def test_values_are_never_resolved_as_interpolations(playground):
    url, _ = playground
    for path, body in (("api/score", {"text": "ab", "temperature": "${oc.env:HOME}"}),
                       ("api/generate", {"length": "${oc.decode:'null'}"})):
        response = httpx.post(url + path, json=body)
        assert response.status_code == 400 and "is not allowed" in response.json()["error"]
        assert "${" in response.json()["error"] and "/root" not in response.json()["error"]


def test_a_client_that_disconnects_stops_its_generation(playground, gated, caplog):
    url, app = playground
    caplog.set_level(logging.INFO, logger="rnnlm.sampling.playground.app")
    gated.set()
    with httpx.stream("POST", url + "api/generate", json={"length": MAX_LENGTH, "prompt": "A"}, timeout=30) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(3)]  # start, a blank line, the first batch
        assert first[0].startswith("data: ") and '"start"' in first[0]
    deadline = time.monotonic() + 20
    while app.running:  # the worker stopped
        assert time.monotonic() < deadline, "the generation went on after its client left"
        time.sleep(0.05)
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generation ")]
    assert ended and ended[-1].startswith("generation stopped after")
    assert int(ended[-1].split(" after ")[1].split()[0]) < MAX_LENGTH


def test_a_generation_past_the_time_limit_stops_with_what_it_has(playground, gated, monkeypatch, caplog):
    import rnnlm.sampling.playground.app as app_module

    monkeypatch.setattr(app_module, "MAX_GENERATION_SECONDS", 0.3)
    caplog.set_level(logging.WARNING, logger="rnnlm.sampling.playground.app")
    gated.set()
    done = generate(playground[0], length=MAX_LENGTH)[-1]
    assert done["type"] == "done" and done["stopped"] and 0 < done["tokens"] < MAX_LENGTH
    assert "reached the playground's limit of 0.3 s" in caplog.text


def test_twenty_requests_at_once_are_served_or_refused_cleanly(playground, gated):
    url, app = playground
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        status = -1
        try:
            with httpx.stream("POST", url + "api/generate", json={"length": 300, "seed": i}, timeout=120) as response:
                status = response.status_code
                if status == 200:
                    outcome = events_of(response)[-1]["type"]
                else:
                    outcome = json.loads(response.read())["error"]
        except Exception as err:  # recorded: the assertion below shows it
            outcome = f"{type(err).__name__}: {err}"
        with lock:
            results.append((status, outcome))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(results) < 20 - MAX_GENERATIONS:  # the ones past the limit are refused at once
            assert time.monotonic() < deadline, results
            time.sleep(0.02)
        assert app.running == MAX_GENERATIONS
        # While they run, the page still answers.
        assert httpx.get(url + "api/checkpoints", timeout=30).status_code == 200
        assert httpx.post(url + "api/score", json={"text": TEXT}, timeout=60).status_code == 200
    finally:
        gated.set()
        for t in threads:
            t.join(timeout=120)
    assert len(results) == 20
    served = [r for r in results if r == (200, "done")]
    refused = [r for r in results if r[0] == 503]
    assert len(served) == MAX_GENERATIONS and len(refused) == 20 - MAX_GENERATIONS, results
    assert all("8 generations are running (the playground's limit)" in msg for _, msg in refused)
    assert generate(url, length=5)[-1]["type"] == "done"  # and it goes on serving


def test_switching_checkpoints_and_newly_saved_ones(tmp_path, trained):
    run = tmp_path / "runs" / "a" / "checkpoints"
    run.mkdir(parents=True)
    source = Path(trained["objects"]["best_ckpt"])
    (run / "best.ckpt").write_bytes(source.read_bytes())
    (tmp_path / "runs" / "broken.ckpt").write_bytes(b"not a checkpoint")
    with running_playground(tmp_path) as (url, _):
        ids = [e["id"] for e in httpx.get(url + "api/checkpoints").json()["checkpoints"]]
        assert ids == ["runs/a/checkpoints/best.ckpt"]  # the unreadable one is left out
        time.sleep(0.05)
        (run / "last.ckpt").write_bytes(source.read_bytes())
        ids = [e["id"] for e in httpx.get(url + "api/checkpoints").json()["checkpoints"]]
        assert ids == ["runs/a/checkpoints/last.ckpt", "runs/a/checkpoints/best.ckpt"]
        for ckpt in ids:
            assert httpx.post(url + "api/score", json={"ckpt": ckpt, "text": TEXT}).status_code == 200
    # Its threads computed with one torch thread each; a thread started now gets the default again.
    seen = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [torch.get_num_threads()]


# ---- sample.py mode=serve -------------------------------------------------------------

@pytest.mark.slow
def test_serve_from_the_command_line_prints_its_url_and_stops_on_ctrl_c(tmp_path, trained):
    log = tmp_path / "serve.out"
    with log.open("w") as out, started([
        sys.executable, str(ROOT / "sample.py"), "mode=serve", "port=0", f"checkpoints={trained['dir']}",
    ], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT) as proc:
        deadline = time.monotonic() + 120
        while "playground: http://127.0.0.1:" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = log.read_text().split("playground: ")[1].split()[0]
        # The heaviest requests the caps allow, streaming while the page is asked for and Ctrl-C comes.
        worst = [{"strategy": "beam", "beam_width": 16, "length": 1000, "num_samples": 8, "length_penalty": 10},
                 {"length": MAX_LENGTH, "num_samples": 8, "top_p": 0.9}] * 4
        streams = [httpx.stream("POST", url + "api/generate", json=body, timeout=120) for body in worst]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert all(response.status_code == 200 for response in opened)
            page = httpx.get(url, timeout=5)  # the event loop answers while every worker computes
            assert page.status_code == 200 and "rnnlm playground" in page.text
            assert httpx.get(url + "static/playground.js", timeout=5).status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 128 + signal.SIGINT
        finally:
            for stream in streams:
                with contextlib.suppress(httpx.HTTPError):
                    stream.__exit__(None, None, None)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.slow
def test_serve_refuses_a_busy_port_from_the_command_line(tmp_path, trained):
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        busy = run_script("sample.py", "mode=serve", f"port={port}", f"checkpoints={trained['dir']}", cwd=tmp_path)
        assert busy.returncode == 2 and f"error: port {port} on 127.0.0.1 is in use" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        sock.close()


@pytest.mark.parametrize("overrides, error, match", [
    (["checkpoints=empty"], CheckpointError, "no checkpoint that loads under"),
    (["checkpoints=missing"], ConfigError, "checkpoints=.*missing does not exist; train one with `make train`"),
    (["port=70000"], ConfigError, "port=70000 is not allowed: it must be an integer >= 0 and <= 65535"),
    (["ckpt=missing.ckpt"], CheckpointError, "ckpt=.*missing.ckpt does not exist"),
])
def test_serve_refuses_bad_settings_before_listening(tmp_path, overrides, error, match):
    (tmp_path / "empty").mkdir()
    with pytest.raises(error, match=match):
        serve(compose_config("sample", ["mode=serve", "port=0", *overrides], tmp_path))


def test_the_command_lines_options_are_the_pages_defaults_resolved(trained):
    with running_playground(trained["dir"], "length=${num_samples}", "temperature=0.5", "num_samples=3") as (url, _):
        defaults = httpx.get(url + "api/checkpoints").json()["defaults"]
        assert (defaults["length"], defaults["temperature"], defaults["num_samples"]) == (3, 0.5, 3)
        assert generate(url, prompt="A")[-1]["tokens"] == 9  # 3 samples of 3 tokens


def test_a_failure_of_ours_is_a_500_in_one_line_and_the_server_goes_on(playground, monkeypatch):
    url, app = playground

    def broken():
        raise RuntimeError("the catalogue broke\nsecond line")

    monkeypatch.setattr(app.catalogue, "entries", broken)
    response = httpx.get(url + "api/checkpoints")
    assert response.status_code == 500
    assert response.json() == {"error": "the server failed on this request (RuntimeError: the catalogue broke)"}
    monkeypatch.undo()
    assert httpx.get(url + "api/checkpoints").status_code == 200
    bad = httpx.post(url + "api/generate", json={"length": -1})
    assert bad.status_code == 400 and bad.json()["error"].startswith("length=-1 is not allowed")
