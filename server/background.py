"""uvicorn in a background thread, and a whole local server (engine-core process + API server
thread): for tests and the benchmark's own server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from litestar import Litestar

from engine.core.process import CoreProcess, CoreSpec
from engine.core.served_model import ServedModel
from engine.core.transport import CoreAddresses
from server.api_server import ApiServerSpec, build_engine_loop
from server.app import build_app
from server.engine_loop import EngineLoop
from server.state import ServerSettings

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

READY_TIMEOUT_S = 300.0


class BackgroundServer:
    """Serves ``app`` from a daemon thread, on 127.0.0.1 and a free port by default."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 graceful_shutdown_s: float = 5.0) -> None:
        self.host = host
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None,
                                # uvicorn annotates int but waits with asyncio: fractions of a second work
                                timeout_graceful_shutdown=graceful_shutdown_s)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self, timeout_s: float = 120.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class LocalServer:
    """An engine-core process plus an API server in a background thread of this process: the
    multi-process server in one object, for tests and the serving benchmark. ``app_for`` builds
    more apps on the same core (API server indexes 1..num_api_servers-1). Entering it waits until
    the core is ready (its bucket plan precompiled, unless its config says not to), or with
    ``wait_ready=False`` only until the API server listens."""

    def __init__(self, build: Callable[[], LLMEngine], settings_for: Callable[[ServedModel], ServerSettings],
                 num_api_servers: int = 1, wait_ready: bool = True) -> None:
        self.core = CoreProcess(CoreSpec(build=build, addresses=CoreAddresses.in_new_directory(num_api_servers)))
        self.wait_ready = wait_ready
        try:
            self.model = self.core.wait_for_model()
        except BaseException:
            self.core.stop()
            raise
        self.settings = settings_for(self.model)
        self.app = self.app_for(0, self.settings)
        self.background = BackgroundServer(self.app)

    @property
    def engine_loop(self) -> EngineLoop:
        loop: EngineLoop = self.app.state.server.engine_loop
        return loop

    @property
    def url(self) -> str:
        return self.background.url

    def app_for(self, index: int, settings: ServerSettings) -> Litestar:
        spec = ApiServerSpec(index=index, addresses=self.core.addresses, model=self.model, settings=settings,
                             host="127.0.0.1", port=0, log_stats=False)
        return build_app(build_engine_loop(spec, self.core.is_alive), settings)

    def __enter__(self) -> LocalServer:
        try:
            self.background.start()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while self.wait_ready and not self.engine_loop.ready:
                if not self.engine_loop.alive or time.monotonic() > deadline:
                    raise RuntimeError("the engine core did not become ready")
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.background.stop()
        self.core.stop()
