"""Tessera's OpenAI-compatible HTTP server (Litestar + uvicorn + msgspec).

``build_app`` and ``ServerSettings`` are imported when first used, so importing one server module
does not load the whole app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.app import build_app
    from server.state import ServerSettings

_EXPORTS = {"ServerSettings": "server.state", "build_app": "server.app"}
__all__ = ["ServerSettings", "build_app"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
