"""What every handler shares: the link to the engine core, the served model and names, and the
server's settings, with the tool-call and reasoning parsers they name."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

from engine.core.served_model import ServedModel
from engine.request_errors import RequestValidationError
from engine.request_limits import MAX_CHARS_PER_TOKEN
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputError, StructuredOutputSpec
from server.engine_loop import EngineLoop
from server.errors import APIError, bad_request, from_value_error
from server.metrics import ServerMetrics
from server.protocol import SamplingFields
from server.reasoning_parsers import get_reasoning_parser
from server.structured_request import constraint_and_source
from server.template_sandbox import TemplateSandbox
from server.tool_parsers import get_tool_parser

logger = logging.getLogger("server.requests")

MAX_LOGGED_PROMPT_CHARS = 200
MAX_LOGGED_PROMPT_IDS = 32


@dataclasses.dataclass
class ServerSettings:
    served_model_names: list[str]
    model_root: str
    api_keys: list[str] = dataclasses.field(default_factory=list)  # empty: no key required
    chat_template: str | None = None
    trust_request_chat_template: bool = False
    generation_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    log_requests: bool = True
    max_pending_requests: int = 4096
    allowed_origins: list[str] = dataclasses.field(default_factory=list)  # CORS; empty: no CORS headers
    allowed_methods: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    root_path: str = ""  # the path prefix a reverse proxy serves this server under
    metric_prefixes: tuple[str, ...] = ("vllm:", "tessera:")
    tool_call_parser: str | None = None  # --tool-call-parser, read with --enable-auto-tool-choice
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None  # --reasoning-parser


def check_parser_names(tool_call_parser: str | None, reasoning_parser: str | None) -> None:
    """Unknown --tool-call-parser / --reasoning-parser names fail at start-up, naming the choices."""
    if tool_call_parser is not None:
        get_tool_parser(tool_call_parser)
    if reasoning_parser is not None:
        get_reasoning_parser(reasoning_parser)


class ServerState:
    def __init__(self, engine_loop: EngineLoop, settings: ServerSettings,
                 metrics: ServerMetrics | None = None) -> None:
        self.engine_loop = engine_loop
        self.metrics = metrics
        self.model: ServedModel = engine_loop.model
        self.settings = settings
        self.created = int(time.time())
        self.template_sandbox = TemplateSandbox() if settings.trust_request_chat_template else None
        self.reasoning_parser = (get_reasoning_parser(settings.reasoning_parser)
                                 if settings.reasoning_parser else None)

    @property
    def model_names(self) -> list[str]:
        return self.settings.served_model_names

    def resolve_model(self, name: str | None) -> str:
        """The served name a request asked for (the first one when it names none); 404 otherwise."""
        if not name:
            return self.model_names[0]
        if name not in self.model_names:
            raise APIError(404, f"The model `{name}` does not exist.", "model")
        return name

    def check_capacity(self) -> None:
        if not self.engine_loop.alive:
            raise APIError(503, "The engine has stopped; this server cannot serve requests.")
        if not self.engine_loop.ready:
            raise APIError(503, f"The engine is not ready yet ({self.engine_loop.status_detail}); retry later.",
                           headers={"Retry-After": "5"})
        if self.engine_loop.num_pending >= self.settings.max_pending_requests:
            raise APIError(503, f"The server is overloaded ({self.engine_loop.num_pending} requests pending); "
                                "retry later.", headers={"Retry-After": "1"})

    async def encode(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """Token ids of a prompt. A text too long to fit in any tokenization is refused before
        tokenizing; tokenizing runs in a worker thread so a long text never holds the event loop.
        The engine core checks the ids against the vocabulary and the context length when it admits
        the request (its RequestValidationError becomes a 400 there)."""
        try:
            self.check_text_length(prompt)
        except ValueError as err:
            raise from_value_error(err) from None
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        if self.model.tokenizer is None:
            raise bad_request("this model was loaded without a tokenizer: pass prompt token ids", "prompt")
        return await asyncio.to_thread(self.model.tokenizer.encode, prompt)

    def check_text_length(self, text: str | list[int]) -> None:
        limit = self.model.max_model_len * MAX_CHARS_PER_TOKEN
        if len(text) > limit:
            raise RequestValidationError(
                f"prompt has {len(text)} {'characters' if isinstance(text, str) else 'token ids'}: far more "
                f"than this model's maximum context length of {self.model.max_model_len} tokens. Please reduce "
                "the length of the input.", "prompt")

    def output_constraint(self, req: SamplingFields, forced_call: StructuredOutputSpec | None = None
                          ) -> tuple[str | None, StructuredOutputSpec | None]:
        """The request's output constraint (response_format, structured_outputs, guided_*, or a
        forced tool call) and the field it came from; one that cannot be honoured is a 400 naming
        it. Whether its grammar compiles is the engine core's answer when it admits the request."""
        try:
            return constraint_and_source(req.constraint_fields(), forced_call)
        except StructuredOutputError as err:
            raise bad_request(str(err), err.param) from None

    @property
    def auto_tool_parser(self) -> str | None:
        """The parser that reads tool calls out of free text, when auto tool choice is on."""
        return self.settings.tool_call_parser if self.settings.enable_auto_tool_choice else None

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(ids)

    def log_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        if self.settings.log_requests:
            shown = prompt[:MAX_LOGGED_PROMPT_CHARS] if isinstance(prompt, str) else prompt[:MAX_LOGGED_PROMPT_IDS]
            logger.info("Received request %s: prompt: %r (%d %s), params: %s", request_id, shown, len(prompt),
                        "chars" if isinstance(prompt, str) else "token ids", params)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
