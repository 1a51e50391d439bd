"""An API server's two sockets to the engine core: a PUSH for adds and aborts, a PULL for its outputs.

Sending is synchronous and never blocks (a core that stops reading makes ``send`` return False);
receiving is awaited on the server's event loop, so a step's outputs are handled between HTTP work.
"""

from __future__ import annotations

import os

import zmq
import zmq.asyncio

from engine.core.messages import FromCore, ToCore, decode_from_core, encode
from engine.core.transport import CoreAddresses


class CoreClient:
    def __init__(self, addresses: CoreAddresses, client_index: int) -> None:
        self.client_index = client_index
        self._send_context = zmq.Context()
        self._push = self._send_context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(addresses.input)
        self._recv_context = zmq.asyncio.Context()
        self._pull = self._recv_context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(addresses.outputs[client_index])

    def send(self, message: ToCore) -> bool:
        try:
            self._push.send(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def receive(self) -> FromCore:
        return decode_from_core(await self._pull.recv())

    def close(self) -> None:
        self._send_context.destroy(linger=0)
        self._recv_context.destroy(linger=0)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux ``/proc``; a zombie that has exited counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return not os.path.isdir("/proc")  # gone; or no /proc here, where we cannot tell
    return state not in (b"Z", b"X")
