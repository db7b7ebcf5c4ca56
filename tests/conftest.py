"""Shared fixtures: a small real corpus and a tiny CPU training config per test."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from benchmarks.browser import CHROMIUM_FLAGS, chromium_path
from rnnlm.data.corpus import shakespeare_plays
from tests.processes import HERMETIC_ENV, ROOT, hermetic_env

CONF_DIR = str(ROOT / "conf")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need CUDA: without it each is skipped, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU TESTS NOT RUN: no CUDA device here (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def hermetic_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same environment and working directory whoever started the suite, and how; prepared
    corpora go to one cache dir of this session (``paths.cache_dir`` reads ``RNNLM_CACHE_DIR``)."""
    HERMETIC_ENV["RNNLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("corpus-cache"))
    clean = hermetic_env()
    with pytest.MonkeyPatch.context() as patch:
        for name in set(os.environ) - set(clean):
            patch.delenv(name)
        for name, value in clean.items():
            patch.setenv(name, value)
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def hermetic_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own empty directory: relative paths (``outputs/``) land there."""
    monkeypatch.chdir(tmp_path)


# The one tiny run of the suite (a few seconds on 2 cores): a test adds what it is about. The
# same list is the command-line form: ``run_script("train.py", *TINY, ...)`` reads it as
# ``compose_config("train", TINY)`` does.
TINY = [
    "model.hidden_size=48",
    "model.num_layers=1",
    "model.embedding_dim=16",
    "data.seq_len=32",
    "data.batch_size=16",
    "trainer=cpu",
    "trainer.precision=32-true",  # the same arithmetic on every CPU; auto is tested on its own
    "trainer.max_steps=40",
    "trainer.max_time=null",
    "trainer.val_check_interval=20",
    "trainer.limit_val_batches=4",
    "+trainer.limit_test_batches=4",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=5",
    "logger=csv",
    "callbacks.sample_text.every_n_steps=20",
    "callbacks.sample_text.length=20",
    "callbacks.progress_bar=null",
]


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 150 kB of the embedded plays: real text, small enough for seconds-long runs."""
    return shakespeare_plays()[0][:150_000]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


def compose_config(name: str, overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
    """``conf/<name>.yaml`` (``train`` or ``sample``) with ``overrides``, as the task gets it
    from Hydra, outside a Hydra run: ``output_dir`` (if given) stands in for the run dir
    Hydra would make (``paths.output_dir`` of a training run, ``output_dir`` of sampling)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    if output_dir is not None:
        with open_dict(cfg):
            if name == "train":
                cfg.paths.output_dir = str(output_dir)
                cfg.paths.root_dir = str(ROOT)
            else:
                cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def cfg_train(tmp_path: Path, corpus_file: Path) -> DictConfig:
    return compose_config("train", [*TINY, f"data.path={corpus_file}"], tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict:
    """One tiny run shared by the tests that need a trained model or a checkpoint."""
    from rnnlm.training.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", [*TINY, f"data.path={corpus_file}", "trainer.max_steps=120", "trainer.val_check_interval=40"], out)
    metrics, objects = train(cfg)
    return {"metrics": metrics, "objects": objects, "dir": out}


class StopAtStep(pl.Callback):
    """Ends fitting after ``step`` steps of a longer run, as an interruption would
    (``+callbacks.stop._target_=tests.conftest.StopAtStep +callbacks.stop.step=N``)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@contextlib.contextmanager
def running_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port from a thread of this process; yields its URL; stopped, and
    the thread joined, when the block exits."""
    import uvicorn

    from rnnlm.sampling.playground import server as server_module

    sock = server_module.bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=server_module.SHUTDOWN_SECONDS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="playground-server")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the playground server did not start")
            time.sleep(0.02)
        yield server_module.url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def running_playground(root: Path, *overrides: str) -> Iterator[tuple[str, Any]]:
    """(URL, Playground): the app serving ``root``'s checkpoints on a free local port, in a
    thread of this process, with sample.py's defaults (and ``overrides``)."""
    from rnnlm.sampling.playground.catalogue import Catalogue
    from rnnlm.sampling.playground.server import app_for

    app = app_for(compose_config("sample", overrides), Catalogue(root))
    with running_in_thread(app) as url:
        yield url, app.state.playground


@pytest.fixture(scope="module")
def playground(trained: dict) -> Iterator[tuple[str, Any]]:
    """(URL, Playground) of a server offering the tiny run's checkpoints (one per test module:
    stopping it puts torch's thread settings back)."""
    with running_playground(trained["dir"]) as served:
        yield served


@pytest.fixture
def gated(monkeypatch):
    """Generations wait for ``gate`` before their first step, and take 2 ms a step after it:
    tests of concurrency and of leaving clients do not depend on how fast the model is."""
    import rnnlm.sampling.playground.app as app_module

    gate = threading.Event()
    real = app_module.generation_events

    def slow(*args, **kwargs):
        gate.wait(60)
        for event in real(*args, **kwargs):
            time.sleep(0.002)
            yield event

    monkeypatch.setattr(app_module, "generation_events", slow)
    try:
        yield gate
    finally:
        gate.set()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright, for the browser tests; skipped, saying why, without them."""
    path = chromium_path()
    if path is None:
        pytest.skip("BROWSER TESTS NOT RUN: no Chromium found (looked for /usr/bin/chromium); install Debian's "
                    "package: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS NOT RUN: playwright is not installed; pip install -e '.[dev]'")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
