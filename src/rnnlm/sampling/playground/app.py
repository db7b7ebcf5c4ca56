"""The playground's web app (Starlette): one page, its static files and a JSON API.

Work runs off the event loop: generations each on a thread of their own (at most
``MAX_GENERATIONS`` at once; more are refused with 503), loading, scoring and the cell view
on ``MAX_ANALYSES`` threads (more wait their turn). A generation streams Server-Sent Events;
when its client goes away, it stops.

Each of these threads computes with its share of torch's threads (one on a 2-core machine):
libgomp stops spin-waiting once more OpenMP threads exist than cores, and every thread that
has run torch keeps its own team: one idle generation thread was enough to make scoring several
times slower on 2 cores (docs/playground.md). At batch 1 a second thread mostly waits anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.generation.plan import DecodePlan, decode_plan, settings_from
from rnnlm.sampling.playground.catalogue import Catalogue, PlaygroundModel
from rnnlm.sampling.playground.jobs import cell_job, find_job, generation_events, score_job
from rnnlm.utils.errors import CheckpointError, ConfigError, RnnlmError
from rnnlm.utils.options import check_value

log = logging.getLogger(__name__)
PAGE_DIR = Path(__file__).with_name("page")

# Caps: a request past one gets a one-line error saying so (sample.py's bounds are wider).
MAX_BODY_BYTES = 1 << 20
MAX_PROMPT_CHARS = 10_000
MAX_TEXT_CHARS = 20_000
MAX_LENGTH = 5_000
MAX_SAMPLES = 8
MAX_GENERATIONS = 8
MAX_ANALYSES = 4
MAX_GENERATION_SECONDS = 300  # a generation still running then stops there, keeping its text so far
EVENTS_PER_MESSAGE = 256
FLUSH_SECONDS = 0.02  # a generation's steps reach the page in batches at most this far apart
# What a generation request may set: sample.py's options of the same names.
SCORE_SAMPLING_KEYS = ("temperature", "top_k", "top_p")  # the candidates' second table: what sampling draws from
MAX_BEAM_WIDTH = 16  # beams' state and sequences grow with the width
MAX_BEAM_LENGTH = 1_000  # beam search streams nothing until it ends
GENERATION_KEYS = ("prompt", "strategy", "temperature", "top_k", "top_p", "length", "seed", "num_samples",
                   "beam_width", "length_penalty", "stop")


DEFAULT_KEYS = (*GENERATION_KEYS, "unknown")  # sample.py's options the page starts from


class Busy(RnnlmError):
    """Every generation slot is taken: the client should try again (HTTP 503)."""


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


async def refused(request: Request, err: Exception) -> JSONResponse:
    """Bad input (400) or every generation slot taken (503): the error's one line."""
    return JSONResponse({"error": one_line(err)}, status_code=503 if isinstance(err, Busy) else 400)


async def http_error(request: Request, err: Exception) -> JSONResponse:
    """Starlette's own refusals (404, 405) as the API's other errors are: JSON with one line."""
    assert isinstance(err, HTTPException)
    return JSONResponse({"error": f"{request.method} {request.url.path}: {err.detail}"}, status_code=err.status_code,
                        headers=err.headers)


async def failed(request: Request, err: Exception) -> JSONResponse:
    """Our own failure (500), in one line; Starlette then re-raises it for the server's log."""
    return JSONResponse({"error": f"the server failed on this request ({type(err).__name__}: {one_line(err)})"},
                        status_code=500)


