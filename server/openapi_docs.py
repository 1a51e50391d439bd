"""What the OpenAPI document (``/docs``) says beyond what Litestar infers from the handlers.

Every error is documented in OpenAI's shape (``{"error": {...}}``, what the server really sends)
instead of Litestar's own, and the completion routes document their second body: with
``"stream": true`` the 200 is a ``text/event-stream`` of ``data: {chunk}`` lines ending in
``data: [DONE]``. Value ranges come from the request structs' constraints (server/protocol.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema, Server
from litestar.openapi.spec.enums import OpenAPIType

from server.responses import ErrorResponse

ERROR_STATUSES = {
    400: "Bad request: invalid JSON, a wrong type, a value out of range (OpenAI's error shape)",
    401: "Missing or wrong API key (with a WWW-Authenticate header)",
    404: "Unknown model or route",
    503: "The engine has stopped, or the server is overloaded (with Retry-After)",
}
STREAM_PATHS = ("/v1/completions", "/v1/chat/completions")
SSE_DESCRIPTION = ("With \"stream\": true: server-sent events, one `data: <chunk JSON>` line per chunk, an "
                   "error as `data: {\"error\": {...}}`, and `data: [DONE]` last.")


def api_responses(success: type, description: str) -> dict[int, ResponseSpec]:
    """The success body plus every error status in OpenAI's shape (streaming: ``document_streaming``)."""
    responses = {200: ResponseSpec(success, description=description, generate_examples=False)}
    for status, why in ERROR_STATUSES.items():
        responses[status] = ResponseSpec(ErrorResponse, description=why, generate_examples=False)
    return responses


def openapi_config(version: str, root_path: str = "") -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Tessera", version=version, path="/docs",
        description="OpenAI-compatible LLM inference server (JAX).",
        render_plugins=[SwaggerRenderPlugin(path="/")],
        servers=[Server(url=root_path or "/")],
    )


def document_streaming(app: Litestar) -> None:
    """Adds the ``text/event-stream`` body to the 200 of the routes that stream."""
    schema = app.openapi_schema
    for path in STREAM_PATHS:
        item = (schema.paths or {}).get(path)
        operation = getattr(item, "post", None)
        if operation is None or not operation.responses:
            continue
        ok: Any = operation.responses.get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = dict(ok.content or {})
            ok.content["text/event-stream"] = OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, description=SSE_DESCRIPTION))
