"""The messages between API servers and the engine core, as msgspec structs (msgpack on the wire).

API server -> core: ``Hello``, ``AddRequest`` and ``AbortRequests``. Core -> each API server: ``CoreStatus``
(start-up progress, then ready) and ``StepOutputs`` (one per engine step: every new token of that
server's requests, finish reasons, admissions and the engine's stats). No text ever crosses: the
API server detokenizes.
"""

from __future__ import annotations

import msgspec

from engine.sampling_params import SamplingParams

# One position's logprobs: (token id, logprob, rank) for the chosen token first, then the top-k.
WireLogprobs = list[tuple[int, float, int | None]]


class AddRequest(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    client_index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float


class AbortRequests(msgspec.Struct, tag=True, array_like=True):
    request_ids: list[str]


class Refused(msgspec.Struct, tag=True, array_like=True):
    """Made by the core's input thread, never sent: an AddRequest that did not decode (its params
    broke a type the API server had let through). It is answered like any refusal, so that request
    fails alone."""

    request_id: str
    client_index: int
    error: str


class Hello(msgspec.Struct, tag=True, array_like=True):
    """An API server has connected: the core answers with its status (messages sent before may be lost)."""

    client_index: int


class SequenceDelta(msgspec.Struct, array_like=True, omit_defaults=True):
    """What one sample of one request gained in one step."""

    request_id: str
    index: int
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[WireLogprobs] | None = None  # one entry per new token, when asked
    cumulative_logprob: float | None = None
    prompt_logprobs: list[WireLogprobs | None] | None = None  # once, with the request's first delta
    num_cached_tokens: int = 0  # with the first delta too
    scheduled_time: float | None = None  # with the first delta: time.monotonic() of its first step


class Admission(msgspec.Struct, array_like=True, omit_defaults=True):
    """The engine's answer to an AddRequest: ``error`` is its ValueError (too long, bad ids, an
    output constraint that does not compile, ...: ``status`` 400, ``param`` the SamplingParams
    field at fault when the engine knows it) or what went wrong in the engine (500). A request
    with an output constraint is answered once its grammar has compiled, in a later message."""

    request_id: str
    error: str | None = None
    status: int = 400
    param: str | None = None


class Failure(msgspec.Struct, array_like=True):
    """A running request the engine had to end (a step failed on its batch); it fails alone."""

    request_id: str
    error: str


class CoreStats(msgspec.Struct, array_like=True):
    """engine.stats.EngineStats, field for field."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_blocks: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int
    num_compilations: int
    num_late_compilations: int
    prefix_cache_queries: int
    prefix_cache_hits: int


class StepOutputs(msgspec.Struct, tag=True, array_like=True):
    deltas: list[SequenceDelta]
    admissions: list[Admission]
    stats: CoreStats
    failures: list[Failure] = []


class CoreStatus(msgspec.Struct, tag=True, array_like=True):
    """Start-up progress for /health: phase "warming" (detail says how far) until "ready"; "failed"
    when the core cannot go on (detail says why)."""

    phase: str
    detail: str = ""


ToCore = AddRequest | AbortRequests | Hello | Refused
FromCore = StepOutputs | CoreStatus

_encoder = msgspec.msgpack.Encoder()
_to_core = msgspec.msgpack.Decoder(ToCore)
_from_core = msgspec.msgpack.Decoder(FromCore)


def encode(message: ToCore | FromCore) -> bytes:
    return _encoder.encode(message)


def decode_to_core(data: bytes) -> ToCore:
    return _to_core.decode(data)


def decode_from_core(data: bytes) -> FromCore:
    return _from_core.decode(data)


def refusal_of(data: bytes, error: Exception) -> Refused | None:
    """The Refused for an undecodable AddRequest, when its id and sender can still be read."""
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, list) and len(raw) > 2 and raw[0] == "AddRequest" and isinstance(raw[1], str) \
            and isinstance(raw[2], int):
        return Refused(raw[1], raw[2], f"invalid request: {error}")
    return None
