"""ZeroMQ over IPC between the engine core and its API servers.

One PULL socket into the core (bound by the core; every API server connects and PUSHes its adds
and aborts to it) and one PUSH socket per API server out of it (bound by that API server, connected
by the core with no high-water mark, so the core never blocks on an API server that is slow or
not there yet: its messages wait in the queue). The IPC files live in a private directory. Two I/O threads
in the core do the socket work and the msgpack (de)coding, so both overlap the device step: the
input thread decodes into a queue the step loop drains between steps, and the output thread
encodes and sends what the step loop hands it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import tempfile
import threading

import msgspec
import zmq

from engine.core.messages import FromCore, ToCore, decode_to_core, encode, refusal_of

logger = logging.getLogger(__name__)

_STOP = None


@dataclasses.dataclass(frozen=True)
class CoreAddresses:
    """Where the core listens (``input``) and where API server ``i`` reads (``outputs[i]``)."""

    input: str
    outputs: tuple[str, ...]

    @classmethod
    def in_new_directory(cls, num_clients: int) -> CoreAddresses:
        directory = tempfile.mkdtemp(prefix="tessera-core-")  # mode 0700: only this user can connect
        return cls(f"ipc://{directory}/input", tuple(f"ipc://{directory}/output-{i}" for i in range(num_clients)))

    @property
    def directory(self) -> str:
        return os.path.dirname(self.input.removeprefix("ipc://"))


class CoreSockets:
    """The core's side: ``inbox`` holds decoded messages; ``send(client, message)`` queues one out."""

    def __init__(self, addresses: CoreAddresses) -> None:
        self.inbox: queue.SimpleQueue[ToCore] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[int, FromCore] | None] = queue.SimpleQueue()
        self._context = zmq.Context()
        self._input = self._context.socket(zmq.PULL)
        self._input.bind(addresses.input)
        self._outputs = []
        for address in addresses.outputs:
            sock = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(address)
            self._outputs.append(sock)
        self._stopping = threading.Event()
        self._reader = threading.Thread(target=self._read, name="core-input", daemon=True)
        self._writer = threading.Thread(target=self._write, name="core-output", daemon=True)
        self._reader.start()
        self._writer.start()

    @property
    def num_clients(self) -> int:
        return len(self._outputs)

    def send(self, client: int, message: FromCore) -> None:
        self._outbox.put((client, message))

    def broadcast(self, message: FromCore) -> None:
        for client in range(self.num_clients):
            self.send(client, message)

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (within the timeout), then closes every socket."""
        self._outbox.put(_STOP)
        self._writer.join(timeout_s)
        self._stopping.set()
        self._reader.join(timeout_s)
        self._context.destroy(linger=0)

    def _read(self) -> None:
        poller = zmq.Poller()
        poller.register(self._input, zmq.POLLIN)
        while not self._stopping.is_set():
            if not poller.poll(100):
                continue
            data = self._input.recv()
            try:
                self.inbox.put(decode_to_core(data))
            except (msgspec.DecodeError, ValueError) as err:
                refusal = refusal_of(data, err)
                if refusal is None:
                    logger.error("Dropped an undecodable message to the engine core: %s", err)
                else:
                    self.inbox.put(refusal)

    def _write(self) -> None:
        while (item := self._outbox.get()) is not _STOP:
            client, message = item
            self._outputs[client].send(encode(message), copy=False)
