"""The engine core's sockets without ZeroMQ, for tests that drive ``EngineCore`` in this process:
an inbox to put messages in, and what the core sent, passed through the real msgpack codec."""

from __future__ import annotations

import queue
from typing import Any

from engine.core.messages import FromCore, decode_from_core, encode


class FakeCoreSockets:
    """Stands in for ``CoreSockets`` with one API server (client 0)."""

    num_clients = 1

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sent: list[FromCore] = []

    def send(self, client: int, message: FromCore) -> None:
        assert client == 0
        self.sent.append(decode_from_core(encode(message)))
