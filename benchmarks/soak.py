"""Soak test: a server under a long mix of good, bad and rude clients ends exactly as it started.

Starts ``python -m engine.serve`` as a child process (every flag soak.py does not know goes to it),
or uses ``--url`` (with ``--server-pid`` for its RSS). For ``--duration-s`` it keeps
``--concurrency`` clients busy with a mix of requests: streams read to the end, streams dropped
after a few chunks (disconnects), non-streaming requests abandoned by a short client timeout
(aborts), ``n`` > 1, and hostile bodies from the issue #17 list interleaved, plus ``/health`` probes.
Then it waits for the engine to drain and checks:

- every request ended (no client task still waiting), with 0 answers >= 500;
- every hostile body answered 400 in OpenAI's error shape;
- 0 KV blocks in use and 0 requests running or waiting (from ``/metrics``);
- ``/health`` 200 at the end, and its latency during the run (p99 against 100 ms);
- RSS of the server's process tree (API servers and engine core) at the end within ``--rss-tolerance``
  of its RSS after the warm-up (the first ``--warmup-s``).

  python -m benchmarks.soak --duration-s 240 --concurrency 16                   # CPU, default model
  python -m benchmarks.soak --duration-s 1800 --concurrency 64 --model /models/Qwen2.5-7B-Instruct
Prints one JSON summary line (and exits 1 when a check fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from engine.args import parse_args as parse_server_args

HOSTILE_BODIES: list[dict[str, Any]] = [
    {"prompt": "x", "max_tokens": "10"}, {"prompt": "x", "top_k": 2**40}, {"prompt": "x", "n": 20000},
    {"prompt": "x", "stop_token_ids": [2**40], "min_tokens": 2}, {"prompt": "x", "logprobs": 1000},
    {"prompt": "x", "stop": ["s"] * 1000}, {"prompt": "x", "logit_bias": {str(i): 1 for i in range(1000)}},
    {"prompt": [1, 2**40]}, {"prompt": "x", "best_of": 1000}, {"prompt": "x", "temperature": -1},
]
HOSTILE_RAW = [b'{"prompt": ' + b"[" * 1500 + b"]" * 1500 + b"}", b'{"prompt": "x"'] + [
    json.dumps(b).encode() for b in HOSTILE_BODIES]
HOSTILE_CHATS: list[dict[str, Any]] = [
    {"messages": [{"role": "wizard", "content": "hi"}]}, {"messages": [{"role": "user", "content": "hi"}],
                                                         "chat_template": "{{ 1/0 }}"},
]
WORDS = ["the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "tell", "me", "about", "rivers",
         "mountains", "stars", "and", "why"]


@dataclasses.dataclass
class Tally:
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    health_ms: list[float] = dataclasses.field(default_factory=list)
    bad_shape: int = 0
    error_events: list[str] = dataclasses.field(default_factory=list)  # the first few, for the summary
    started: int = 0
    ended: int = 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="soak this running server instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its RSS")
    p.add_argument("--duration-s", type=float, default=240.0)
    p.add_argument("--warmup-s", type=float, default=None, help="default: a fifth of the duration")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32, help="upper bound of each request's max_tokens")
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--health-p99-ms", type=float, default=100.0, help="the most /health's p99 latency may be")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--seed", type=int, default=0)
    return p


async def _request(client: httpx.AsyncClient, rng: random.Random, args: argparse.Namespace, tally: Tally) -> None:
    kind = rng.choices(["stream", "n", "disconnect", "abort", "hostile", "chat"], [30, 15, 15, 10, 15, 15])[0]
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
    body: dict[str, Any] = {"prompt": words, "max_tokens": rng.randint(1, args.max_tokens),
                            "temperature": rng.choice([0.0, 0.7, 1.0])}
    tally.started += 1
    try:
        if kind == "hostile":
            await _hostile(client, rng, tally)
        elif kind == "chat":
            chat = {"messages": [{"role": "user", "content": words}], "max_tokens": body["max_tokens"],
                    "stream": True}
            await _stream(client, "/v1/chat/completions", chat, None, tally)
        elif kind in ("stream", "disconnect"):
            await _stream(client, "/v1/completions", {**body, "stream": True},
                          rng.randint(1, 3) if kind == "disconnect" else None, tally)
        elif kind == "n":
            response = await client.post("/v1/completions", json={**body, "n": rng.randint(2, 4)})
            tally.statuses[response.status_code] += 1
        else:  # abort: hang up before the answer comes
            with contextlib.suppress(httpx.TimeoutException):
                await client.post("/v1/completions", json={**body, "max_tokens": args.max_tokens, "ignore_eos": True},
                                  timeout=rng.uniform(0.05, 0.5))
        tally.outcomes[kind] += 1
    except httpx.TransportError as err:
        tally.outcomes[f"transport error ({type(err).__name__})"] += 1
    finally:
        tally.ended += 1


async def _hostile(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    if rng.random() < 0.8:
        response = await client.post("/v1/completions", content=rng.choice(HOSTILE_RAW),
                                     headers={"content-type": "application/json"})
    else:
        response = await client.post("/v1/chat/completions", json=rng.choice(HOSTILE_CHATS))
    tally.statuses[response.status_code] += 1
    error = response.json().get("error", {}) if response.status_code == 400 else {}
    if response.status_code != 400 or set(error) != {"message", "type", "param", "code"}:
        tally.bad_shape += 1


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any], drop_after: int | None,
                  tally: Tally) -> None:
    async with client.stream("POST", path, json=body) as response:
        tally.statuses[response.status_code] += 1
        chunks = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                chunks += 1
                if '"error"' in line and line != "data: [DONE]" and "error" in json.loads(line[6:]):
                    tally.outcomes["stream error event"] += 1
                    if len(tally.error_events) < 5:
                        tally.error_events.append(line[6:300])
            if drop_after is not None and chunks >= drop_after:
                return  # leaving the block closes the connection: a disconnect mid-stream


def _probe_health(url: str, stop: Any, results: Any) -> None:
    """``/health`` every 0.5 s from a process of its own: timed from the soak's own event loop, the
    latency would include the wait for that loop, busy with dozens of streams (the H200 run read
    p99 ~1 s that way)."""
    latencies, statuses = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            statuses.append(client.get("/health").status_code)
            latencies.append((time.perf_counter() - started) * 1000)
            stop.wait(0.5)
    results.put((latencies, statuses))


class HealthProber:
    """Starts ``_probe_health`` in a child process; ``finish(tally)`` stops it and records its probes."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(target=_probe_health, args=(url, self._stop, self._results), daemon=True)
        self._process.start()

    def finish(self, tally: Tally) -> None:
        self._stop.set()
        latencies, statuses = self._results.get(timeout=120)
        self._process.join(timeout=10)
        tally.health_ms.extend(latencies)
        for status in statuses:
            if status != 200:
                tally.outcomes[f"/health answered {status}"] += 1


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the engine core, more API servers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def _rss_mb(pid: int | None) -> float | None:
    """Resident memory of the server's whole process tree, MB."""
    if pid is None:
        return None
    total = 0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _drained(client: httpx.AsyncClient, timeout_s: float = 120.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        text = (await client.get("/metrics")).text
        in_use = _metric(text, "vllm:num_kv_blocks_total") - _metric(text, "vllm:num_kv_blocks_free")
        state = {"running": _metric(text, "vllm:num_requests_running"),
                 "waiting": _metric(text, "vllm:num_requests_waiting"), "kv_blocks_in_use": in_use}
        if not any(state.values()) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tally = Tally()
    warmup_s = args.warmup_s if args.warmup_s is not None else args.duration_s / 5
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        prober = HealthProber(url)
        started = time.monotonic()
        rss: dict[str, Any] = {"start_mb": _rss_mb(pid), "timeline_mb": []}

        async def worker() -> None:
            while time.monotonic() - started < args.duration_s:
                await _request(client, rng, args, tally)

        async def sample_rss() -> None:
            while time.monotonic() - started < args.duration_s:
                await asyncio.sleep(min(10.0, warmup_s))
                rss["timeline_mb"].append(_rss_mb(pid))
                if rss.get("after_warmup_mb") is None and time.monotonic() - started >= warmup_s:
                    rss["after_warmup_mb"] = _rss_mb(pid)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)), sample_rss())
        prober.finish(tally)
        drained = await _drained(client)
        health_end = (await client.get("/health")).status_code
    rss["end_mb"] = _rss_mb(pid)
    return _summary(args, tally, drained, health_end, rss, time.monotonic() - started)


