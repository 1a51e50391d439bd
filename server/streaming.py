"""Plumbing between handlers and the engine loop: submitting a request's prompts, merging their
output streams, aborting what the client no longer waits for, and SSE framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
from litestar import Request

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from server.engine_loop import EngineLoop, RequestFailedError, RequestStream
from server.errors import ERROR_TYPES, APIError, ClientDisconnected, from_value_error
from server.responses import ErrorInfo, ErrorResponse

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def sse_error(status: int, message: str) -> bytes:
    return sse(ErrorResponse(error=ErrorInfo(message=message, type=ERROR_TYPES[status], code=status)))


async def submit(engine_loop: EngineLoop, request_id: str, prompts: list[list[int]],
                 params: SamplingParams, constraint_source: str | None = None) -> list[RequestStream]:
    """One engine request per prompt; all or none are admitted. Engine errors become API errors;
    one about the output constraint names ``constraint_source``, the request field it came from."""
    streams: list[RequestStream] = []
    try:
        for i, ids in enumerate(prompts):
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            streams.append(await engine_loop.add_request(rid, ids, params))
    except BaseException as exc:
        abort_unfinished(engine_loop, streams)
        if isinstance(exc, ValueError):
            error = from_value_error(exc)
            if constraint_source is not None and error.param == "structured_outputs":
                error.param = constraint_source
            raise error from None
        if isinstance(exc, RequestFailedError):
            raise APIError(exc.status, str(exc)) from None
        raise
    return streams


def abort_unfinished(engine_loop: EngineLoop, streams: list[RequestStream]) -> None:
    for stream in streams:
        if not stream.finished:
            engine_loop.abort(stream.request_id)


async def merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they arrive, until every one has finished."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    inbox: asyncio.Queue[tuple[int, RequestOutput | Exception]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                inbox.put_nowait((index, out))
        except Exception as exc:
            inbox.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await inbox.get()
            if isinstance(item, Exception):
                raise item
            yield index, item
            remaining -= item.finished
    finally:
        for task in tasks:
            task.cancel()


async def final_outputs(engine_loop: EngineLoop, streams: list[RequestStream]) -> list[RequestOutput]:
    """The last output of each stream; if cancelled (the client left), the requests are aborted."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for index, out in merged(streams):
            finals[index] = out
    except RequestFailedError as err:
        raise APIError(err.status, str(err)) from None
    finally:
        abort_unfinished(engine_loop, streams)
    return [out for out in finals if out is not None]


async def unless_disconnected[T](request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Runs ``work`` but cancels it, raising ClientDisconnected, if the client hangs up first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected
    finally:
        watcher.cancel()
        task.cancel()


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
