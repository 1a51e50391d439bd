"""Structured outputs through the engine on the tiny model (random weights, the real SmolLM2
tokenizer): every output matches its constraint, greedy and sampled, alongside an unconstrained
request; a request waits for its grammar outside the scheduler and one whose grammar does not
compile ends alone; the engine core answers such a request with a refusal naming the field;
offline ``LLM`` refuses a bad constraint before queueing anything.

The engine precompiles a two-program bucket plan (the token mask rides in its gated variants), so
these tests compile nothing else, and every test checks that no program was compiled after ready.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest

from engine import LLM, LLMEngine, SamplingParams
from engine.constrained import ConstrainedRequests
from engine.core.engine_core import EngineCore
from engine.core.messages import AddRequest, FromCore, StepOutputs
from engine.structured_output import StructuredOutputError, StructuredOutputSpec, bitmask_words
from tests.fake_core_sockets import FakeCoreSockets
from tests.tiny_models import run_to_completion

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "n"], "additionalProperties": False}
DATE = r"\d{4}-\d{2}-\d{2}"


@pytest.fixture(scope="module")
def shared_engine(make_tiny_engine: Callable[..., LLMEngine]) -> LLMEngine:
    """One engine for the module, its plan precompiled (one decode and one prefill shape); the overlap is on."""
    return make_tiny_engine(precompile=True, max_num_seqs=8, max_num_batched_tokens=64, token_bucket_ladder=(64,),
                            seq_bucket_ladder=(8,))


@pytest.fixture
def engine(shared_engine: LLMEngine) -> Iterator[LLMEngine]:
    yield shared_engine
    assert not shared_engine.has_unfinished_requests()
    assert shared_engine.stats().num_late_compilations == 0  # constrained steps ran on planned programs
    shared_engine.on_admission = None
    shared_engine.detokenize = True


def test_constrained_outputs_match(engine: LLMEngine) -> None:
    assert engine.runner.plan.mask_words == bitmask_words(engine.model_config.vocab_size)
    specs = {
        "json-greedy": (StructuredOutputSpec.json_schema(SCHEMA), 0.0, 1),
        "json-sampled": (StructuredOutputSpec.json_schema(SCHEMA), 1.0, 2),
        "regex": (StructuredOutputSpec.regex(DATE), 1.0, 1),
        "choice": (StructuredOutputSpec.choice(["yes", "no", "maybe"]), 0.0, 1),
    }
    for name, (spec, temperature, n) in specs.items():
        engine.add_request(name, f"Answer for {name}:", SamplingParams(
            n=n, temperature=temperature, seed=3, max_tokens=60, structured_outputs=spec))
    engine.add_request("free", "Free text:", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    outputs = run_to_completion(engine)
    for name in ("json-greedy", "json-sampled"):
        for out in outputs[name].outputs:
            assert out.finish_reason == "stop", (name, out.text)  # complete: ended without an eos step
            jsonschema.validate(json.loads(out.text), SCHEMA)
    assert re.fullmatch(DATE, outputs["regex"].outputs[0].text)
    assert outputs["choice"].outputs[0].text in ("yes", "no", "maybe")
    assert len(outputs["free"].outputs[0].token_ids) == 8


def test_a_reasoning_model_thinks_freely_and_answers_under_the_constraint(
        engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a reasoning end token the mask starts after it (a logit bias makes the random model emit
    it first), or at once when the prompt holds it already (thinking turned off by the template)."""
    assert engine.constraints.grammars is not None
    end = engine.tokenizer.encode("Answer", add_special_tokens=False)[0]  # stands in for </think>
    monkeypatch.setattr(engine.constraints.grammars, "reasoning_end_token", end)
    spec = StructuredOutputSpec.choice(["yes", "no"])
    params = SamplingParams(temperature=0, max_tokens=8, logit_bias={end: 100.0}, structured_outputs=spec)
    engine.add_request("thinks", [5, 6, 7], params)
    engine.add_request("answers", [5, end, 7], params)
    outputs = run_to_completion(engine)
    thinks, answers = outputs["thinks"].outputs[0], outputs["answers"].outputs[0]
    assert thinks.token_ids[0] == end and engine.tokenizer.decode(thinks.token_ids[1:]) in ("yes", "no")
    assert answers.text in ("yes", "no") and end not in answers.token_ids  # the bias lost to the mask
    assert thinks.finish_reason == answers.finish_reason == "stop"
    single = ConstrainedRequests(engine.tokenizer, 100, "Answer").grammars
    several = ConstrainedRequests(engine.tokenizer, 100, "</think>").grammars  # several tokens in SmolLM2's vocabulary
    assert single is not None and single.reasoning_end_token == end
    assert several is not None and several.reasoning_end_token is None  # then the constraint covers everything


