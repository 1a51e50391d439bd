"""Tessera's OpenAI-compatible HTTP server (Litestar + uvicorn + msgspec)."""

from server.app import build_app
from server.state import ServerSettings

__all__ = ["ServerSettings", "build_app"]
