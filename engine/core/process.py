"""Starting, watching and stopping the engine-core process.

The core is a ``spawn``ed child (JAX and its device threads do not survive a fork). It reports
back once through a pipe: the ServedModel as soon as the model is loaded, or why it could not
start. Then, unless its config says not to (``--skip-warmup``), it compiles (or loads from the
persistent cache) every program of its bucket plan, broadcasting CoreStatus "warming" with
"warming up: k of n programs" after each (/health answers 503 with that text), and announces
"ready". It dies with its parent (PR_SET_PDEATHSIG), ignores SIGINT (the API servers drain on
Ctrl-C, then stop it) and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from engine.core.engine_core import EngineCore
from engine.core.messages import CoreStatus
from engine.core.served_model import ServedModel
from engine.core.transport import CoreAddresses, CoreSockets
from engine.environment import configure_process

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class CoreStartError(RuntimeError):
    pass


@dataclasses.dataclass
class CoreSpec:
    """How the child builds its engine; every callable must pickle (module-level functions, partials).
    ``build`` returns an engine that has not precompiled yet (``LLMEngine(..., precompile=False)``):
    the core precompiles it when ``engine.config.precompile``, reporting progress."""

    build: Callable[[], LLMEngine]
    addresses: CoreAddresses
    setup_logging: Callable[[], None] | None = None
    finish: Callable[[LLMEngine], None] | None = None  # after the loop, e.g. releasing multi-host followers


class CoreProcess:
    """The parent's handle on the running core."""

    def __init__(self, spec: CoreSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self._reports, writer = context.Pipe(duplex=False)
        self.addresses = spec.addresses
        self.process = context.Process(target=_core_main, args=(spec, writer, os.getpid()), name="tessera-core")
        self.process.start()
        writer.close()
        logger.info("Engine core process started (pid %d)", self.process.pid)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def wait_for_model(self, timeout_s: float | None = None) -> ServedModel:
        """Blocks until the core has loaded its model; CoreStartError says why it could not."""
        waited = 0.0
        while not self._reports.poll(0.2):
            waited += 0.2
            if not self.process.is_alive():
                raise CoreStartError(f"the engine core exited with code {self.process.exitcode} while starting")
            if timeout_s is not None and waited > timeout_s:
                raise CoreStartError("the engine core did not load its model in time")
        kind, payload = self._reports.recv()
        if kind == "failed":
            raise CoreStartError(payload)
        return payload

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; removes the socket directory. The exit code."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            logger.warning("The engine core did not stop within %.0fs; killing it", timeout_s)
            self.process.kill()
            self.process.join()
        shutil.rmtree(self.addresses.directory, ignore_errors=True)
        return self.process.exitcode


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies, so no orphan outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.warning("PR_SET_PDEATHSIG is unavailable: this process may outlive its parent")
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)


def _core_main(spec: CoreSpec, reports: Connection, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    configure_process()
    if spec.setup_logging is not None:
        spec.setup_logging()
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sockets = CoreSockets(spec.addresses)
    try:
        engine = spec.build()
    except Exception as err:  # start-up errors (bad model path, bad config) are the parent's to report
        logger.debug("engine core start-up failed", exc_info=True)
        reports.send(("failed", f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)))
        raise SystemExit(1) from None
    reports.send(("model", ServedModel.of(engine)))
    core = EngineCore(engine, sockets, stop)
    _serve(core, spec)


def _serve(core: EngineCore, spec: CoreSpec) -> None:
    sockets = core.sockets
    try:
        if core.engine.config.precompile:
            _precompile(core.engine, sockets)
        sockets.broadcast(CoreStatus("ready"))
        core.run()
    except BaseException as exc:
        logger.exception("The engine core failed; every in-flight request ends with an error")
        sockets.broadcast(CoreStatus("failed", type(exc).__name__))
        sockets.close(timeout_s=1.0)
        raise SystemExit(1) from None
    if spec.finish is not None:
        spec.finish(core.engine)
    sockets.close()
    logger.info("Engine core stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing is left to flush; tearing down JAX's runtime can take longer than the stop grace


def _precompile(engine: LLMEngine, sockets: CoreSockets) -> None:
    """The whole bucket plan, with "warming up: k of n programs" to every API server after each program."""

    def report() -> None:
        done, total = engine.compile_progress()
        sockets.broadcast(CoreStatus("warming", f"warming up: {done} of {total} programs"))

    report()
    engine.precompile(on_progress=report)
