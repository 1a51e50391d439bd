"""The engine core's step loop and the API side's output processing, in one process (no sockets):
split in two, a request must come out exactly as the in-process engine makes it (text, tokens,
stop strings, logprobs, finish reasons), and a stop string found on the API side must abort the
request in the core, freeing its blocks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from engine import LLMEngine, SamplingParams
from engine.core.engine_core import EngineCore
from engine.core.messages import (
    AbortRequests,
    AddRequest,
    Refused,
    StepOutputs,
)
from engine.core.output_processor import RequestTracker
from engine.core.served_model import ServedModel
from engine.outputs import RequestOutput
from tests.fake_core_sockets import FakeCoreSockets
from tests.tiny_models import run_to_completion


@pytest.fixture(scope="module")
def shared_engine(make_tiny_engine: Callable[..., LLMEngine]) -> LLMEngine:
    """One engine for the whole module (each new one compiles its programs again)."""
    return make_tiny_engine()


@pytest.fixture
def engine(shared_engine: LLMEngine) -> Any:
    """The shared engine, idle and in its in-process (text) mode again after each test."""
    yield shared_engine
    assert not shared_engine.has_unfinished_requests()
    shared_engine.detokenize = True


def _split_run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, RequestOutput]:
    """Runs requests through an EngineCore and RequestTrackers, as the two processes would."""
    sockets = FakeCoreSockets()
    core = EngineCore(engine, sockets, threading.Event())  # type: ignore[arg-type]
    model = ServedModel.of(engine)
    trackers = {rid: RequestTracker(rid, ids, params, model) for rid, (ids, params) in requests.items()}
    for rid, (ids, params) in requests.items():
        sockets.inbox.put(AddRequest(rid, 0, ids, params, 0.0))
    finals: dict[str, RequestOutput] = {}
    while len(finals) < len(requests):
        core.run_once()
        for message in sockets.sent:
            assert isinstance(message, StepOutputs)
            assert all(a.error is None for a in message.admissions)
            for delta in message.deltas:
                tracker = trackers[delta.request_id]
                if delta.request_id in finals:
                    continue
                if tracker.apply(delta):
                    sockets.inbox.put(AbortRequests([delta.request_id]))
                if tracker.finished:
                    finals[delta.request_id] = tracker.output()
        sockets.sent.clear()
    while engine.has_unfinished_requests():  # applies the aborts and reads back a step still in flight
        core.run_once()
    return finals


def _requests(engine: LLMEngine, stop: str) -> dict[str, tuple[list[int], SamplingParams]]:
    tokenizer = engine.tokenizer
    prompt = tokenizer.encode("Once upon a time")
    return {
        "plain": (prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)),
        "stopped": (prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])),
        "sampled": (tokenizer.encode("Hello"), SamplingParams(n=2, seed=5, max_tokens=8, ignore_eos=True,
                                                               prompt_logprobs=1)),
    }


def _summary(out: RequestOutput) -> list[Any]:
    samples = [(o.text, o.token_ids, o.finish_reason, o.stop_reason,
                [{t: (lp.logprob, lp.rank, lp.decoded_token) for t, lp in p.items()} for p in o.logprobs or []])
               for o in out.outputs]
    prompt = [None if p is None else {t: lp.logprob for t, lp in p.items()} for p in out.prompt_logprobs or []]
    return [samples, prompt]


def test_split_engine_matches_the_in_process_engine(engine: LLMEngine) -> None:
    probe = engine.tokenizer.encode("Once upon a time")
    engine.add_request("probe", probe, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    text = run_to_completion(engine)["probe"].outputs[0].text
    stop = text[len(text) // 3: len(text) // 3 + 3]
    assert stop.strip(), f"need a visible stop string in {text!r}"

    requests = _requests(engine, stop)
    for rid, (ids, params) in requests.items():
        engine.add_request(rid, ids, params)
    in_process = run_to_completion(engine)
    generated_before = engine.stats().generation_tokens_total
    split = _split_run(engine, _requests(engine, stop))

    assert in_process["stopped"].outputs[0].finish_reason == "stop"
    assert in_process["stopped"].outputs[0].stop_reason == stop
    for rid in requests:
        assert _summary(split[rid]) == _summary(in_process[rid]), rid
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks  # the stopped request was aborted in the core
    assert stats.generation_tokens_total - generated_before < 12 + 40 + 16  # ... before it ran to max_tokens


def test_a_refused_request_is_answered_alone(engine: LLMEngine) -> None:
    sockets = FakeCoreSockets()
    core = EngineCore(engine, sockets, threading.Event())  # type: ignore[arg-type]
    sockets.inbox.put(AddRequest("too-long", 0, [5] * 600, SamplingParams(), 0.0))
    sockets.inbox.put(Refused("undecodable", 0, "invalid request: Expected `int`"))
    sockets.inbox.put(AddRequest("fine", 0, [5, 6], SamplingParams(max_tokens=1), 0.0))
    core.run_once()
    while engine.has_unfinished_requests():  # with overlapped steps the tokens come a step later
        core.run_once()
    admissions = [a for m in sockets.sent if isinstance(m, StepOutputs) for a in m.admissions]
    assert admissions[0].request_id == "too-long" and "maximum context length" in (admissions[0].error or "")
    assert admissions[1].request_id == "undecodable" and "invalid request" in (admissions[1].error or "")
    assert admissions[2].request_id == "fine" and admissions[2].error is None
    for _ in range(3):  # with the overlap on, a step's tokens are read back during the next step
        if not engine.has_unfinished_requests():
            break
        core.run_once()
    deltas = [d for m in sockets.sent if isinstance(m, StepOutputs) for d in m.deltas]
    assert [(d.request_id, len(d.new_token_ids), d.finish_reason) for d in deltas] == [("fine", 1, "length")]


@pytest.mark.parametrize("text_free", [True, False])
def test_text_free_engine_makes_no_text(engine: LLMEngine, text_free: bool) -> None:
    engine.detokenize = not text_free
    engine.add_request("r", [5, 6, 7], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=1))
    out = run_to_completion(engine)["r"].outputs[0]
    assert len(out.token_ids) == 4
    assert (out.text == "") == text_free
    assert all((lp.decoded_token is None) == text_free for p in out.logprobs or [] for lp in p.values())


def test_an_add_request_that_does_not_decode_is_refused_alone() -> None:
    """Params of a type the core's typed decoding refuses (whatever let them through on the API side)."""
    import msgspec

    from engine.core.messages import decode_to_core, refusal_of

    data = msgspec.msgpack.encode(["AddRequest", "odd", 3, [1, 2], {"seed": "forty-two"}, 0.0])
    with pytest.raises(ValueError) as caught:
        decode_to_core(data)
    refusal = refusal_of(data, caught.value)
    assert isinstance(refusal, Refused) and (refusal.request_id, refusal.client_index) == ("odd", 3)
    assert "seed" in refusal.error
    assert refusal_of(b"\xc1", caught.value) is None


def test_failing_steps_end_their_requests_until_three_in_a_row_stop_the_core(engine: LLMEngine,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sockets = FakeCoreSockets()
    core = EngineCore(engine, sockets, threading.Event())  # type: ignore[arg-type]

    def broken_step() -> list[Any]:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "step", broken_step)
    for attempt in range(2):
        sockets.inbox.put(AddRequest(f"r{attempt}", 0, [5, 6], SamplingParams(max_tokens=2), 0.0))
        core.run_once()
        failures = [f for m in sockets.sent if isinstance(m, StepOutputs) for f in m.failures]
        assert [f.request_id for f in failures] == [f"r{attempt}"] and "device lost" not in failures[0].error
        sockets.sent.clear()
        stats = engine.stats()
        assert stats.num_free_blocks == stats.num_blocks and not engine.has_unfinished_requests()
    sockets.inbox.put(AddRequest("r2", 0, [5, 6], SamplingParams(max_tokens=2), 0.0))
    with pytest.raises(RuntimeError, match="device lost"):
        core.run_once()  # the third failure in a row: the core process exits and its API servers answer 503
    engine.abort_request("r2")