def _summary(args: argparse.Namespace, tally: Tally, drained: dict[str, float], health_end: int,
             rss: dict[str, Any], wall_s: float) -> dict[str, Any]:
    health = np.asarray(tally.health_ms or [0.0])
    growth = None
    if rss.get("after_warmup_mb") and rss.get("end_mb"):
        growth = rss["end_mb"] / rss["after_warmup_mb"] - 1
    checks = {
        "every_request_ended": tally.started == tally.ended,
        "no_5xx": not any(s >= 500 for s in tally.statuses),
        "hostile_inputs_400_in_openai_shape": tally.bad_shape == 0,
        "drained_no_kv_blocks_in_use": not any(drained.values()),
        "health_200_throughout": health_end == 200 and not any(k.startswith("/health") for k in tally.outcomes),
        "rss_within_tolerance": growth is None or growth <= args.rss_tolerance,
        "health_p99_within_limit": float(np.percentile(health, 99)) <= args.health_p99_ms,
    }
    return {"checks": checks, "passed": all(checks.values()), "requests": tally.started, "wall_s": round(wall_s, 1),
            "outcomes": dict(tally.outcomes), "error_events": tally.error_events,
            "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "health_ms": {"p50": round(float(np.percentile(health, 50)), 1),
                          "p99": round(float(np.percentile(health, 99)), 1),
                          "max": round(float(health.max()), 1), "probes": len(tally.health_ms)},
            "drained": drained, "rss": {**rss, "growth_after_warmup": None if growth is None else round(growth, 4)}}


def _start_server(args: argparse.Namespace, extra: list[str]) -> subprocess.Popen[bytes]:
    flags = ["--port", str(args.port), "--host", "127.0.0.1", "--disable-log-requests", "--disable-log-stats", *extra]
    parse_server_args(flags, prog="benchmarks.soak (server flags)")  # a bad flag stops here, before any start
    return subprocess.Popen([sys.executable, "-m", "engine.serve", *flags], env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError("the server did not become ready")


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    proc = None
    url, pid = args.url, args.server_pid
    if url is None:
        proc = _start_server(args, extra)
        url, pid = f"http://127.0.0.1:{args.port}", proc.pid
    try:
        if proc is not None:
            _wait_ready(url, proc)
        summary = asyncio.run(soak(args, url, pid))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(120)
    if proc is not None:  # SIGTERM after the soak: a graceful stop exits 0
        summary["server_exit_code"] = proc.returncode
        summary["checks"]["server_exit_0"] = proc.returncode == 0
        summary["passed"] = all(summary["checks"].values())
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
