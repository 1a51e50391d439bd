"""One API server process: uvicorn + the app + its link to the engine core, until it is told to stop.

``python -m engine.serve`` runs API server 0 in its own process and ``--api-server-count - 1``
more as spawned children (``api_server_main``); each binds the same port with SO_REUSEPORT, so the
kernel spreads connections over them. SIGINT/SIGTERM drains: no new connections, in-flight
requests get up to --graceful-shutdown-timeout, then the process exits 0. If the engine core dies,
in-flight requests end with an error, /health answers 503 for DEAD_CORE_GRACE_S, and the process
exits 1 so that a supervisor restarts the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import signal
import socket
import sys
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from engine.core.client import pid_alive
from engine.core.process import die_with_parent
from engine.core.served_model import ServedModel
from engine.core.transport import CoreAddresses
from engine.environment import configure_process
from server.app import build_app
from server.engine_loop import EngineLoop
from server.metrics import ServerMetrics
from server.root_path import under_root_path
from server.state import ServerSettings

logger = logging.getLogger(__name__)

DEAD_CORE_GRACE_S = 3.0
STATS_INTERVAL_S = 10.0
# uvicorn's own deadline comes this long after ours, so ended streams can send their last event.
STREAM_CLOSE_MARGIN_S = 5.0
SHUTDOWN_MESSAGE = "The server is shutting down: this request was ended after the graceful shutdown timeout."


@dataclasses.dataclass
class ApiServerSpec:
    """Everything an API server process needs (it pickles, for the spawned ones)."""

    index: int
    addresses: CoreAddresses
    model: ServedModel
    settings: ServerSettings
    host: str
    port: int
    graceful_shutdown_timeout: float = 30.0
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_ca_certs: str | None = None
    uvicorn_log_level: str = "info"
    log_stats: bool = True
    setup_logging: Callable[[], None] | None = None


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught signal after a graceful shutdown (so the exit code is 0),
    plus ending the requests still running once the grace time is over. Spawned API servers leave
    SIGINT (Ctrl-C reaches the whole process group) to API server 0, which passes it on as SIGTERM;
    a second signal would make uvicorn skip draining."""

    on_signal: Callable[[], None] | None = None
    handled: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, config: uvicorn.Config, grace_s: float, end_requests: Callable[[], None]) -> None:
        super().__init__(config)
        self._grace_s = grace_s
        self._end_requests = end_requests

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._grace_s, self._end_requests)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self._signalled) for sig in self.handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _signalled(self, sig: int, frame: Any) -> None:
        if self.on_signal is not None:
            self.on_signal()
        self.handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            scheme = "https" if self.config.ssl_keyfile else "http"
            base = f"{scheme}://{host}:{port}{self.config.root_path}"
            logger.info("Tessera API server ready on %s (OpenAI base_url %s/v1, docs at %s/docs)", base, base, base)


def raise_open_file_limit() -> None:
    """Lifts this process's soft limit on open files to its hard limit (children inherit it):
    every HTTP connection holds a descriptor, and a common default of 1024 is below the streams
    one server is asked to hold at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound TCP socket; with ``reuse_port`` other processes may bind the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def build_engine_loop(spec: ApiServerSpec, core_alive: Callable[[], bool],
                      on_core_death: Callable[[], None] | None = None) -> EngineLoop:
    engine_loop: EngineLoop
    metrics = ServerMetrics(spec.settings.served_model_names[0], lambda: engine_loop.stats,
                            prefixes=spec.settings.metric_prefixes)
    engine_loop = EngineLoop(spec.addresses, spec.index, spec.model, core_alive, metrics,
                             STATS_INTERVAL_S if spec.log_stats else None, on_core_death)
    return engine_loop


def run_api_server(spec: ApiServerSpec, sock: socket.socket, core_alive: Callable[[], bool],
                   on_signal: Callable[[], None] | None = None) -> int:
    """Serves on ``sock`` until a signal (exit code 0) or the core's death (exit code 1)."""
    exit_code = 0
    server: _Server

    def on_core_death() -> None:
        nonlocal exit_code
        logger.error("API server %d exits with code 1 in %.0fs: its engine core has died", spec.index,
                     DEAD_CORE_GRACE_S)
        exit_code = 1
        asyncio.get_running_loop().call_later(DEAD_CORE_GRACE_S, setattr, server, "should_exit", True)

    engine_loop = build_engine_loop(spec, core_alive, on_core_death)
    root = spec.settings.root_path
    config = uvicorn.Config(under_root_path(build_app(engine_loop, spec.settings), root), log_config=None,
                            log_level=spec.uvicorn_log_level, root_path=root, ssl_keyfile=spec.ssl_keyfile,
                            ssl_certfile=spec.ssl_certfile, ssl_ca_certs=spec.ssl_ca_certs,
                            # uvicorn annotates int but waits with asyncio: fractions of a second work
                            timeout_graceful_shutdown=spec.graceful_shutdown_timeout + STREAM_CLOSE_MARGIN_S,  # type: ignore[arg-type]
                            )
    server = _Server(config, spec.graceful_shutdown_timeout, lambda: engine_loop.end_all(SHUTDOWN_MESSAGE))
    server.on_signal = on_signal
    if spec.index > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.handled = (signal.SIGTERM,)
    server.run(sockets=[sock])
    if not server.started:
        logger.error("API server %d did not start", spec.index)
        return 1
    return exit_code


def api_server_main(spec: ApiServerSpec, core_pid: int, parent_pid: int) -> None:
    """The entry point of API servers 1..N-1 (spawned by ``engine.serve``)."""
    die_with_parent(parent_pid)
    configure_process()
    if spec.setup_logging is not None:
        spec.setup_logging()
    sock = listening_socket(spec.host, spec.port, reuse_port=True)
    sys.exit(run_api_server(spec, sock, lambda: pid_alive(core_pid)))
