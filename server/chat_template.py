"""Chat messages to a prompt: OpenAI message objects flattened for the tokenizer's Jinja template.

The server's own template (the model's, or ``--chat-template``) is trusted code and renders in a
worker thread, so a long conversation never holds the event loop. A template sent in a request is
refused unless the server runs with ``--trust-request-chat-template``; then it renders in a child
process with a time and size limit (server/template_sandbox.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jinja2

from engine.request_limits import MAX_CHARS_PER_TOKEN
from server.errors import bad_request
from server.protocol import ChatMessage
from server.state import ServerState
from server.template_sandbox import TemplateError

# Arguments of apply_chat_template a client must not override through chat_template_kwargs.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "chat_template", "add_generation_prompt", "tokenize", "return_dict",
    "return_tensors", "padding", "truncation", "max_length", "tokenizer_kwargs", "return_assistant_tokens_mask",
    "continue_final_message", "tools", "documents", "conversations",
})


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file holding a Jinja template, or the template itself (vLLM's rule)."""
    if value is None:
        return None
    try:
        if Path(value).is_file():
            return Path(value).read_text()
    except OSError:  # a long inline template is not a valid path
        pass
    if any(c in value for c in "{}\n"):
        return value
    raise ValueError(f"--chat-template {value!r} is neither a file nor a Jinja template")


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Text parts are joined with newlines; other part types (images, audio) are not supported.
    A null content (an assistant turn that only calls tools) is the empty string."""
    out = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise bad_request(f"message content parts of type {part.type!r} are not supported; "
                                      "send text parts", "messages")
                texts.append(part.text)
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(message, key) is not None:
                entry[key] = getattr(message, key)
        out.append(entry)
    return out


async def render_chat(state: ServerState, messages: list[ChatMessage], *, add_generation_prompt: bool,
                      chat_template: str | None, template_kwargs: dict[str, Any] | None) -> list[int]:
    """The prompt's token ids. The rendered text already holds any special tokens it needs."""
    tokenizer = state.model.tokenizer
    if tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer, so it has no chat template", "messages")
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    kwargs = dict(template_kwargs or {})
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs) - {"tools"})
    if reserved:
        raise bad_request(f"chat_template_kwargs must not set {', '.join(reserved)}", "chat_template_kwargs")
    dicts = message_dicts(messages)
    if chat_template is not None:
        text = await _render_request_template(state, dicts, chat_template, add_generation_prompt, kwargs)
    else:
        text = await asyncio.to_thread(_render_server_template, state, dicts, add_generation_prompt, kwargs)
    try:
        state.check_text_length(text)
    except ValueError as err:
        raise bad_request(f"the rendered conversation: {err}", "messages") from None
    return list(await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=False))


def _render_server_template(state: ServerState, messages: list[dict[str, Any]], add_generation_prompt: bool,
                            kwargs: dict[str, Any]) -> str:
    try:
        return str(state.model.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, chat_template=state.settings.chat_template,
            **kwargs))
    except Exception as err:  # noqa: BLE001 - the template is trusted; what breaks it is the request's data
        detail = str(err) if isinstance(err, jinja2.TemplateError) else f"{type(err).__name__}: {err}"
        raise bad_request(f"could not apply the chat template: {detail[:500]}", "messages") from None


async def _render_request_template(state: ServerState, messages: list[dict[str, Any]], template: str,
                                   add_generation_prompt: bool, kwargs: dict[str, Any]) -> str:
    sandbox = state.template_sandbox
    if sandbox is None:
        raise bad_request("this server does not accept chat templates in requests (start it with "
                          "--trust-request-chat-template to allow them)", "chat_template")
    tools = kwargs.pop("tools", None)
    job = {"messages": messages, "tools": tools, "template": template, "add_generation_prompt": add_generation_prompt,
           "kwargs": {**state.model.tokenizer.hf.special_tokens_map, **kwargs},
           "max_chars": state.model.max_model_len * MAX_CHARS_PER_TOKEN}
    try:
        return await sandbox.render(job)
    except TemplateError as err:
        raise bad_request(f"could not apply the request's chat template: {err}", "chat_template") from None
