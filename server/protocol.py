"""Request bodies of the OpenAI-compatible API, as msgspec Structs: the one place a request's
field types and ranges are declared for the server.

The ranges come from engine/request_limits.py, which ``SamplingParams.validate`` also reads, so a
value is accepted here exactly when the engine would accept it (token ids are checked against the
vocabulary later, once the model is known). Bodies are decoded strictly (server/request_body.py):
``"max_tokens": "10"`` is a 400, not a 10. The OpenAPI schema shows every bound. Unknown fields are
accepted and ignored (msgspec's default); ``unknown_fields`` names them for a log line, as vLLM does.
Objects whose unknown keys would change what a request means (``structured_outputs`` options) are
refused instead. Sampling fields left at None take the model's generation-config default, then OpenAI's.

Output constraints and tools are typed and bounded here (sizes from engine/request_limits.py); what
they mean (one constraint at most, a tool's parameters schema) is checked when they are read
(server/structured_request.py, server/tool_parsers/tools.py), and whether a grammar compiles, by the
engine core when it admits the request: each a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from engine import request_limits as lim

TokenId = Annotated[int, Meta(ge=0, le=lim.INT32_MAX, description="a token id of the model's vocabulary")]
TokenIds = Annotated[list[TokenId], Meta(min_length=1)]
StopString = Annotated[str, Meta(min_length=1, max_length=lim.MAX_STOP_STRING_CHARS)]
Logprobs = Annotated[int, Meta(ge=0, le=lim.MAX_LOGPROBS)]
TokenCount = Annotated[int, Meta(ge=1, le=lim.MAX_TOKENS_LIMIT)]
LogitBias = Annotated[
    dict[str, Annotated[float, Meta(ge=-lim.MAX_LOGIT_BIAS, le=lim.MAX_LOGIT_BIAS)]],
    Meta(max_length=lim.MAX_LOGIT_BIAS_ENTRIES, description="token id (as a string) -> bias added to its logit"),
]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
SpecText = Annotated[str, Meta(min_length=1, max_length=lim.MAX_SPEC_CHARS)]
Choices = Annotated[list[Annotated[str, Meta(min_length=1, max_length=lim.MAX_CHOICE_CHARS)]],
                    Meta(min_length=1, max_length=lim.MAX_CHOICES)]
JsonSchema = dict[str, Any] | SpecText  # an object, or the same as JSON text


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(Struct, kw_only=True, omit_defaults=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: Annotated[str, Meta(max_length=lim.MAX_SPEC_CHARS)] | None = None
    schema: dict[str, Any] | bool | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """vLLM's ``structured_outputs``: exactly one of these (its tuning options are refused)."""

    json: JsonSchema | None = None
    regex: SpecText | None = None
    choice: Choices | None = None
    grammar: SpecText | None = None
    json_object: bool | None = None


class SamplingFields(Struct, kw_only=True):
    """Fields shared by completions and chat completions (OpenAI's plus vLLM's extras)."""

    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=lim.MAX_N)] = 1
    temperature: Annotated[float, Meta(ge=0, le=lim.MAX_TEMPERATURE)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=-1, le=lim.INT32_MAX, description="-1 or 0: off")] | None = None
    min_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    seed: Annotated[int, Meta(ge=lim.INT64_MIN, le=lim.INT64_MAX)] | None = None
    presence_penalty: Annotated[float, Meta(ge=lim.MIN_PENALTY, le=lim.MAX_PENALTY)] = 0.0
    frequency_penalty: Annotated[float, Meta(ge=lim.MIN_PENALTY, le=lim.MAX_PENALTY)] = 0.0
    repetition_penalty: Annotated[float, Meta(ge=lim.MIN_REPETITION_PENALTY,
                                              le=lim.MAX_REPETITION_PENALTY)] | None = None
    logit_bias: LogitBias | None = None
    stop: StopString | Annotated[list[StopString], Meta(max_length=lim.MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Meta(max_length=lim.MAX_STOP_TOKEN_IDS)] | None = None
    min_tokens: Annotated[int, Meta(ge=0, le=lim.MAX_TOKENS_LIMIT)] = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Output constraints (server/structured_request.py reads them; at most one may be given).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsParams | None = None
    guided_json: JsonSchema | None = None
    guided_regex: SpecText | None = None
    guided_choice: Choices | None = None
    guided_grammar: SpecText | None = None
    guided_decoding_backend: Annotated[str, Meta(max_length=64, description="ignored")] | None = None
    guided_whitespace_pattern: SpecText | None = None  # refused: it would change what the JSON may look like

    def constraint_fields(self) -> dict[str, Any]:
        """The output-constraint fields as plain JSON values."""
        return {name: msgspec.to_builtins(getattr(self, name)) for name in CONSTRAINT_FIELDS}


CONSTRAINT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern")


class CompletionRequest(SamplingFields, kw_only=True):
    # A string, a list of strings, a list of token ids, or a list of token-id lists (one per prompt;
    # at most MAX_PROMPTS_PER_REQUEST prompts, checked once the form is known).
    prompt: str | Annotated[list[str | TokenId | TokenIds], Meta(min_length=1, description=(
        f"a string, a list of token ids, or a batch of up to {lim.MAX_PROMPTS_PER_REQUEST} of either"))]
    max_tokens: TokenCount | None = 16
    logprobs: Logprobs | None = None
    echo: bool = False
    best_of: Annotated[int, Meta(ge=1, le=lim.MAX_N)] | None = None
    suffix: str | None = None


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(Struct, kw_only=True):
    role: Role
    content: str | Annotated[list[ContentPart], Meta(max_length=lim.MAX_CONTENT_PARTS)] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


Messages = Annotated[list[ChatMessage], Meta(min_length=1, max_length=lim.MAX_MESSAGES)]


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Messages
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: Logprobs | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=lim.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template: Annotated[str, Meta(max_length=lim.MAX_CHAT_TEMPLATE_CHARS, description=(
        "a Jinja template for this request only; refused unless the server runs with "
        "--trust-request-chat-template"))] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True


class TokenizeRequest(Struct, kw_only=True):
    """Either ``prompt`` or ``messages`` (rendered with the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: Messages | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: Annotated[list[TokenId], Meta(max_length=lim.MAX_TOKENS_LIMIT)]


def unknown_fields(body: bytes, request_type: type[Struct]) -> list[str]:
    """Top-level keys of a JSON object body that ``request_type`` does not declare."""
    try:
        keys = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError:
        return []
    return sorted(set(keys) - set(request_type.__struct_fields__))
