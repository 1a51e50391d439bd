"""The engine loop: one background thread owns the LLMEngine and drives it step by step.

Requests and aborts reach it through a thread-safe queue and are applied between steps; each
request's outputs go back to its own asyncio queue (a RequestStream) on the event loop that
submitted it, through ``loop.call_soon_threadsafe``. If the thread dies, every waiting request
gets an EngineDeadError and ``alive`` turns false (the server answers 503).

With ``warm_up`` the thread first compiles the engine's whole bucket plan (``warming`` holds
meanwhile and /health answers 503 with the progress); requests sent then wait in the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable

from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from server.metrics import ServerMetrics
from server.stats_log import StatsLogger

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class RequestStream:
    """The outputs of one engine request, consumed on the event loop that submitted it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.finished = False
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> RequestOutput:
        """The newest output. Outputs are cumulative, so any that queued up meanwhile can be skipped."""
        item = await self._queue.get()
        while isinstance(item, RequestOutput) and not self._queue.empty():
            item = self._queue.get_nowait()
        if isinstance(item, BaseException):
            raise item
        self.finished = item.finished
        return item

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            yield await self.get()


@dataclasses.dataclass
class _Add:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    arrival: float
    stream: RequestStream
    admitted: asyncio.Future[None]


@dataclasses.dataclass
class _Abort:
    request_id: str


class _Stop:
    pass


_Command = _Add | _Abort | _Stop


@dataclasses.dataclass
class _Tracked:
    stream: RequestStream
    arrival: float
    num_tokens: int = 0
    last_token_time: float | None = None


class EngineLoop:
    def __init__(self, engine: LLMEngine, metrics: ServerMetrics | None = None,
                 log_stats_interval_s: float | None = 10.0, warm_up: bool = False) -> None:
        self.engine = engine
        self.warming = warm_up
        self.metrics = metrics
        self.error: BaseException | None = None
        self.stats: EngineStats = engine.stats()  # refreshed by the engine thread after every step
        self._stats_logger = StatsLogger(log_stats_interval_s, self.stats) if log_stats_interval_s else None
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0  # admitted or queued requests not yet finished; under _lock
        self._thread: threading.Thread | None = None

    # ---- called from the event loop ------------------------------------------------------
    def start(self) -> None:
        """Starts the engine thread (once: a loop that has stopped stays stopped)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tessera-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    @property
    def num_pending(self) -> int:
        return self._pending

    async def add_request(self, request_id: str, prompt: list[int], params: SamplingParams,
                          arrival_time: float | None = None) -> RequestStream:
        """Hands the request to the engine thread; a ValueError from the engine is raised here."""
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, loop)
        admitted: asyncio.Future[None] = loop.create_future()
        command = _Add(request_id, prompt, params, arrival_time or time.monotonic(), stream, admitted)
        with self._lock:
            if self._closed or self._thread is None:
                raise EngineDeadError("the engine is not running")
            self._pending += 1
            self._commands.put(command)
        try:
            await admitted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        return stream

    def abort(self, request_id: str) -> None:
        with self._lock:
            if not self._closed:
                self._commands.put(_Abort(request_id))

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Aborts what is still running and stops the thread."""
        with self._lock:
            if not self._closed:
                self._commands.put(_Stop())
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.warming:
                self.engine.precompile()
                self.stats = self.engine.stats()
                self.warming = False
            self._serve()
        except BaseException as exc:
            self.error = exc
            logger.exception("The engine loop died; the server now answers 503")
        finally:
            self._close()

    def _serve(self) -> None:
        while True:
            idle = not self.engine.has_unfinished_requests()
            for command in self._next_commands(block=idle):
                if isinstance(command, _Stop):
                    return
                self._apply(command)
            if self.engine.has_unfinished_requests():
                compiled_before = self.stats.num_compilations
                started = time.perf_counter()
                self._deliver(self.engine.step())
                self.stats = self.engine.stats()
                new_programs = self.stats.num_compilations - compiled_before
                if new_programs:
                    logger.info("Compiled %d new program(s) for a new batch shape (%d so far); the step took %.2fs",
                                new_programs, self.stats.num_compilations, time.perf_counter() - started)
            else:
                self.stats = self.engine.stats()
            if self._stats_logger is not None:
                self._stats_logger.maybe_log(self.stats)

    def _next_commands(self, block: bool) -> list[_Command]:
        commands: list[_Command] = []
        if block:
            try:
                commands.append(self._commands.get(timeout=1.0))
            except queue.Empty:
                return commands
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            if self._tracked.pop(command.request_id, None) is not None:
                self.engine.abort_request(command.request_id)
                self._finished_one()
                if self.metrics is not None:
                    self.metrics.request_aborted()
            return
        try:
            self.engine.add_request(command.request_id, command.prompt, command.params, command.arrival)
        except ValueError as err:
            self._finished_one()
            _call_on(command.stream.loop, _settle, command.admitted, err)
            return
        self._tracked[command.request_id] = _Tracked(command.stream, command.arrival)
        _call_on(command.stream.loop, _settle, command.admitted, None)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for out in outputs:
            tracked = self._tracked.get(out.request_id)
            if tracked is None:
                continue
            out = _snapshot(out)
            self._observe(tracked, out, now)
            by_loop.setdefault(tracked.stream.loop, []).append((tracked.stream, out))
            if out.finished:
                del self._tracked[out.request_id]
                self._finished_one()
        for loop, items in by_loop.items():
            _call_on(loop, _put_all, items)

    def _observe(self, tracked: _Tracked, out: RequestOutput, now: float) -> None:
        if self.metrics is None:
            return
        total = sum(len(o.token_ids) for o in out.outputs)
        if total > tracked.num_tokens:
            if tracked.last_token_time is None:
                self.metrics.time_to_first_token.observe(now - tracked.arrival)
            else:
                self.metrics.inter_token_latency.observe(now - tracked.last_token_time)
            tracked.last_token_time = now
            tracked.num_tokens = total
        if out.finished:
            reason = out.outputs[0].finish_reason or "stop"
            self.metrics.request_finished(reason, now - tracked.arrival, len(out.prompt_token_ids), total)

    def _finished_one(self) -> None:
        with self._lock:
            self._pending -= 1

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            leftover = []
            while True:
                try:
                    leftover.append(self._commands.get_nowait())
                except queue.Empty:
                    break
        error = EngineDeadError("The engine has stopped; this server cannot serve requests.")
        for command in leftover:
            if isinstance(command, _Add):
                _call_on(command.stream.loop, _settle, command.admitted, error)
        for request_id, tracked in self._tracked.items():
            try:
                self.engine.abort_request(request_id)
            except Exception:  # a dead engine may not abort cleanly; the error is already logged
                pass
            _call_on(tracked.stream.loop, tracked.stream.put, error)
        self._tracked.clear()
        self._pending = 0


def _snapshot(out: RequestOutput) -> RequestOutput:
    """Copies the per-token logprob lists, which the engine keeps appending to after this step."""
    if all(o.logprobs is None for o in out.outputs):
        return out
    outputs = [dataclasses.replace(o, logprobs=list(o.logprobs)) if o.logprobs is not None else o
               for o in out.outputs]
    return dataclasses.replace(out, outputs=outputs)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the client went away meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _put_all(items: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.put(out)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # that event loop has closed: nobody is listening any more
        pass
