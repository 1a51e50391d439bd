"""The engine core's step loop: messages in, one engine step, one message per API server out.

It runs the LLMEngine in its text-free mode (``detokenize = False``): the engine stops sequences
on stop ids, eos and lengths, and the API servers apply stop strings to the text they decode and
abort the request here when one matches. Between steps the loop drains its inbox (blocking only
when it has nothing to run); after every step it sends each API server the new tokens of its own
requests together with the engine's stats, and an idle core still reports stats after aborts, so
``/metrics`` shows freed KV blocks at once.

Admissions: a request is answered at once, except one whose output constraint is still compiling
(here, in the core, where its matcher runs): the engine admits it once compiled
(``LLMEngine.on_admission``) and the answer goes with that step's outputs, a refusal naming the
field (a 400 for that request alone; the engine goes on).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from engine.constrained import PARAM as CONSTRAINT_PARAM
from engine.core.messages import (
    AbortRequests,
    AddRequest,
    Admission,
    CoreStats,
    CoreStatus,
    Failure,
    Hello,
    Refused,
    SequenceDelta,
    StepOutputs,
    ToCore,
    WireLogprobs,
)
from engine.core.transport import CoreSockets
from engine.outputs import PositionLogprobs, RequestOutput
from engine.request_errors import RequestValidationError

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
MAX_CONSECUTIVE_STEP_FAILURES = 3


@dataclasses.dataclass
class _Owner:
    """Which API server sent a request, and how much of each sample it has been sent."""

    client: int
    sent: list[int]
    prompt_logprobs_sent: bool = False
    scheduled_time: float | None = None


class EngineCore:
    def __init__(self, engine: LLMEngine, sockets: CoreSockets, stop_requested: threading.Event) -> None:
        engine.detokenize = False
        self.engine = engine
        self.sockets = sockets
        self.stop_requested = stop_requested
        self._owners: dict[str, _Owner] = {}
        self._unscheduled: set[str] = set()
        self._step_failures = 0
        self._admissions: dict[int, list[Admission]] = {}  # answers found during a step, per API server
        engine.on_admission = self._admitted

    def run(self) -> None:
        """Steps until ``stop_requested``; then aborts whatever is still running."""
        while not self.stop_requested.is_set():
            self.run_once()
        for request_id in list(self._owners):
            self.engine.abort_request(request_id)
        self._owners.clear()

    def run_once(self) -> None:
        """Applies the inbox (waiting for it only when idle), then runs one step and reports it."""
        idle = not self.engine.has_unfinished_requests()
        changed = self._apply_all(self._take(block=idle))
        if self.engine.has_unfinished_requests():
            self._step()
        elif changed:
            self._send({})

    def _step(self) -> None:
        """One engine step; a step that raises ends the requests in flight, not the core (unless
        MAX_CONSECUTIVE_STEP_FAILURES steps in a row raise)."""
        started = time.monotonic()
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self._step_failures += 1
            if self._step_failures >= MAX_CONSECUTIVE_STEP_FAILURES:
                raise
            logger.exception("An engine step failed; ending the %d request(s) in flight with an error",
                             len(self._owners))
            self._fail_all(f"The engine failed on this request's batch: {type(exc).__name__}")
            return
        self._step_failures = 0
        self._mark_scheduled(started)
        deltas: dict[int, list[SequenceDelta]] = {}
        self._collect(outputs, deltas)
        self._send(deltas)

    def _mark_scheduled(self, step_start: float) -> None:
        """Requests that this step started computing (or finished) were scheduled at its start."""
        for request_id in list(self._unscheduled):
            state = self.engine.requests.get(request_id)
            if state is None or any(seq.num_computed_tokens for seq in state.seqs):
                self._unscheduled.discard(request_id)
                owner = self._owners.get(request_id)
                if owner is not None:
                    owner.scheduled_time = step_start

    def _fail_all(self, error: str) -> None:
        failures: dict[int, list[Failure]] = {client: [] for client in self._admissions}
        for request_id, owner in self._owners.items():
            try:
                self.engine.abort_request(request_id)
            except Exception:  # noqa: BLE001 - the request is ended either way
                logger.exception("Aborting request %s after a failure failed too", request_id)
            failures.setdefault(owner.client, []).append(Failure(request_id, error))
        self._owners.clear()
        self._unscheduled.clear()
        stats = self.stats()
        for client, failed in failures.items():
            self.sockets.send(client, StepOutputs([], self._admissions.pop(client, []), stats, failed))

    def _take(self, block: bool) -> list[ToCore]:
        messages: list[ToCore] = []
        if block:
            try:
                messages.append(self.sockets.inbox.get(timeout=IDLE_POLL_S))
            except queue.Empty:
                return messages
        while True:
            try:
                messages.append(self.sockets.inbox.get_nowait())
            except queue.Empty:
                return messages

    def _apply_all(self, messages: list[ToCore]) -> bool:
        """Applies adds and aborts in order; admissions go back at once, one message per API server."""
        admissions: dict[int, list[Admission]] = {}
        for message in messages:
            if isinstance(message, AddRequest):
                answer = self._add(message)
                if answer is not None:
                    admissions.setdefault(message.client_index, []).append(answer)
            elif isinstance(message, Refused):
                admissions.setdefault(message.client_index, []).append(Admission(message.request_id, message.error))
            elif isinstance(message, Hello):
                self.sockets.send(message.client_index, CoreStatus("ready"))
            else:
                self._abort(message)
        if admissions:
            stats = self.stats()
            for client, answers in admissions.items():
                self.sockets.send(client, StepOutputs([], answers, stats))
        return bool(messages)

    def _add(self, add: AddRequest) -> Admission | None:
        """The answer to an add; None while its output constraint compiles (``_admitted`` answers)."""
        try:
            scheduled = self.engine.add_request(add.request_id, add.prompt_token_ids, add.params, add.arrival_time)
        except RequestValidationError as err:
            return Admission(add.request_id, str(err), param=err.param)
        except ValueError as err:
            return Admission(add.request_id, str(err))
        except Exception as exc:  # a bug, not bad input: this request fails alone
            logger.exception("Adding request %s failed", add.request_id)
            if add.request_id in self.engine.requests:
                self.engine.abort_request(add.request_id)
            return Admission(add.request_id, f"The engine could not add this request: {type(exc).__name__}", 500)
        self._owners[add.request_id] = _Owner(add.client_index, [0] * add.params.n)
        self._unscheduled.add(add.request_id)
        return None if scheduled is False else Admission(add.request_id)

    def _admitted(self, request_id: str, error: str | None) -> None:
        """The engine has scheduled a request that waited for its grammar, or refused it (``error``)."""
        owner = self._owners.get(request_id)
        if owner is None:
            return
        if error is not None:  # its error output is not sent: the API server answers with a 400
            del self._owners[request_id]
            self._unscheduled.discard(request_id)
        self._admissions.setdefault(owner.client, []).append(
            Admission(request_id, error, param=CONSTRAINT_PARAM if error is not None else None))

    def _abort(self, abort: AbortRequests) -> None:
        for request_id in abort.request_ids:
            self._unscheduled.discard(request_id)
            if self._owners.pop(request_id, None) is not None:
                self.engine.abort_request(request_id)

    def _collect(self, outputs: list[RequestOutput], deltas: dict[int, list[SequenceDelta]]) -> None:
        for out in outputs:
            owner = self._owners.get(out.request_id)
            if owner is None:
                continue
            into = deltas.setdefault(owner.client, [])
            for o in out.outputs:
                sent = owner.sent[o.index]
                if len(o.token_ids) == sent and o.finish_reason is None:
                    continue
                delta = SequenceDelta(out.request_id, o.index, o.token_ids[sent:], o.finish_reason, o.stop_reason)
                if o.logprobs is not None:
                    delta.logprobs = [_wire(p) for p in o.logprobs[sent:]]
                    delta.cumulative_logprob = o.cumulative_logprob
                if not owner.prompt_logprobs_sent and o.index == 0:
                    owner.prompt_logprobs_sent = True
                    delta.num_cached_tokens = out.num_cached_tokens
                    delta.scheduled_time = owner.scheduled_time
                    if out.prompt_logprobs is not None:
                        delta.prompt_logprobs = [None if p is None else _wire(p) for p in out.prompt_logprobs]
                owner.sent[o.index] = len(o.token_ids)
                into.append(delta)
            if out.finished:
                del self._owners[out.request_id]
                self._unscheduled.discard(out.request_id)

    def _send(self, deltas: dict[int, list[SequenceDelta]]) -> None:
        stats = self.stats()
        for client in range(self.sockets.num_clients):
            self.sockets.send(client, StepOutputs(deltas.get(client, []), self._admissions.pop(client, []), stats))

    def stats(self) -> CoreStats:
        return CoreStats(**dataclasses.asdict(self.engine.stats()))


def _wire(position: PositionLogprobs) -> WireLogprobs:
    return [(token, lp.logprob, lp.rank) for token, lp in position.items()]