def _held(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[concurrent.futures.Future[Any]]:
    """Each new grammar of ``engine`` waits for its own future in the returned list: compiles by hand."""
    compiles: list[concurrent.futures.Future[Any]] = []

    def compile_later(spec: StructuredOutputSpec) -> concurrent.futures.Future[Any]:
        compiles.append(concurrent.futures.Future())
        return compiles[-1]

    monkeypatch.setattr(engine.constraints.grammars, "_compile", compile_later)
    return compiles


def test_a_request_waits_for_its_grammar_and_a_failed_one_ends_alone(
        engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[tuple[str, str | None]] = []
    engine.on_admission = lambda request_id, error: heard.append((request_id, error))
    compiles = _held(engine, monkeypatch)
    spec = StructuredOutputSpec.regex("[ab]{3}")
    assert engine.add_request("waits", "x", SamplingParams(structured_outputs=spec)) is False
    assert engine.add_request("fails", "y", SamplingParams(structured_outputs=spec)) is False
    assert engine.add_request("free", "z", SamplingParams(max_tokens=2, ignore_eos=True)) is True
    outputs = run_to_completion_of(engine, "free")
    assert engine.has_unfinished_requests() and engine.requests["waits"].seqs[0] not in engine.scheduler.waiting
    assert not heard and {out.request_id for out in outputs} == {"free"}
    engine.abort_request("waits")  # aborted while compiling: nothing is left of it
    compiles[1].set_exception(StructuredOutputError("invalid regex: nope"))
    failed = run_to_completion(engine)["fails"].outputs[0]
    assert heard == [("fails", "invalid regex: nope")]
    assert failed.finish_reason == "error" and not failed.token_ids


def run_to_completion_of(engine: LLMEngine, request_id: str) -> list[Any]:
    """Steps until ``request_id`` has finished; every output on the way."""
    outputs: list[Any] = []
    for _ in range(100):
        outputs += engine.step()
        if any(out.request_id == request_id and out.finished for out in outputs):
            return outputs
    raise AssertionError(f"{request_id} did not finish")


def test_the_core_answers_a_constrained_request_once_compiled(
        engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission waits for the compile (in the core); a refusal names structured_outputs and the
    request sends nothing else; the admitted one runs to its end."""
    sockets = FakeCoreSockets()
    core = EngineCore(engine, sockets, threading.Event())  # type: ignore[arg-type]
    compiles = _held(engine, monkeypatch)
    spec = StructuredOutputSpec.choice(["ab", "cd"])
    for request_id in ("bad", "good"):
        sockets.inbox.put(AddRequest(request_id, 0, [5, 6, 7], SamplingParams(
            max_tokens=3, temperature=0, structured_outputs=spec), 0.0))
    for _ in range(3):
        core.run_once()
    assert len(compiles) == 2 and not _admissions(sockets.sent)
    compiles[0].set_exception(StructuredOutputError("invalid choice: no"))
    assert engine.constraints.grammars is not None
    compiles[1].set_result(engine.constraints.grammars.compile(spec))
    while engine.has_unfinished_requests():
        core.run_once()
    admissions = _admissions(sockets.sent)
    assert [(a.request_id, a.error, a.param) for a in admissions] == [
        ("bad", "invalid choice: no", "structured_outputs"), ("good", None, None)]
    deltas = [d for m in sockets.sent if isinstance(m, StepOutputs) for d in m.deltas]
    assert {d.request_id for d in deltas} == {"good"} and deltas[-1].finish_reason == "stop"


def _admissions(sent: list[FromCore]) -> list[Any]:
    return [a for message in sent if isinstance(message, StepOutputs) for a in message.admissions]


def test_offline_llm_checks_constraints_before_queueing(engine: LLMEngine) -> None:
    llm = LLM.from_engine(engine)
    # vLLM's dict form of the constraint is taken too
    colours: Any = {"choice": ["red", "green"]}
    good = SamplingParams(temperature=0, max_tokens=8, structured_outputs=colours)
    bad = SamplingParams(structured_outputs={"regex": "(?<=a)b"})  # type: ignore[arg-type]
    with pytest.raises(StructuredOutputError, match="look") as refused:
        llm.generate(["a", "b"], [good, bad], use_tqdm=False)
    assert refused.value.param == "structured_outputs" and not engine.requests
    tool = {"type": "function", "function": {"name": "paint", "parameters": {"type": "object"}}}
    out = llm.chat([{"role": "user", "content": "Pick a colour."}], good, use_tqdm=False, tools=[tool])[0]
    assert out.outputs[0].text in ("red", "green")


def test_without_a_tokenizer_constraints_are_refused() -> None:
    with pytest.raises(StructuredOutputError, match="tokenizer") as refused:
        ConstrainedRequests(None, 100).check(StructuredOutputSpec.json_object())
    assert refused.value.param == "structured_outputs"
