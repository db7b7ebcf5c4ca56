"""The playground page in a real browser: Debian's headless Chromium driven by Playwright,
against a server on a free local port offering the tiny run's checkpoints.

Without Chromium (``apt-get install chromium``; ``.ci/run`` installs it) or Playwright these
tests are skipped, and the skip says why in the summary; they never pass without running.
"""

from __future__ import annotations

import re

import pytest

from rnnlm.generation.plan import score_text, text_ids
from rnnlm.models.loading import load_model

pytestmark = pytest.mark.browser
TEXT = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"


@pytest.fixture
def page(browser, playground):
    """The page, loaded and ready; at the end no console errors or uncaught exceptions."""
    url, _ = playground
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}")
           if not request.url.endswith("/api/generate") else None)  # Stop aborts a stream on purpose
    try:
        tab.goto(url)
        tab.wait_for_selector("body[data-ready='1']", timeout=30_000)
        tab.expected_errors = []  # console messages a test provokes on purpose
        yield tab
        assert [m for m in problems if not any(e in m for e in tab.expected_errors)] == []
        assert all(request.startswith(url) or request.startswith("data:") for request in tab.evaluate(
            "performance.getEntriesByType('resource').map((e) => e.name)"))  # nothing from the internet
    finally:
        context.close()


def test_page_loads_with_its_checkpoints(page, trained):
    options = page.locator("#ckpt option").all_inner_texts()
    assert len(options) >= 2 and any(re.search(r"last\.ckpt — step 120, val \d\.\d{3} bits/char", o) for o in options)
    assert "LSTM 1×48" in page.inner_text("#model-info")
    assert page.input_value("#temperature") == "0.8"


def generate_and_wait(page, **fields: str) -> None:
    """Fill the Generate tab's ``fields`` (input id: value), press Generate, wait for the end."""
    for name, value in fields.items():
        if name == "strategy":
            page.select_option("#strategy", value)
        else:
            page.fill(f"#{name}", value)
    page.click("#generate")
    page.wait_for_selector("#gen-status[data-done='1']", timeout=60_000)


def test_prompt_streams_text_with_confidence_on_hover(page):
    generate_and_wait(page, prompt="ROMEO:", length="120", seed="3")
    sample = page.locator(".sample").first
    assert sample.locator(".prompt").inner_text() == "ROMEO:"
    tokens = sample.locator("span[data-i]")
    assert tokens.count() == 120
    assert "done: 120 tokens" in page.inner_text("#gen-status") and "seed 3" in page.inner_text("#gen-status")
    colours = {tokens.nth(i).evaluate("(s) => s.style.backgroundColor") for i in range(20)}
    assert len(colours) > 3  # coloured by probability, which varies
    tokens.nth(5).hover()
    tables = page.locator("#details table.top5")
    assert tables.count() == 2  # the model's distribution and the one sampled from (T=0.8)
    assert tables.nth(0).locator("tr").count() == 5
    assert "sampled from (T=0.8" in page.inner_text("#details")
    raw = [float(v) for v in tables.nth(0).locator("td:last-child").all_inner_texts()]
    adjusted = [float(v) for v in tables.nth(1).locator("td:last-child").all_inner_texts()]
    assert raw == sorted(raw, reverse=True) and adjusted[0] >= raw[0]  # T < 1 sharpens


def test_stop_ends_a_long_generation(page, gated):
    gated.set()  # 2 ms a step: 5,000 steps outlast the click
    page.fill("#length", "5000")
    page.click("#generate")
    page.wait_for_selector(".sample span[data-i]", timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#gen-status').textContent.startsWith('stopped')", timeout=30_000)
    assert page.locator(".sample span[data-i]").count() < 5000
    assert not page.is_disabled("#generate")


def test_beam_search_and_an_empty_beam(page):
    generate_and_wait(page, strategy="beam", num_samples="2", length="12")
    assert page.locator(".sample").count() == 2 and page.locator(".sample span[data-i]").count() == 24
    page.fill("#length", "0")  # no tokens: its NLL is NaN, sent as null and shown as a dash
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gen-status').textContent.includes('nll –')", timeout=60_000)


def test_bad_settings_show_the_clis_error(page):
    page.expected_errors.append("the server responded with a status of 400 (Bad Request)")  # Chromium logs it
    page.fill("#temperature", "-1")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "temperature=-1 is not allowed: it must be a finite number >= 0" in page.inner_text("#error")


def test_scoring_shows_the_loss_of_score_mode(page, trained, playground):
    url, app = playground
    page.click("button[data-tab='score']")
    page.fill("#score-text", TEXT)
    page.click("#score")
    page.wait_for_selector("#score-timing[data-total-ms]", timeout=60_000)
    loaded = load_model(app.catalogue.entry(page.input_value("#ckpt")).path)
    expected = score_text(loaded, *text_ids(loaded, TEXT))
    shown = page.inner_text("#score-figures")
    assert f"loss {expected['loss']:.4f} nats/token" in shown and f"{expected['bpc']:.4f} bits/char" in shown
    assert float(page.get_attribute("#score-figures", "data-loss")) == pytest.approx(expected["loss"], rel=1e-9)
    spans = page.locator("#score-view span[data-i]")
    assert spans.count() == len(TEXT)
    spans.nth(10).hover()
    assert "surprisal" in page.inner_text("#details") and "sampling would draw from (T=0.8)" in page.inner_text("#details")
    assert page.locator("#details table.top5").count() == 2 and page.locator("#details tr").count() == 10


def test_cell_view_colours_text_and_find_cells_picks_a_unit(page):
    page.click("button[data-tab='inside']")
    assert page.locator("#state option").all_inner_texts() == ["hidden state", "cell state"]
    page.select_option("#state", "cell")
    page.fill("#unit", "7")
    page.click("#show-cell")
    page.wait_for_selector("#cell-view span[data-i]")
    spans = page.locator("#cell-view span[data-i]")
    assert spans.count() == len(page.input_value("#cell-text"))
    colours = {spans.nth(i).evaluate("(s) => s.style.backgroundColor") for i in range(0, 60, 3)}
    assert len(colours) > 3
    assert page.inner_text("#cell-caption").startswith("layer 0 · cell state · unit 7")
    page.click("#find-cells")
    button = page.locator("#find-results button[data-property='line_position']").first
    button.wait_for()
    label = button.inner_text()  # "layer 0 cell 17: r = +0.83"
    button.click()
    layer, state, unit = re.match(r"layer (\d+) (\w+) (\d+):", label).groups()
    page.wait_for_function(f"document.querySelector('#cell-caption').textContent.startsWith('layer {layer} · {state} state · unit {unit}')")
    assert page.input_value("#unit") == unit


def test_switching_checkpoints(page, playground):
    _, app = playground
    entries = app.catalogue.entries()
    first, other = entries[0], next(e for e in entries if e.step != entries[0].step)
    assert page.input_value("#ckpt") == first.id and f"step {first.step}" in page.inner_text("#model-info")
    page.select_option("#ckpt", other.id)
    page.wait_for_function(f"document.querySelector('#model-info').textContent.endsWith('step {other.step}')")
    page.click("button[data-tab='score']")
    page.fill("#score-text", TEXT)
    page.click("#score")
    page.wait_for_selector("#score-timing[data-total-ms]", timeout=60_000)
    loaded = load_model(other.path)
    assert f"loss {score_text(loaded, *text_ids(loaded, TEXT))['loss']:.4f}" in page.inner_text("#score-figures")
