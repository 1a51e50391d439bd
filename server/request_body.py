"""Strict request bodies: a JSON content type, bounded nesting, and exact types, checked before a
handler runs.

Litestar converts bodies leniently (``"max_tokens": "10"`` becomes 10) and a deeply nested body
exhausts the decoder's recursion (a 500). Each POST route therefore gets a ``before_request`` hook
from ``strict_body`` that refuses, with a 400 in OpenAI's error shape: a content type other than
JSON, nesting deeper than MAX_JSON_DEPTH, and anything msgspec's strict decode into the route's
request struct rejects (wrong types, values outside the protocol's ranges, unknown roles).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from litestar import Request

from engine.request_limits import MAX_JSON_DEPTH
from server.errors import APIError, bad_request
from server.protocol import unknown_fields

logger = logging.getLogger(__name__)

OFF_LOOP_BODY_BYTES = 256 * 1024
_QUOTE = ord('"')
_STEPS = np.zeros(256, np.int8)  # +1 for an opening bracket, -1 for a closing one
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1
_ERROR_PATH = re.compile(r" - at `\$\.?([A-Za-z_][A-Za-z0-9_]*)?")


def is_json_media_type(content_type: str | None) -> bool:
    """No header (as FastAPI) or ``application/json`` / ``application/*+json``, any parameters."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit``, found in a few vectorised passes (no
    recursion, no per-byte Python loop); brackets inside strings do not count."""
    if body.count(b"[") + body.count(b"{") <= limit:  # the common case: too few brackets to matter
        return False
    # Inside a JSON string a backslash always starts an escape, so dropping escaped backslashes
    # first and then escaped quotes leaves exactly the quotes that open and close strings.
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(plain, np.uint8)
    steps = _STEPS[codes]
    steps[(np.cumsum(codes == _QUOTE, dtype=np.int32) & 1) == 1] = 0  # inside a string
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0)) > limit


def decode_strict(body: bytes, request_type: type[msgspec.Struct]) -> msgspec.Struct:
    """The body as ``request_type``, or an APIError 400 naming the offending field."""
    if nests_deeper_than(body, MAX_JSON_DEPTH):
        raise bad_request(f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels.")
    try:
        return msgspec.json.decode(body, type=request_type, strict=True)
    except msgspec.ValidationError as err:
        match = _ERROR_PATH.search(str(err))
        raise bad_request(f"Invalid request: {err}", match.group(1) if match else None) from None
    except msgspec.DecodeError as err:
        raise bad_request(f"The request body is not valid JSON: {err}") from None
    except RecursionError:
        raise bad_request("The request body is nested too deeply.") from None


def strict_body(request_type: type[msgspec.Struct]) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """A ``before_request`` hook checking the body against ``request_type`` (and logging unknown fields)."""

    async def check(request: Request[Any, Any, Any]) -> None:
        content_type = request.headers.get("content-type")
        if not is_json_media_type(content_type):
            raise APIError(400, f"Content-Type must be application/json, got {content_type!r}.")
        body = await request.body()
        if len(body) > OFF_LOOP_BODY_BYTES:  # a big body is checked in a thread: /health must not wait
            await asyncio.to_thread(decode_strict, body, request_type)
        else:
            decode_strict(body, request_type)
        unknown = unknown_fields(body, request_type)
        if unknown:
            logger.warning("The following fields were present in the request but ignored: %s", ", ".join(unknown))

    return check
