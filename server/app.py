"""The Litestar application: routes, API-key guard, OpenAPI docs, engine-loop lifespan."""

from __future__ import annotations

import hmac
import importlib.metadata
import logging
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath, JSONBody
from msgspec import Struct
from prometheus_client import CONTENT_TYPE_LATEST

from engine.llm_engine import LLMEngine
from server.chat import create_chat_completion
from server.chat_template import render_chat
from server.completions import create_completion
from server.engine_loop import EngineLoop
from server.errors import EXCEPTION_HANDLERS, APIError, bad_request, error_response
from server.metrics import ServerMetrics
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    unknown_fields,
)
from server.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from server.state import ServerSettings, ServerState

logger = logging.getLogger(__name__)


def tessera_version() -> str:
    try:
        return importlib.metadata.version("tessera")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _server(state: State) -> ServerState:
    server: ServerState = state.server
    return server


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    key = _server(connection.app.state).settings.api_key
    if key is None:
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest takes constant time over the key, so response timing does not leak it
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.")


async def _log_unknown_fields(request: Request[Any, Any, Any], request_type: type[Struct]) -> None:
    unknown = unknown_fields(await request.body(), request_type)
    if unknown:
        logger.warning("The following fields were present in the request but ignored: %s", ", ".join(unknown))


# ---- open routes ---------------------------------------------------------------------------
@get("/health", sync_to_thread=False)
def health(state: State) -> Response[Any]:
    engine_loop = _server(state).engine_loop
    if not engine_loop.alive:
        return error_response(503, "The engine has stopped; this server cannot serve requests.")
    if engine_loop.warming:
        done, total = engine_loop.engine.compile_progress()
        return Response(f"warming up: {done} of {total} programs".encode(), status_code=503,
                        media_type="text/plain", headers={"Retry-After": "1"})
    return Response(b"", media_type="text/plain")


@get("/version", sync_to_thread=False)
def version() -> dict[str, str]:
    return {"version": tessera_version()}


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics(state: State) -> Response[bytes]:
    server = _server(state)
    body = server.metrics.render() if server.metrics is not None else b""
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---- routes behind the API key ---------------------------------------------------------------
@get("/v1/models", guards=[require_api_key], sync_to_thread=False)
def list_models(state: State) -> ModelList:
    server = _server(state)
    return ModelList(data=[_model_card(server, name) for name in server.model_names])


@get("/v1/models/{model_id:path}", guards=[require_api_key], sync_to_thread=False)
def retrieve_model(state: State, model_id: FromPath[str]) -> ModelCard:
    server = _server(state)
    return _model_card(server, server.resolve_model(model_id.lstrip("/")))


def _model_card(server: ServerState, name: str) -> ModelCard:
    return ModelCard(id=name, created=server.created, root=server.settings.model_root,
                     max_model_len=server.engine.max_model_len)


@post("/v1/completions", guards=[require_api_key], status_code=200,
      responses={200: ResponseSpec(CompletionResponse, description="A completion, or SSE chunks when streaming")})
async def completions(data: JSONBody[CompletionRequest], request: Request[Any, Any, Any],
                      state: State) -> Response[Any]:
    await _log_unknown_fields(request, CompletionRequest)
    return await create_completion(_server(state), data, request)


@post("/v1/chat/completions", guards=[require_api_key], status_code=200,
      responses={200: ResponseSpec(ChatCompletionResponse,
                                   description="A chat completion, or SSE chunks when streaming")})
async def chat_completions(data: JSONBody[ChatCompletionRequest], request: Request[Any, Any, Any],
                           state: State) -> Response[Any]:
    await _log_unknown_fields(request, ChatCompletionRequest)
    return await create_chat_completion(_server(state), data, request)


@post("/tokenize", guards=[require_api_key], status_code=200)
async def tokenize(data: JSONBody[TokenizeRequest], request: Request[Any, Any, Any], state: State) -> TokenizeResponse:
    await _log_unknown_fields(request, TokenizeRequest)
    server = _server(state)
    server.resolve_model(data.model)
    if (data.prompt is None) == (data.messages is None):
        raise bad_request("send either prompt or messages")
    tokenizer = server.engine.tokenizer
    if tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer")
    if data.messages is not None:
        ids = render_chat(server, data.messages, add_generation_prompt=data.add_generation_prompt,
                          chat_template=None, template_kwargs=data.chat_template_kwargs)
    else:
        ids = tokenizer.encode(data.prompt or "", add_special_tokens=data.add_special_tokens)
    return TokenizeResponse(count=len(ids), max_model_len=server.engine.max_model_len, tokens=ids)


@post("/detokenize", guards=[require_api_key], status_code=200)
async def detokenize(data: JSONBody[DetokenizeRequest], request: Request[Any, Any, Any],
                     state: State) -> DetokenizeResponse:
    await _log_unknown_fields(request, DetokenizeRequest)
    server = _server(state)
    server.resolve_model(data.model)
    if server.engine.tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer")
    vocab = server.engine.model_config.vocab_size
    bad = [t for t in data.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token id {bad[0]} is out of range for a vocabulary of {vocab}", "tokens")
    return DetokenizeResponse(prompt=server.decode(data.tokens))


def build_app(engine: LLMEngine, settings: ServerSettings, *, log_stats_interval_s: float | None = 10.0,
              warm_up: bool = False) -> Litestar:
    """The app with its engine loop (``app.state.server.engine_loop``), started and stopped by the lifespan.
    ``warm_up``: the loop compiles the engine's bucket plan first (/health: 503 until done)."""
    engine_loop: EngineLoop
    server_metrics = ServerMetrics(settings.served_model_names[0], lambda: engine_loop.stats)
    engine_loop = EngineLoop(engine, server_metrics, log_stats_interval_s, warm_up=warm_up)
    server = ServerState(engine_loop, settings, server_metrics)

    def start_engine_loop() -> None:
        engine_loop.start()

    def stop_engine_loop() -> None:
        engine_loop.shutdown()

    return Litestar(
        route_handlers=[health, version, metrics, list_models, retrieve_model, completions, chat_completions,
                        tokenize, detokenize],
        state=State({"server": server}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_startup=[start_engine_loop],
        on_shutdown=[stop_engine_loop],
        logging_config=None,  # logging is the embedding program's choice (engine/serve.py)
        openapi_config=OpenAPIConfig(
            title="Tessera", version=tessera_version(), path="/docs",
            description="OpenAI-compatible LLM inference server (JAX).",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
    )
