"""Shutdown past --graceful-shutdown-timeout (issue #17): a stream still running ends with an error
event and ``data: [DONE]`` (not a cut connection), the process exits 0, and nothing is logged as a
traceback or a cancelled task."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_streams_past_the_grace_time_end_with_an_error_event_and_done(smollm_tokenizer: object,
                                                                        tmp_path: Path) -> None:
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.serve", "--host", "127.0.0.1", "--port", str(port), "--max-model-len",
             "1K", "--max-num-seqs", "4", "--skip-warmup", "--disable-log-stats", "--graceful-shutdown-timeout", "1"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            body = {"prompt": "Count to one thousand:", "max_tokens": 1000, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
                lines = (line for line in response.iter_lines() if line.startswith("data: "))
                next(lines)
                proc.send_signal(signal.SIGTERM)
                rest = list(lines)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == 503 and "graceful shutdown timeout" in error["message"]
    logged = log_path.read_text()
    assert "Traceback" not in logged and "Cancel" not in logged, logged[-2000:]