async def read_json(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object, whose keys must be among ``allowed``. Only ``application/json``
    is taken: a form or ``text/plain`` POST, which any web page may send to this port without
    asking, is refused."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ConfigError("send the request as JSON (Content-Type: application/json)")
    body = b""
    async for chunk in request.stream():  # read up to the cap, whatever Content-Length claims
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ConfigError(f"the request is over {MAX_BODY_BYTES} bytes; the playground takes at most {MAX_BODY_BYTES}")
    try:
        data = json.loads(body or b"{}")
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise ConfigError("the request body is not JSON (or holds a number too long to read)") from None
    except RecursionError:  # [[[[...]]]] nested past the parser's depth
        raise ConfigError("the request body nests too deeply; send the settings as one flat JSON object") from None
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; the settings are {', '.join(allowed)}")
    return data


def checked_text(data: dict[str, Any], key: str, cap: int, required: bool = True) -> str:
    text = data.get(key, "")
    if not isinstance(text, str):
        raise ConfigError(f"{key} must be text, not {type(text).__name__}")
    if required and not text:
        raise ConfigError(f"the {key} is empty: paste or type some text first")
    if len(text) > cap:
        raise ConfigError(f"the {key} has {len(text):,} characters; the playground takes at most {cap:,} "
                          f"(sample.py takes any length)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(f"the {key} is not valid text: a lone UTF-16 surrogate at character {err.start}") from None
    return text


class Playground:
    """The app's state: the catalogue, the CLI's defaults, the generation threads."""

    def __init__(self, catalogue: Catalogue, defaults: dict[str, Any]):
        self.catalogue = catalogue
        self.defaults = {k: defaults.get(k) for k in DEFAULT_KEYS}
        # torch.set_num_threads in a worker also sets the default of threads started later:
        # ``close`` puts it back, so a process that hosted the app (a test) is as it was.
        self.torch_threads = torch.get_num_threads()
        threads = max(1, self.torch_threads // (MAX_GENERATIONS + MAX_ANALYSES))
        self.generations = ThreadPoolExecutor(MAX_GENERATIONS, "playground-generate", torch.set_num_threads, (threads,))
        self.analysis_threads = ThreadPoolExecutor(MAX_ANALYSES, "playground-analyse", torch.set_num_threads, (threads,))
        self.slots = threading.BoundedSemaphore(MAX_GENERATIONS)
        self.stops: set[threading.Event] = set()  # one per generation whose thread has not ended
        self._stops_lock = threading.Lock()

    @property
    def running(self) -> int:
        return len(self.stops)

    def stop_generations(self) -> None:
        """Every generation stops at its next step (the server is stopping)."""
        with self._stops_lock:
            for stop in self.stops:
                stop.set()

    def close(self) -> None:
        self.stop_generations()
        self.generations.shutdown(wait=False, cancel_futures=True)
        self.analysis_threads.shutdown(wait=False, cancel_futures=True)
        torch.set_num_threads(self.torch_threads)

    def _model(self, ckpt: Any) -> PlaygroundModel:
        if not ckpt:
            entries = self.catalogue.entries()
            if not entries:
                raise CheckpointError(f"no checkpoint under {self.catalogue.root}/ any more; train one with make train")
            ckpt = entries[0].id
        return self.catalogue.model(ckpt)

    async def model(self, data: dict[str, Any]) -> PlaygroundModel:
        return await self.compute(self._model, data.get("ckpt"))

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on an analysis thread (queued while all are busy)."""
        return await asyncio.get_running_loop().run_in_executor(self.analysis_threads, fn, *args)

    async def page(self, request: Request) -> Response:
        return FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def checkpoints(self, request: Request) -> Response:
        entries = await run_in_threadpool(self.catalogue.entries)
        return FiniteJSONResponse({"root": str(self.catalogue.root), "checkpoints": [e.public() for e in entries],
                             "defaults": self.defaults, "limits": {
                                 "prompt_chars": MAX_PROMPT_CHARS, "text_chars": MAX_TEXT_CHARS, "length": MAX_LENGTH,
                                 "num_samples": MAX_SAMPLES, "beam_width": MAX_BEAM_WIDTH}})

    async def model_info(self, request: Request) -> Response:
        data = await read_json(request, ("ckpt",))
        model = await self.model(data)
        return FiniteJSONResponse(model.info())

    def settings(self, data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        """The request's values for ``keys`` over the defaults, each checked by the rule
        sample.py's option of that name has. Plain values: a client's text never goes
        through OmegaConf, which would resolve ``${...}`` in it."""
        options = {**{k: self.defaults.get(k) for k in keys}, "unknown": self.defaults["unknown"] or "replace"}
        options.update({k: data[k] for k in keys if k in data})
        for key in keys:
            check_value(key, options[key])
        return options

    def plan(self, data: dict[str, Any], tokenizer: Tokenizer) -> tuple[DecodePlan, dict[str, Any]]:
        settings = self.settings(data, tuple(k for k in GENERATION_KEYS if k != "prompt"))
        caps = [("length", MAX_LENGTH), ("num_samples", MAX_SAMPLES)]
        if settings_from(settings).beam:
            caps.append(("beam_width", MAX_BEAM_WIDTH))
        for key, cap in caps:
            if settings[key] > cap:
                raise ConfigError(f"{key}={settings[key]} is above the playground's cap of {cap} (sample.py allows more)")
        prompt = checked_text(data, "prompt", MAX_PROMPT_CHARS, required=False) if "prompt" in data else \
            str(self.defaults.get("prompt") or "")
        return decode_plan(settings, tokenizer, lambda: prompt, MAX_BEAM_LENGTH), settings

    async def generate(self, request: Request) -> Response:
        data = await read_json(request, (*GENERATION_KEYS, "ckpt"))
        model = await self.model(data)
        plan, settings = await run_in_threadpool(self.plan, data, model.loaded.tokenizer)
        seed = settings["seed"] if settings["seed"] is not None else random.randrange(2**31)
        if not self.slots.acquire(blocking=False):
            raise Busy(f"{MAX_GENERATIONS} generations are running (the playground's limit); try again when one ends")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        with self._stops_lock:
            self.stops.add(cancelled)

        def time_out() -> None:  # a generation still running stops there, as if its client had left
            log.warning("a generation reached the playground's limit of %g s: stopping it", MAX_GENERATION_SECONDS)
            cancelled.set()

        time_limit = threading.Timer(MAX_GENERATION_SECONDS, time_out)
        time_limit.daemon = True  # never keeps the process alive
        unknown = model.loaded.tokenizer.unknown(plan.prompt.rstrip() or plan.prompt) if plan.prompt else []

        def put(events: list[dict[str, Any]]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                loop.call_soon_threadsafe(queue.put_nowait, events)

        def work() -> None:
            # Steps go out in batches, the first at once, then at most every FLUSH_SECONDS: each
            # hand-over wakes the event loop, which per token would cost more than the token.
            pending: list[dict[str, Any]] = []
            flushed = 0.0
            time_limit.start()
            try:
                for event in generation_events(model, plan, settings["num_samples"], seed, cancelled):
                    pending.append(event)
                    now = time.perf_counter()
                    if event["type"] != "step" or now - flushed >= FLUSH_SECONDS or len(pending) >= EVENTS_PER_MESSAGE:
                        put(pending)
                        pending, flushed = [], now
                log.info("generation %s after %d tokens (%s tokens/s)", "stopped" if event["stopped"]
                         else "done", event["tokens"], event["tokens_per_s"])
            except Exception as err:  # reported to the page; the server goes on
                log.exception("generation failed")
                put([*pending, {"type": "error", "error": str(err) if isinstance(err, RnnlmError) else f"{type(err).__name__}: {err}"}])
            finally:
                time_limit.cancel()
                self.ended(cancelled)

        try:
            self.generations.submit(work)
        except RuntimeError:  # shutting down
            self.ended(cancelled)
            raise Busy("the playground is stopping") from None

        async def events() -> AsyncIterator[str]:
            try:
                yield message({"type": "start", "seed": seed, "num_samples": settings["num_samples"],
                               "strategy": plan.settings.strategy, "prompt": plan.prompt, "unknown": unknown[:20]})
                while True:
                    batch = await queue.get()
                    while not queue.empty() and len(batch) < EVENTS_PER_MESSAGE:
                        batch += queue.get_nowait()
                    try:
                        text = message({"type": "batch", "events": batch})
                    except (TypeError, ValueError) as err:  # ours: the page gets a line, the log the cause
                        log.exception("a generation event could not be sent")
                        batch = [{"type": "error", "error": f"the server could not send a step ({one_line(err)})"}]
                        text = message({"type": "batch", "events": batch})
                    yield text
                    if batch[-1]["type"] in ("done", "error"):
                        return
            finally:  # the stream ended
                cancelled.set()

        return EventStream(events(), cancelled.set)

    def ended(self, stop: threading.Event) -> None:
        with self._stops_lock:
            self.stops.discard(stop)
        self.slots.release()

    async def analysis(self, request: Request, keys: tuple[str, ...], job: Callable[..., dict[str, Any]],
                       extra: tuple[str, ...] = ()) -> Response:
        data = await read_json(request, ("ckpt", "text", *keys))
        text = checked_text(data, "text", MAX_TEXT_CHARS)
        model = await self.model(data)
        result = await self.compute(job, model, text, *(data.get(k) for k in extra), self.defaults["unknown"] or "replace")
        return FiniteJSONResponse(result)

    async def score(self, request: Request) -> Response:
        data = await read_json(request, ("ckpt", "text", *SCORE_SAMPLING_KEYS))
        text = checked_text(data, "text", MAX_TEXT_CHARS)
        options = self.settings(data, SCORE_SAMPLING_KEYS)
        model = await self.model(data)
        settings = settings_from(options).validate(len(model.loaded.tokenizer))
        result = await self.compute(score_job, model, text, settings, self.defaults["unknown"] or "replace")
        return FiniteJSONResponse(result)

    async def cells(self, request: Request) -> Response:
        return await self.analysis(request, ("layer", "state", "unit"), cell_job, ("layer", "state", "unit"))

    async def find(self, request: Request) -> Response:
        return await self.analysis(request, (), find_job)


class EventStream(StreamingResponse):
    """A Server-Sent Events response that calls ``on_close()`` however it ends: finished, the
    client gone mid-stream, or gone before the first event (when the body's own ``finally``
    never runs)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """JSON with NaN and infinities as null: a diverged checkpoint scores as NaN, not as a 500."""

    def render(self, content: Any) -> bytes:
        return super().render(finite(content))


def message(payload: dict[str, Any]) -> str:
    """One Server-Sent Event."""
    return f"data: {json.dumps(finite(payload), ensure_ascii=False, allow_nan=False)}\n\n"


def create_app(catalogue: Catalogue, defaults: dict[str, Any], on_ready: Callable[[], None] | None = None,
               host: str | None = "127.0.0.1") -> Starlette:
    """The app; ``on_ready()`` runs once it is serving (to print its address then, not before).
    ``host``: a loopback address it listens on, whose names alone are valid Host headers (a
    DNS-rebinding page names its own); None: any host (listening beyond this machine)."""
    playground = Playground(catalogue, defaults)
    routes = [
        Route("/", playground.page),
        Route("/api/checkpoints", playground.checkpoints),
        Route("/api/model", playground.model_info, methods=["POST"]),
        Route("/api/generate", playground.generate, methods=["POST"]),
        Route("/api/score", playground.score, methods=["POST"]),
        Route("/api/cells", playground.cells, methods=["POST"]),
        Route("/api/find", playground.find, methods=["POST"]),
        Mount("/static", StaticFiles(directory=PAGE_DIR)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield
        playground.close()

    hosts = ["*"] if host is None else sorted({host, f"[{host}]" if ":" in host else host, "127.0.0.1", "localhost", "[::1]"})
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={RnnlmError: refused, HTTPException: http_error, Exception: failed},
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.playground = playground
    return app
