"""``POST /v1/chat/completions``: the chat template renders the messages into one engine request."""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from engine.outputs import CompletionOutput
from server.chat_output import ChatDelta, ChatDeltaStream, finish_reason, parse_message
from server.chat_template import render_chat
from server.engine_loop import RequestFailedError, RequestStream
from server.errors import bad_request, from_value_error
from server.logprobs import chat_logprobs
from server.protocol import ChatCompletionRequest
from server.reasoning_parsers import ReasoningParser
from server.responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatStreamChoice,
    DeltaMessage,
    UsageInfo,
    usage,
)
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
from server.tool_parsers.plan import ToolPlan, plan_tools
from server.tool_parsers.tools import ToolError


@dataclasses.dataclass
class _Job:
    request_id: str
    model: str
    created: int
    req: ChatCompletionRequest
    num_prompt_tokens: int
    tools: ToolPlan
    reasoning: ReasoningParser | None

    def choice(self, o: CompletionOutput) -> ChatChoice:
        """A finished choice: its text read into reasoning, content and tool calls."""
        parts = parse_message(o.text, self.reasoning, self.tools)
        message = AssistantMessage(content=parts.content, reasoning_content=parts.reasoning_content,
                                   tool_calls=[call.to_openai() for call in parts.tool_calls])
        return ChatChoice(index=o.index, message=message, logprobs=self.logprobs(o, 0),
                          finish_reason=finish_reason(o.finish_reason, bool(parts.tool_calls)),
                          stop_reason=o.stop_reason)

    def chunk(self, choices: list[ChatStreamChoice], counted: UsageInfo | None = None) -> bytes:
        return sse(ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                       choices=choices, usage=counted))

    def logprobs(self, o: CompletionOutput, tokens_from: int) -> ChatLogprobs | None:
        if not self.req.logprobs:
            return None
        return chat_logprobs(o.token_ids[tokens_from:], (o.logprobs or [])[tokens_from:len(o.token_ids)],
                             self.req.top_logprobs or 0)


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest,
                                 request: Request[Any, Any, Any]) -> Response[Any]:
    model = state.resolve_model(req.model)
    check_stream_options(req)
    _check_supported(req)
    tools = _tool_plan(state, req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    try:
        params = sampling_params(req, state.settings.generation_defaults, max_tokens=max_tokens,
                                 logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    except ValueError as err:
        raise from_value_error(err) from None
    source, params.structured_outputs = state.output_constraint(req, tools.constraint)
    state.check_capacity()
    template_kwargs = dict(req.chat_template_kwargs or {})
    if req.tools:
        template_kwargs["tools"] = req.tools
    rendered = await render_chat(state, req.messages, add_generation_prompt=req.add_generation_prompt,
                                 chat_template=req.chat_template, template_kwargs=template_kwargs)
    prompt_ids = await state.encode(rendered, params)
    job = _Job(new_request_id("chatcmpl"), model, int(time.time()), req, len(prompt_ids), tools,
               state.reasoning_parser)
    state.log_request(job.request_id, prompt_ids, params)
    streams = await submit(state.engine_loop, job.request_id, [prompt_ids], params, source)
    if req.stream:
        body = _stream(state, job, streams[0])
        # If the response is dropped before its body starts (the client left), nothing else aborts it.
        weakref.finalize(body, abort_unfinished, state.engine_loop, streams)
        return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)
    (final,) = await unless_disconnected(request, final_outputs(state.engine_loop, streams))
    choices = [job.choice(o) for o in final.outputs]
    completion_tokens = sum(len(o.token_ids) for o in final.outputs)
    return Response(ChatCompletionResponse(id=job.request_id, created=job.created, model=model, choices=choices,
                                           usage=usage(job.num_prompt_tokens, completion_tokens)))


def _tool_plan(state: ServerState, req: ChatCompletionRequest) -> ToolPlan:
    try:
        return plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, state.auto_tool_parser)
    except ToolError as err:
        raise bad_request(str(err), err.param) from None


def _check_supported(req: ChatCompletionRequest) -> None:
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")


async def _stream(state: ServerState, job: _Job, stream: RequestStream) -> AsyncIterator[bytes]:
    n = job.req.n
    sent_text, sent_tokens, done = [0] * n, [0] * n, [False] * n
    options = job.req.stream_options
    include_usage = options is not None and options.include_usage
    continuous = include_usage and options is not None and options.continuous_usage_stats
    completion_tokens = 0

    def counted() -> UsageInfo:
        return usage(job.num_prompt_tokens, completion_tokens)

    readers = [ChatDeltaStream(job.reasoning, job.tools) for _ in range(n)]
    try:
        for i in range(n):
            role = DeltaMessage(role="assistant", content="")
            yield job.chunk([ChatStreamChoice(index=i, delta=role)], counted() if continuous else None)
        async for _, out in merged([stream]):
            for o in out.outputs:
                i = o.index
                new_tokens = len(o.token_ids) - sent_tokens[i]
                if done[i] or (len(o.text) == sent_text[i] and not new_tokens and o.finish_reason is None):
                    continue
                completion_tokens += new_tokens
                piece = readers[i].feed(o.text[sent_text[i]:], final=o.finish_reason is not None)
                choice = ChatStreamChoice(
                    index=i, delta=_delta(piece), logprobs=job.logprobs(o, sent_tokens[i]),
                    finish_reason=finish_reason(o.finish_reason, readers[i].called_tools),
                    stop_reason=o.stop_reason,
                )
                sent_text[i], sent_tokens[i], done[i] = len(o.text), len(o.token_ids), o.finish_reason is not None
                yield job.chunk([choice], counted() if continuous else None)
        if include_usage:
            yield job.chunk([], counted())
    except RequestFailedError as err:
        yield sse_error(err.status, str(err))
    finally:
        abort_unfinished(state.engine_loop, [stream])
    yield SSE_DONE


def _delta(piece: ChatDelta) -> DeltaMessage:
    only_other_parts = not piece.content and bool(piece.reasoning_content or piece.tool_calls)
    return DeltaMessage(content=None if only_other_parts else piece.content,
                        reasoning_content=piece.reasoning_content or None,
                        tool_calls=[d.to_openai() for d in piece.tool_calls] or None)
