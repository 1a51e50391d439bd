"""Client-supplied chat templates (``--trust-request-chat-template``), rendered in a child process
with a time limit and a size limit.

Jinja runs in a sandbox, but a sandbox bounds what a template may touch, not how long it runs or
how much it builds: one template looping for seconds would hold the event loop (and ``/health``)
for everyone. So each render is a job for server/template_worker.py, a separate Python process
started once; a render that outlives ``timeout_s`` gets the process killed (a fresh one starts on
the next request) and the request a 400. Renders run one at a time, queued on an asyncio lock, so
waiting costs no thread.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from server.template_worker import read_frame, write_frame

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("template_worker.py")
RENDER_TIMEOUT_S = 2.0
START_TIMEOUT_S = 60.0


class TemplateError(ValueError):
    """The client's template failed, ran too long or rendered too much."""


class TemplateSandbox:
    def __init__(self, timeout_s: float = RENDER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: asyncio.Lock | None = None

    async def render(self, job: dict[str, Any]) -> str:
        """The rendered text; TemplateError for anything the template did wrong."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            reply = await asyncio.to_thread(self._run, job)
        if "error" in reply:
            raise TemplateError(reply["error"])
        return str(reply["text"])

    @property
    def busy(self) -> bool:
        """Whether a render is in progress."""
        return self._lock is not None and self._lock.locked()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _run(self, job: dict[str, Any]) -> dict[str, Any]:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        killer = threading.Timer(self.timeout_s, proc.kill)
        killer.start()
        try:
            write_frame(proc.stdin, job)
            reply = read_frame(proc.stdout)
        except (BrokenPipeError, ValueError):
            reply = None
        finally:
            killer.cancel()
        if reply is None:  # killed at the time limit (or died): the next job gets a fresh process
            self.close()
            return {"error": f"rendering the chat template took longer than {self.timeout_s:g}s"}
        return reply

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen([sys.executable, str(WORKER_SCRIPT)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        killer = threading.Timer(START_TIMEOUT_S, self._proc.kill)
        killer.start()
        try:
            ready = read_frame(self._proc.stdout)
        finally:
            killer.cancel()
        if ready is None:
            self.close()
            raise RuntimeError("the chat-template worker process did not start")
        logger.info("Started the chat-template worker process (pid %d)", self._proc.pid)
        return self._proc
