"""``python sample.py mode=serve``: the playground's web server on a local port."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from rnnlm.models.loading import TRAIN_HINT, read_checkpoint
from rnnlm.utils.errors import CheckpointError, ConfigError
from rnnlm.utils.memory import keep_freed_memory
from rnnlm.utils.options import check_config, check_value, existing_path

if TYPE_CHECKING:  # the web stack is an optional extra: imported where it is used
    from starlette.applications import Starlette

    from rnnlm.sampling.playground.catalogue import Catalogue

log = logging.getLogger(__name__)
SHUTDOWN_SECONDS = 2  # open streams get this long to end after Ctrl-C


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: Any) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or a one-line error."""
    check_value("port", port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConfigError(f"host={host!r} is not an address of this machine; use 127.0.0.1 (the default)") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another playground?); pass port=<another port>, "
                              "or port=0 for any free one") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); use host=127.0.0.1 and a port above 1023") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def catalogue_from(cfg: DictConfig) -> Catalogue:
    from rnnlm.sampling.playground.catalogue import Catalogue

    ckpt = cfg.get("ckpt")
    extra = Path(to_absolute_path(str(ckpt))) if ckpt else None
    if extra is not None and extra.is_dir():  # a run dir: offer its checkpoints
        root, extra = extra, None
    else:
        if extra is not None:
            read_checkpoint(extra, mmap=True)  # a missing or unreadable ckpt= is an error, as for sampling
        root = Path(to_absolute_path(str(cfg.get("checkpoints") or "outputs")))
        if extra is None:
            existing_path("checkpoints", root, f"{TRAIN_HINT}; or pass checkpoints=<dir holding runs>", directory=True)
    catalogue = Catalogue(root, extra, cfg.get("device", "auto"))
    entries = catalogue.entries()
    if not entries:
        raise CheckpointError(f"no checkpoint that loads under {root}/; {TRAIN_HINT}")
    catalogue.model(entries[0].id)  # loaded before the URL is printed: the first Generate is quick
    return catalogue


def app_for(cfg: DictConfig, catalogue: Catalogue, on_ready: Callable[[], None] | None = None) -> Starlette:
    """The app, with ``cfg``'s decoding options (sample.py's: prompt, strategy, temperature,
    top_k, top_p, length, num_samples, beam_width) as the page's defaults."""
    from rnnlm.sampling.playground.app import DEFAULT_KEYS, create_app

    host = str(cfg.get("host") or "127.0.0.1")
    return create_app(catalogue, {k: cfg.get(k) for k in DEFAULT_KEYS}, on_ready, host if is_loopback(host) else None)


def serve(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Serve the playground until Ctrl-C (or SIGTERM)."""
    keep_freed_memory()
    check_config(cfg)
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ConfigError(f"mode=serve needs the web server ({err.name} is not installed): "
                          "pip install -e '.[serve]' (make env installs it)") from None
    host = str(cfg.get("host") or "127.0.0.1")
    sock = bind(host, cfg.get("port", 8765))
    try:
        catalogue = catalogue_from(cfg)
        url = url_of(sock)

        def ready() -> None:
            if not is_loopback(host):
                log.warning("listening on %s: anyone who can reach this machine's port %d can use the models and see "
                            "the list of checkpoints under %s", host, sock.getsockname()[1], catalogue.root)
            print(f"playground: {url}  (checkpoints under {catalogue.root}; Ctrl-C stops it)", flush=True)

        app = app_for(cfg, catalogue, ready)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS, lifespan="on")

        class Server(uvicorn.Server):
            async def shutdown(self, sockets: Any = None) -> None:
                # Ctrl-C: generations stop at their next step, so their streams end (with a "done"
                # event) while uvicorn waits for open requests, rather than being cancelled after it.
                app.state.playground.stop_generations()
                await super().shutdown(sockets)

        Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return {}, {"url": url}


def report(metrics: dict[str, float], objects: dict[str, Any]) -> str:
    return f"playground at {objects['url']} stopped"
