"""Chat messages to a prompt: OpenAI message objects flattened for the tokenizer's Jinja template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from server.errors import bad_request
from server.protocol import ChatMessage
from server.state import ServerState


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
    """Text parts are joined with newlines; other part types (images, audio) are not supported."""
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
        entry: dict[str, Any] = {"role": message.role, "content": content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(message, key) is not None:
                entry[key] = getattr(message, key)
        out.append(entry)
    return out


def render_chat(state: ServerState, messages: list[ChatMessage], *, add_generation_prompt: bool,
                chat_template: str | None, template_kwargs: dict[str, Any] | None) -> list[int]:
    """The prompt's token ids. The rendered text already holds any special tokens it needs."""
    tokenizer = state.model.tokenizer
    if tokenizer is None:
        raise bad_request("this model was loaded without a tokenizer, so it has no chat template", "messages")
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    try:
        text = tokenizer.apply_chat_template(
            message_dicts(messages), add_generation_prompt=add_generation_prompt,
            chat_template=chat_template or state.settings.chat_template, **(template_kwargs or {}),
        )
    except (jinja2.TemplateError, ValueError, TypeError) as err:
        raise bad_request(f"could not apply the chat template: {err}", "messages") from None
    return list(tokenizer.encode(text, add_special_tokens=False))
