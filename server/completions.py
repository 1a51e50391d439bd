"""``POST /v1/completions``: one engine request per prompt, ``n`` choices each, streamed or not."""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from engine.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from engine.request_limits import MAX_PROMPTS_PER_REQUEST, MAX_SEQUENCES_PER_REQUEST
from server.engine_loop import RequestFailedError, RequestStream
from server.errors import bad_request, from_value_error
from server.logprobs import completion_logprobs
from server.protocol import CompletionRequest
from server.responses import CompletionChoice, CompletionLogProbs, CompletionResponse, usage
from server.sampling import check_stream_options, sampling_params
from server.state import ServerState, new_request_id
from server.streaming import (
    SSE_DONE,
    SSE_HEADERS,
    abort_unfinished,
    final_outputs,
    merged,
    sse,
    sse_error,
    submit,
    unless_disconnected,
)


@dataclasses.dataclass
class _Job:
    request_id: str
    model: str
    created: int
    req: CompletionRequest
    prompt_ids: list[list[int]]
    echo_texts: list[str] | None  # the prompts as text, when echoing
    decode_one: Callable[[int], str]

    def response(self, choices: list[CompletionChoice], completion_tokens: int | None) -> CompletionResponse:
        counted = None
        if completion_tokens is not None:
            counted = usage(sum(len(ids) for ids in self.prompt_ids), completion_tokens)
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                  usage=counted)


async def create_completion(state: ServerState, req: CompletionRequest,
                            request: Request[Any, Any, Any]) -> Response[Any]:
    model = state.resolve_model(req.model)
    check_stream_options(req)
    if req.suffix:
        raise bad_request("suffix is not supported", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of other than n is not supported", "best_of")
    prompts = _prompt_list(req.prompt)
    if len(prompts) > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(f"prompt may hold at most {MAX_PROMPTS_PER_REQUEST} prompts, got {len(prompts)}", "prompt")
    try:
        params = sampling_params(
            req, state.settings.generation_defaults, max_tokens=req.max_tokens, logprobs=req.logprobs,
            prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None,
        )
    except ValueError as err:
        raise from_value_error(err) from None
    source, params.structured_outputs = state.output_constraint(req)
    state.check_capacity()
    if len(prompts) * req.n > MAX_SEQUENCES_PER_REQUEST:
        raise bad_request(f"n times the number of prompts must be at most {MAX_SEQUENCES_PER_REQUEST}, got "
                          f"{req.n} x {len(prompts)}", "n")
    prompt_ids = [await state.encode(p, params) for p in prompts]
    job = _Job(
        request_id=new_request_id("cmpl"), model=model, created=int(time.time()), req=req, prompt_ids=prompt_ids,
        echo_texts=[p if isinstance(p, str) else state.decode(p) for p in prompts] if req.echo else None,
        decode_one=lambda token: state.decode([token]),
    )
    for prompt in prompts:
        state.log_request(job.request_id, prompt, params)
    streams = await submit(state.engine_loop, job.request_id, prompt_ids, params, source)
    if req.stream:
        body = _stream(state, job, streams)
        # If the response is dropped before its body starts (the client left), nothing else aborts these.
        weakref.finalize(body, abort_unfinished, state.engine_loop, streams)
        return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)
    finals = await unless_disconnected(request, final_outputs(state.engine_loop, streams))
    return Response(_full_response(job, finals))


def _prompt_list(prompt: str | list[Any]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    if prompt and all(isinstance(x, str) for x in prompt):
        return list(prompt)
    if prompt and all(isinstance(x, list) for x in prompt):
        return [list(x) for x in prompt]
    raise bad_request("prompt must be a string, a list of strings, a list of token ids or a list of "
                      "token-id lists, and not empty", "prompt")


def _full_response(job: _Job, finals: list[RequestOutput]) -> CompletionResponse:
    choices = []
    completion_tokens = 0
    for p, out in enumerate(finals):
        for o in out.outputs:
            completion_tokens += len(o.token_ids)
            text, logprobs = _delta(job, p, out, o, 0, 0, first=True, text_offset=0)
            choices.append(CompletionChoice(index=p * job.req.n + o.index, text=text, logprobs=logprobs,
                                            finish_reason=o.finish_reason, stop_reason=o.stop_reason))
    choices.sort(key=lambda c: c.index)
    return job.response(choices, completion_tokens)


def _delta(job: _Job, p: int, out: RequestOutput, o: CompletionOutput, text_from: int, tokens_from: int,
           first: bool, text_offset: int) -> tuple[str, CompletionLogProbs | None]:
    """The text (and logprobs) of choice ``o`` past the given marks; the echoed prompt leads the first delta."""
    text = o.text[text_from:]
    ids: list[int] = list(o.token_ids[tokens_from:])
    positions: list[PositionLogprobs | None] = list((o.logprobs or [])[tokens_from:len(o.token_ids)])
    if first and job.echo_texts is not None:
        text = job.echo_texts[p] + text
        ids = job.prompt_ids[p] + ids
        positions = list(out.prompt_logprobs or [None] * len(job.prompt_ids[p])) + positions
    if job.req.logprobs is None:
        return text, None
    return text, completion_logprobs(ids, positions, job.req.logprobs, text_offset, job.decode_one)


async def _stream(state: ServerState, job: _Job, streams: list[RequestStream]) -> AsyncIterator[bytes]:
    n = job.req.n
    size = len(streams) * n
    sent_text, sent_tokens, offset = [0] * size, [0] * size, [0] * size
    started, done = [False] * size, [False] * size
    options = job.req.stream_options
    include_usage = options is not None and options.include_usage
    continuous = include_usage and options is not None and options.continuous_usage_stats
    completion_tokens = 0
    try:
        async for p, out in merged(streams):
            for o in out.outputs:
                i = p * n + o.index
                if done[i]:
                    continue
                new_tokens = len(o.token_ids) - sent_tokens[i]
                if len(o.text) == sent_text[i] and not new_tokens and o.finish_reason is None:
                    continue
                text, logprobs = _delta(job, p, out, o, sent_text[i], sent_tokens[i], first=not started[i],
                                        text_offset=offset[i])
                completion_tokens += new_tokens
                sent_text[i], sent_tokens[i] = len(o.text), len(o.token_ids)
                offset[i] += len(text)
                started[i], done[i] = True, o.finish_reason is not None
                choice = CompletionChoice(index=i, text=text, logprobs=logprobs, finish_reason=o.finish_reason,
                                          stop_reason=o.stop_reason)
                yield sse(job.response([choice], completion_tokens if continuous else None))
        if include_usage:
            yield sse(job.response([], completion_tokens))
    except RequestFailedError as err:
        yield sse_error(err.status, str(err))
    finally:
        abort_unfinished(state.engine_loop, streams)
    yield SSE_DONE
