"""The Litestar application: routes, API-key guard, OpenAPI docs, and the lifespan of its link to
the engine core (connected on start-up, closed on shutdown)."""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
from typing import Any, Literal, cast

from litestar import Litestar, Request, Response, get, post
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, JSONBody
from litestar.types import Method
from prometheus_client import CONTENT_TYPE_LATEST

from engine.request_limits import MAX_BODY_BYTES
from server.chat import create_chat_completion
from server.chat_template import render_chat
from server.completions import create_completion
from server.engine_loop import EngineLoop
from server.errors import EXCEPTION_HANDLERS, APIError, bad_request, error_response, from_value_error
from server.openapi_docs import api_responses, document_streaming, openapi_config
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from server.request_body import strict_body
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


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    keys = _server(connection.app.state).settings.api_keys
    if not keys:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    offered = token.strip().encode()
    # compare_digest takes constant time over each key, and every key is compared, so response
    # timing leaks neither a key nor which one matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise APIError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                       headers={"WWW-Authenticate": 'Bearer realm="tessera"'})


# ---- open routes ---------------------------------------------------------------------------
@get("/health", sync_to_thread=False)
def health(state: State) -> Response[Any]:
    engine_loop = _server(state).engine_loop
    if not engine_loop.alive:
        return error_response(503, "The engine has stopped; this server cannot serve requests.")
    if not engine_loop.ready:  # the core's latest status: "warming up: k of n programs" while it precompiles
        return Response(engine_loop.status_detail.encode(), status_code=503, media_type="text/plain",
                        headers={"Retry-After": "1"})
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
@get("/v1/models", guards=[require_api_key], sync_to_thread=False,
     responses=api_responses(ModelList, "The served models"))
def list_models(state: State) -> ModelList:
    server = _server(state)
    return ModelList(data=[_model_card(server, name) for name in server.model_names])


@get("/v1/models/{model_id:path}", guards=[require_api_key], sync_to_thread=False,
     responses=api_responses(ModelCard, "One served model"))
def retrieve_model(state: State, model_id: FromPath[str]) -> ModelCard:
    server = _server(state)
    return _model_card(server, server.resolve_model(model_id.lstrip("/")))


def _model_card(server: ServerState, name: str) -> ModelCard:
    return ModelCard(id=name, created=server.created, root=server.settings.model_root,
                     max_model_len=server.model.max_model_len)


@post("/v1/completions", guards=[require_api_key], status_code=200, before_request=strict_body(CompletionRequest),
      responses=api_responses(CompletionResponse, "A completion, or SSE chunks when streaming"))
async def completions(data: JSONBody[CompletionRequest], request: Request[Any, Any, Any],
                      state: State) -> Response[Any]:
    return await create_completion(_server(state), data, request)


@post("/v1/chat/completions", guards=[require_api_key], status_code=200,
      before_request=strict_body(ChatCompletionRequest),
      responses=api_responses(ChatCompletionResponse, "A chat completion, or SSE chunks when streaming"))
async def chat_completions(data: JSONBody[ChatCompletionRequest], request: Request[Any, Any, Any],
                           state: State) -> Response[Any]:
    return await create_chat_completion(_server(state), data, request)


@post("/tokenize", guards=[require_api_key], status_code=200, before_request=strict_body(TokenizeRequest),
      responses=api_responses(TokenizeResponse, "The prompt's token ids"))
async def tokenize(data: JSONBody[TokenizeRequest], state: State) -> TokenizeResponse:
    server = _server(state)
    server.resolve_model(data.model)
    if (data.prompt is None) == (data.messages is None):
        raise bad_request("send either prompt or messages")
    tokenizer = server.model.tokenizer
    if tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer")
    if data.messages is not None:
        ids = await render_chat(server, data.messages, add_generation_prompt=data.add_generation_prompt,
                          chat_template=None, template_kwargs=data.chat_template_kwargs)
    else:
        try:
            server.check_text_length(data.prompt or "")
        except ValueError as err:
            raise from_value_error(err) from None
        ids = await asyncio.to_thread(tokenizer.encode, data.prompt or "", add_special_tokens=data.add_special_tokens)
    return TokenizeResponse(count=len(ids), max_model_len=server.model.max_model_len, tokens=ids)


@post("/detokenize", guards=[require_api_key], status_code=200, before_request=strict_body(DetokenizeRequest),
      responses=api_responses(DetokenizeResponse, "The tokens' text"))
async def detokenize(data: JSONBody[DetokenizeRequest], state: State) -> DetokenizeResponse:
    server = _server(state)
    server.resolve_model(data.model)
    if server.model.tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer")
    vocab = server.model.vocab_size
    bad = [t for t in data.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token id {bad[0]} is out of range for a vocabulary of {vocab}", "tokens")
    return DetokenizeResponse(prompt=await asyncio.to_thread(server.decode, data.tokens))


def build_app(engine_loop: EngineLoop, settings: ServerSettings) -> Litestar:
    """The app around its link to the engine core (``app.state.server.engine_loop``), which the
    lifespan connects and closes."""
    server = ServerState(engine_loop, settings, engine_loop.metrics)

    async def start_engine_loop(app: Litestar) -> None:
        document_streaming(app)
        await engine_loop.start()
        if engine_loop.client_index > 0:
            # uvicorn listens once this returns: API servers 1.. join the shared port only when the
            # core is ready, so the kernel never hands them a connection they would answer with 503
            # (API server 0 answers /health "warming up" meanwhile)
            await engine_loop.wait_ready()

    async def stop_engine_loop() -> None:
        await engine_loop.shutdown()
        if server.template_sandbox is not None:
            server.template_sandbox.close()

    return Litestar(
        route_handlers=[health, version, metrics, list_models, retrieve_model, completions, chat_completions,
                        tokenize, detokenize],
        state=State({"server": server}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_startup=[start_engine_loop],
        on_shutdown=[stop_engine_loop],
        cors_config=_cors(settings),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,  # logging is the embedding program's choice (engine/serve.py)
        openapi_config=openapi_config(tessera_version(), settings.root_path),
    )


def _cors(settings: ServerSettings) -> CORSConfig | None:
    """vLLM's --allowed-origins/--allowed-methods/--allowed-headers/--allow-credentials; none: no CORS headers."""
    if not settings.allowed_origins:
        return None
    # the --allowed-methods strings as given (vLLM's flag): Litestar only echoes them back
    methods = cast(list[Literal["*"] | Method], settings.allowed_methods)
    return CORSConfig(allow_origins=settings.allowed_origins, allow_methods=methods,
                      allow_headers=settings.allowed_headers, allow_credentials=settings.allow_credentials)
