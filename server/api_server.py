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
from server.app import build_app
from server.engine_loop import EngineLoop
from server.metrics import ServerMetrics
from server.state import ServerSettings

logger = logging.getLogger(__name__)

DEAD_CORE_GRACE_S = 3.0
STATS_INTERVAL_S = 10.0


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
    uvicorn_log_level: str = "info"
    log_stats: bool = True
    setup_logging: Callable[[], None] | None = None


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught signal after a graceful shutdown (so the exit code is 0).
    Spawned API servers leave SIGINT (Ctrl-C reaches the whole process group) to API server 0,
    which passes it on as SIGTERM; a second signal would make uvicorn skip draining."""

    on_signal: Callable[[], None] | None = None
    handled: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

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
            logger.info("Tessera API server ready on http://%s:%d (OpenAI base_url http://%s:%d/v1, docs at /docs)",
                        host, port, host, port)


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
    metrics = ServerMetrics(spec.settings.served_model_names[0], lambda: engine_loop.stats)
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
        exit_code = 1
        asyncio.get_running_loop().call_later(DEAD_CORE_GRACE_S, setattr, server, "should_exit", True)

    app = build_app(build_engine_loop(spec, core_alive, on_core_death), spec.settings)
    config = uvicorn.Config(app, log_config=None, log_level=spec.uvicorn_log_level,
                            timeout_graceful_shutdown=spec.graceful_shutdown_timeout)
    server = _Server(config)
    server.on_signal = on_signal
    if spec.index > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.handled = (signal.SIGTERM,)
    server.run(sockets=[sock])
    if not server.started:
        return 1
    return exit_code


def api_server_main(spec: ApiServerSpec, core_pid: int, parent_pid: int) -> None:
    """The entry point of API servers 1..N-1 (spawned by ``engine.serve``)."""
    die_with_parent(parent_pid)
    if spec.setup_logging is not None:
        spec.setup_logging()
    sock = listening_socket(spec.host, spec.port, reuse_port=True)
    sys.exit(run_api_server(spec, sock, lambda: pid_alive(core_pid)))
