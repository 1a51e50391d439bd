"""Start-to-ready time of ``python -m engine.serve``, cold and warm compilation cache.

Runs the server twice in a subprocess with the same fresh cache directory: the first start
compiles the whole bucket plan (cold), the second loads it (warm). Each time counts from the
process start to the first ``/health`` 200, then stops the server. Every flag it does not know
goes to the server.

  python -m benchmarks.startup --max-model-len 1024 --max-num-seqs 8 --max-num-batched-tokens 128
  python -m benchmarks.startup --model benchmarks/configs/llama-3-8b --load-format dummy --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from engine.args import parse_args as parse_server_args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_ready(server_args: list[str], cache_dir: str, timeout_s: float) -> dict[str, float | int | str]:
    port = free_port()
    command = [sys.executable, "-m", "engine.serve", *server_args, "--host", "127.0.0.1", "--port", str(port),
               "--compilation-cache-dir", cache_dir, "--disable-log-requests", "--disable-log-stats"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None  # PIPE
    try:
        warming_seen = ""
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if health.status_code == 200:
                ready = time.perf_counter() - started
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                match = re.search(r"^tessera:num_compilations_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
                return {"ready_s": round(ready, 2), "last_warming_status": warming_seen,
                        "programs_lowered": int(float(match.group(1))) if match else -1}
            warming_seen = health.text
            time.sleep(0.2)
        raise TimeoutError(f"not ready after {timeout_s}s")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help="compilation cache to use (default: a fresh temporary directory)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each start")
    parser.add_argument("--result-json")
    args, server_args = parser.parse_known_args(argv)
    parse_server_args(server_args, prog="benchmarks.startup (server flags)")  # a bad flag stops here
    with tempfile.TemporaryDirectory(prefix="tessera-jax-cache-") as fresh:
        cache_dir = args.cache_dir or fresh
        result: dict[str, object] = {"server_args": server_args, "cache_dir": cache_dir,
                                     "cold": time_to_ready(server_args, cache_dir, args.timeout)}
        print(f"cold start to ready: {result['cold']}", flush=True)
        result["warm"] = time_to_ready(server_args, cache_dir, args.timeout)
        print(f"warm start to ready: {result['warm']}", flush=True)
    print(json.dumps(result))
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
