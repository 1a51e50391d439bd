"""``python -m engine.serve`` as the processes it really is: the engine core, API server 0 and
``--api-server-count - 1`` more on the same port. Both API servers serve and streams never mix;
SIGTERM with 32 streams in flight drains them all and exits 0 with no process left behind; a
killed engine core makes /health answer 503, ends the in-flight stream with an error and the
server exit non-zero."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.core.client import pid_alive

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240
NUM_STREAMS = 32
TINY_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "torch_dtype": "float32", "eos_token_id": 2,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _all_gone(pids: set[int], timeout_s: float = 10.0) -> bool:
    """Whether every one of ``pids`` has exited (helpers such as multiprocessing's resource tracker
    notice their parent's exit a moment later)."""
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        found |= children
        frontier = children
    return found


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def core_pid(self) -> int:
        match = re.search(r"Engine core process started \(pid (\d+)\)", self.log.read_text())
        assert match, self.log.read_text()[-2000:]
        return int(match.group(1))


def _serve(tmp_path: Path, tokenizer: Any, *flags: str) -> Iterator[Served]:
    model_dir = tmp_path / "tiny-llama"
    tokenizer.hf.save_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", TESSERA_COMPILATION_CACHE="")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.serve", str(model_dir), "--load-format", "dummy", "--served-model-name",
             "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
             "--num-gpu-blocks-override", "256", "--max-num-seqs", "32", "--skip-warmup", "--disable-log-stats",
             *flags],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"the server did not come up (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
        servers = int(flags[flags.index("--api-server-count") + 1]) if "--api-server-count" in flags else 1
        while log_path.read_text().count("Application startup complete") < servers:  # all of them listen
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield Served(proc, url, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def two_api_servers(tmp_path: Path, smollm_tokenizer: Any) -> Iterator[Served]:
    yield from _serve(tmp_path, smollm_tokenizer, "--api-server-count", "2")


def _word_tokens(tokenizer: Any, count: int) -> list[int]:
    found, seen = [], set()
    for token in range(1000, 20000):
        text = tokenizer.decode([token])
        if text.strip().isalpha() and text.isascii() and text not in seen:
            found.append(token)
            seen.add(text)
            if len(found) == count:
                return found
    raise AssertionError("not enough word tokens")


async def _stream(url: str, token: int, max_tokens: int, started: asyncio.Event | None = None) -> list[str]:
    """One streamed completion on its own connection, biased so that it can only say ``token``."""
    body = {"model": "tiny", "prompt": f"Client {token} says", "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "logit_bias": {str(token): 100}}
    events = []
    async with (httpx.AsyncClient(base_url=url, timeout=120) as client,
                client.stream("POST", "/v1/completions", json=body) as response):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if started is not None:
                    started.set()
    return events


def _text_and_finish(events: list[str]) -> tuple[str, str | None]:
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]


def test_two_api_servers_serve_separate_streams_then_sigterm_drains_32(two_api_servers: Served,
                                                                      smollm_tokenizer: Any) -> None:
    served = two_api_servers
    tokens = _word_tokens(smollm_tokenizer, NUM_STREAMS)

    async def all_streams(max_tokens: int, signal_after_start: bool) -> list[list[str]]:
        started = [asyncio.Event() for _ in tokens]
        tasks = [asyncio.create_task(_stream(served.url, t, max_tokens, e))
                 for t, e in zip(tokens, started, strict=True)]
        if signal_after_start:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=120)
            served.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)

    for events, token in zip(asyncio.run(all_streams(6, signal_after_start=False)), tokens, strict=True):
        assert _text_and_finish(events) == (smollm_tokenizer.decode([token] * 6), "length")
    log = served.log.read_text()
    for name in ("MainProcess", "api-server-1"):  # the kernel gave both API servers some of the connections
        assert re.search(name + r' \[uvicorn.access\] .* "POST /v1/completions HTTP/1.1" 200', log)

    family = _descendants(served.proc.pid)
    assert served.core_pid() in family and len(family) >= 2
    for events, token in zip(asyncio.run(all_streams(40, signal_after_start=True)), tokens, strict=True):
        assert _text_and_finish(events) == (smollm_tokenizer.decode([token] * 40), "length")
    assert served.proc.wait(timeout=120) == 0, served.log.read_text()[-4000:]
    assert _all_gone(family), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in family if pid_alive(pid)]


def test_killed_engine_core_means_503_errors_and_a_non_zero_exit(two_api_servers: Served,
                                                                 smollm_tokenizer: Any) -> None:
    served = two_api_servers
    family = _descendants(served.proc.pid)
    (token,) = _word_tokens(smollm_tokenizer, 1)

    async def stream_then_kill() -> list[str]:
        started = asyncio.Event()
        task = asyncio.create_task(_stream(served.url, token, 480, started))
        await asyncio.wait_for(started.wait(), timeout=120)
        os.kill(served.core_pid(), signal.SIGKILL)
        return await task

    events = asyncio.run(stream_then_kill())
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 503
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 503
    assert served.proc.wait(timeout=60) != 0, served.log.read_text()[-4000:]
    assert _all_gone(family), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in family if pid_alive(pid)]


_PARENT_SCRIPT = '''
import multiprocessing, os, time
from engine.core.process import die_with_parent

def child(parent_pid):
    die_with_parent(parent_pid)
    print(os.getpid(), flush=True)  # stdout is the test's pipe, inherited
    time.sleep(600)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),)).start()
    time.sleep(600)
'''


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """The engine core and spawned API servers call die_with_parent: even SIGKILL leaves no orphan."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())  # printed once die_with_parent has returned
        assert pid_alive(child)
        parent.kill()
        parent.wait()
        assert _all_gone({child}, timeout_s=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
