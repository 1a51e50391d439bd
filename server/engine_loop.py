"""The API server's link to the engine core (another process): requests out, outputs back.

``add_request`` sends the prompt's token ids to the core and waits for its admission (a refusal
is raised here as a RequestValidationError with the field the engine named: a 400); each
admitted request gets a RequestTracker that turns the core's per-step token deltas into text
(detokenization and stop strings happen here, not in the core) and a RequestStream the handler
reads. A request the engine fails on ends alone with a RequestFailedError. The core's stats
arrive with every step and feed /metrics. If the core dies (its process is gone, or it says it
failed), every waiting request gets an EngineDeadError, ``alive`` turns false (/health answers
503) and ``on_core_death`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from engine.core.client import CoreClient
from engine.core.messages import AbortRequests, AddRequest, Admission, CoreStatus, Hello, SequenceDelta, StepOutputs
from engine.core.output_processor import RequestTracker
from engine.core.served_model import ServedModel
from engine.core.transport import CoreAddresses
from engine.outputs import RequestOutput
from engine.request_errors import RequestValidationError
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats
from server.metrics import ServerMetrics
from server.stats_log import StatsLogger

logger = logging.getLogger(__name__)

LIVENESS_POLL_S = 0.1


class RequestFailedError(RuntimeError):
    """A request ended by a failure, not by its own finish; ``status`` is the HTTP status to report."""

    status = 500


class EngineDeadError(RequestFailedError):
    status = 503


class RequestStream:
    """The outputs of one engine request, consumed on the event loop that submitted it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
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
class _Tracked:
    tracker: RequestTracker
    stream: RequestStream
    arrival: float
    admitted: asyncio.Future[None]
    num_tokens: int = 0
    scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None


class EngineLoop:
    def __init__(self, addresses: CoreAddresses, client_index: int, model: ServedModel,
                 core_alive: Callable[[], bool], metrics: ServerMetrics | None = None,
                 log_stats_interval_s: float | None = 10.0,
                 on_core_death: Callable[[], None] | None = None) -> None:
        self.addresses = addresses
        self.client_index = client_index
        self.model = model
        self.metrics = metrics
        self.stats = EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # the core's, as of its latest message
        self.ready = False
        self.status_detail = "waiting for the engine core"
        self._core_alive = core_alive
        self._on_core_death = on_core_death
        self._stats_logger = StatsLogger(log_stats_interval_s, self.stats) if log_stats_interval_s else None
        self._tracked: dict[str, _Tracked] = {}
        self._client: CoreClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dead = False

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = CoreClient(self.addresses, self.client_index)
        self._client.send(Hello(self.client_index))
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch())]

    async def wait_ready(self) -> None:
        """Until the core has said it is ready, or is gone."""
        while not self.ready and self.alive:
            await asyncio.sleep(LIVENESS_POLL_S)

    async def shutdown(self) -> None:
        """Ends what still waits here (the core is stopped by whoever started it)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(EngineDeadError("The server is shutting down."), abort=True)
        if self._client is not None:
            self._client.close()
        self._dead = True

    @property
    def alive(self) -> bool:
        """Connected and the core runs: asked of the process itself, so /health turns 503 the moment
        the core is gone, not only once the watcher's next poll has noticed."""
        return self._client is not None and not self._dead and self._core_alive()

    @property
    def num_pending(self) -> int:
        return len(self._tracked)

    # ---- requests ----------------------------------------------------------------------------
    async def add_request(self, request_id: str, prompt: list[int], params: SamplingParams,
                          arrival_time: float | None = None) -> RequestStream:
        """Hands the request to the core; the engine's refusal (too long, bad ids) is raised here."""
        if not self.alive or self._client is None:
            raise EngineDeadError("The engine has stopped; this server cannot serve requests.")
        if request_id in self._tracked:
            raise ValueError(f"request id {request_id!r} is already in use")
        arrival = arrival_time or time.monotonic()
        tracked = _Tracked(RequestTracker(request_id, prompt, params, self.model), RequestStream(request_id),
                           arrival, asyncio.get_running_loop().create_future())
        self._tracked[request_id] = tracked
        if not self._client.send(AddRequest(request_id, self.client_index, prompt, params, arrival)):
            del self._tracked[request_id]
            raise EngineDeadError("The engine is not taking requests; this server cannot serve requests.")
        try:
            await tracked.admitted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        return tracked.stream

    def end_all(self, message: str) -> None:
        """Ends every running request with an EngineDeadError(message) (shutdown past its grace time)."""
        self._fail_all(EngineDeadError(message), abort=True)

    def abort(self, request_id: str) -> None:
        tracked = self._tracked.pop(request_id, None)
        if tracked is None:
            return
        if self._client is not None and not self._dead:
            self._client.send(AbortRequests([request_id]))
        if self.metrics is not None:
            self.metrics.request_aborted()

    # ---- the core's messages -------------------------------------------------------------------
    async def _receive(self) -> None:
        assert self._client is not None
        while True:
            message = await self._client.receive()
            if isinstance(message, CoreStatus):
                self._on_status(message)
            else:
                self._on_step(message)

    def _on_status(self, status: CoreStatus) -> None:
        self.status_detail = status.detail
        if status.phase == "ready" and not self.ready:
            self.ready = True
            logger.info("The engine core is ready")
        elif status.phase == "failed":
            self._core_died(f"the engine core failed ({status.detail})")

    def _on_step(self, step: StepOutputs) -> None:
        self.stats = EngineStats(*(getattr(step.stats, f.name) for f in dataclasses.fields(EngineStats)))
        self._on_admissions(step.admissions)
        for failure in step.failures:
            failed = self._tracked.pop(failure.request_id, None)
            if failed is not None:
                _fail(failed, RequestFailedError(failure.error))
        touched = self._apply_deltas(step.deltas)
        now = time.monotonic()
        for request_id, tracked in touched.items():
            out = tracked.tracker.output()
            self._observe(tracked, out, now)
            tracked.stream.put(out)
            if out.finished:
                del self._tracked[request_id]
        if self._stats_logger is not None:
            self._stats_logger.maybe_log(self.stats)

    def _on_admissions(self, admissions: list[Admission]) -> None:
        """Wakes each waiting ``add_request``: admitted, or refused with the engine's error."""
        for admission in admissions:
            tracked = self._tracked.get(admission.request_id)
            if tracked is None or tracked.admitted.done():
                continue
            if admission.error is None:
                tracked.admitted.set_result(None)
            else:
                del self._tracked[admission.request_id]
                tracked.admitted.set_exception(_refusal(admission))

    def _apply_deltas(self, deltas: list[SequenceDelta]) -> dict[str, _Tracked]:
        """Feeds each request's new tokens to its tracker; returns the requests that got some."""
        touched: dict[str, _Tracked] = {}
        for delta in deltas:
            tracked = self._tracked.get(delta.request_id)
            if tracked is None:
                continue
            if delta.scheduled_time is not None:
                tracked.scheduled_time = delta.scheduled_time
            if tracked.tracker.apply(delta) and self._client is not None:
                self._client.send(AbortRequests([delta.request_id]))  # a stop string ended it here
            touched[delta.request_id] = tracked
        return touched

    def _observe(self, tracked: _Tracked, out: RequestOutput, now: float) -> None:
        if self.metrics is None:
            return
        total = sum(len(o.token_ids) for o in out.outputs)
        if total > tracked.num_tokens:
            if tracked.last_token_time is None:
                self.metrics.time_to_first_token.observe(now - tracked.arrival)
                tracked.first_token_time = now
            else:
                self.metrics.inter_token_latency.observe(now - tracked.last_token_time)
            tracked.last_token_time = now
            tracked.num_tokens = total
        if out.finished:
            reason = out.outputs[0].finish_reason or "stop"
            self.metrics.request_finished(reason, now - tracked.arrival, len(out.prompt_token_ids), total)
            self._observe_phases(tracked, now)

    def _observe_phases(self, tracked: _Tracked, now: float) -> None:
        assert self.metrics is not None
        scheduled = tracked.scheduled_time if tracked.scheduled_time is not None else tracked.arrival
        first_token = tracked.first_token_time if tracked.first_token_time is not None else now
        self.metrics.queue_time.observe(scheduled - tracked.arrival)
        self.metrics.prefill_time.observe(first_token - scheduled)
        self.metrics.decode_time.observe(now - first_token)
        self.metrics.inference_time.observe(now - scheduled)

    # ---- the core's death ----------------------------------------------------------------------
    async def _watch(self) -> None:
        while self._core_alive():
            await asyncio.sleep(LIVENESS_POLL_S)
        self._core_died("the engine core process has exited")

    def _core_died(self, why: str) -> None:
        if self._dead:
            return
        logger.error("%s; every in-flight request ends with an error and /health answers 503", why.capitalize())
        self._dead = True
        self._fail_all(EngineDeadError("The engine has stopped; this server cannot serve requests."), abort=False)
        if self._on_core_death is not None:
            self._on_core_death()

    def _fail_all(self, error: RequestFailedError, abort: bool) -> None:
        for request_id, tracked in list(self._tracked.items()):
            if abort and self._client is not None and not self._dead:
                self._client.send(AbortRequests([request_id]))
            _fail(tracked, error)
        self._tracked.clear()


def _fail(tracked: _Tracked, error: RequestFailedError) -> None:
    """Ends a request here: its handler waits for its admission, or reads its stream."""
    if not tracked.admitted.done():
        tracked.admitted.set_exception(error)
    else:
        tracked.stream.put(error)


def _refusal(admission: Admission) -> Exception:
    """The error of a request the core did not admit: what the engine raised, or a failure of its own."""
    if admission.status == 400:
        return RequestValidationError(admission.error or "", admission.param)
    return RequestFailedError(admission.error or "")
