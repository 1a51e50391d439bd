"""Online serving benchmark, in the spirit of ``vllm bench serve``.

Sends streaming requests to an OpenAI-compatible server, at a request rate (Poisson arrivals, or
all at once with ``inf``) and under a concurrency cap, and reports request throughput, output
token throughput, and TTFT / TPOT / ITL mean, median and p99. Prompt and output lengths come
from a ``random`` (uniform around a length) or ``sharegpt``-like (log-normal, long-tailed)
distribution, generated locally. Completions get token-id prompts (exact lengths, no tokenizer
needed); chat gets text decoded from random ids.

Without ``--base-url`` it starts its own server (the engine core in a child process, the API server
in a thread of this one, next to the client); every flag it does not know goes to that server
(``python -m engine.serve`` flags). For figures with the client in a process of its own, start
``python -m engine.serve`` separately and pass ``--base-url``. The server compiles its whole bucket
plan before it is ready (its start-up time is printed), so no warm-up pass is needed;
``--warmup-passes N`` still runs up to N identical unmeasured passes first (stopping once one
compiles nothing). The programs compiled during the measured pass are counted and printed (it
should be 0).

  python -m benchmarks.serve --num-prompts 32 --max-concurrency 8 --random-input-len 128 --random-output-len 64
  python -m benchmarks.serve --base-url http://127.0.0.1:8000 --model smol --dataset sharegpt --request-rate 4
  python -m benchmarks.serve --model benchmarks/configs/llama-3-8b --load-format dummy --dtype bfloat16 \\
      --num-prompts 512 --max-concurrency 128
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

DEFAULT_URL_VOCAB = 32000  # random ids are drawn below this when the server's vocabulary is unknown
FIRST_ID = 100  # skip the low ids, where special tokens usually live


@dataclasses.dataclass
class Job:
    prompt: list[int] | str
    prompt_len: int
    output_len: int


@dataclasses.dataclass
class Result:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    error: str = ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", help="a running server (e.g. http://127.0.0.1:8000); default: start one here")
    p.add_argument("--served-model", help="the 'model' field to send; default: the server's first model")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--dataset", choices=["random", "sharegpt"], default="random")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="random lengths are uniform in [len * (1 - r), len * (1 + r)]")
    p.add_argument("--sharegpt-max-input-len", type=int, default=1024)
    p.add_argument("--sharegpt-max-output-len", type=int, default=512)
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests/s (Poisson); inf: all at once")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrival times; 1: Poisson")
    p.add_argument("--max-concurrency", type=int, help="most requests in flight at once")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly the sampled output length (default: on)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--vocab-size", type=int, help=f"for random ids; default: the model's, or {DEFAULT_URL_VOCAB}")
    p.add_argument("--warmup-passes", type=int, default=0,
                   help="at most this many unmeasured passes of the same workload first; they stop early once "
                        "one compiles nothing")
    p.add_argument("--bench-seed", type=int, default=0)
    p.add_argument("--result-json", help="also write the figures to this file")
    return p


# ---- workload ------------------------------------------------------------------------------------
def make_jobs(args: argparse.Namespace, vocab: int, tokenizer: Any, max_model_len: int | None) -> list[Job]:
    rng = np.random.default_rng(args.bench_seed)
    n = args.num_prompts
    if args.dataset == "random":
        def lengths(mean: int) -> np.ndarray:
            low, high = int(mean * (1 - args.random_range_ratio)), int(mean * (1 + args.random_range_ratio))
            return rng.integers(max(1, low), max(1, high) + 1, size=n)

        inputs, outputs = lengths(args.random_input_len), lengths(args.random_output_len)
    else:  # ShareGPT-like: long-tailed, medians near 150 prompt and 120 output tokens
        inputs = np.clip(rng.lognormal(math.log(150), 1.0, n), 4, args.sharegpt_max_input_len).astype(int)
        outputs = np.clip(rng.lognormal(math.log(120), 1.0, n), 4, args.sharegpt_max_output_len).astype(int)
    if max_model_len:
        outputs = np.minimum(outputs, max_model_len - 2)
        inputs = np.minimum(inputs, max_model_len - outputs - 1)
    jobs = []
    for prompt_len, output_len in zip(inputs.tolist(), outputs.tolist(), strict=True):
        ids = rng.integers(FIRST_ID, vocab, size=max(1, prompt_len)).tolist()
        prompt: list[int] | str = ids
        if args.endpoint == "chat":
            if tokenizer is None:
                raise SystemExit("the chat endpoint needs a model with a tokenizer")
            prompt = tokenizer(ids)
        jobs.append(Job(prompt, len(ids), output_len))
    return jobs


def arrival_gaps(args: argparse.Namespace, n: int) -> Iterator[float]:
    rng = np.random.default_rng(args.bench_seed + 1)
    for _ in range(n):
        if math.isinf(args.request_rate):
            yield 0.0
        else:
            yield float(rng.gamma(args.burstiness, 1.0 / (args.request_rate * args.burstiness)))


# ---- one request ---------------------------------------------------------------------------------
async def send(client: httpx.AsyncClient, args: argparse.Namespace, model: str, job: Job) -> Result:
    body: dict[str, Any] = {"model": model, "max_tokens": job.output_len, "temperature": args.temperature,
                            "ignore_eos": args.ignore_eos, "stream": True,
                            "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": job.prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = job.prompt
    result = Result(ok=False, prompt_len=job.prompt_len)
    started = last = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                result.error = (await response.aread()).decode()[:200]
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices") or _is_role_chunk(chunk):
                    continue
                now = time.perf_counter()
                if result.ttft == 0.0:
                    result.ttft = now - started
                else:
                    result.itl.append(now - last)
                last = now
    except httpx.HTTPError as err:
        result.error = repr(err)
        return result
    result.latency = time.perf_counter() - started
    result.ok = result.ttft > 0
    return result


def _is_role_chunk(chunk: dict[str, Any]) -> bool:
    delta = chunk["choices"][0].get("delta")
    return delta is not None and "role" in delta and not delta.get("content")


async def run_pass(base_url: str, args: argparse.Namespace, model: str, jobs: list[Job]) -> tuple[list[Result], float]:
    limit = asyncio.Semaphore(args.max_concurrency or len(jobs))
    connections = httpx.Limits(max_connections=args.max_concurrency or len(jobs))
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(3600.0), limits=connections) as client:
        async def limited(job: Job) -> Result:
            async with limit:
                return await send(client, args, model, job)

        started = time.perf_counter()
        tasks = []
        for job, gap in zip(jobs, arrival_gaps(args, len(jobs)), strict=True):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(job)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - started


# ---- figures -------------------------------------------------------------------------------------
def summarize(results: list[Result], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    ttft = [r.ttft * 1e3 for r in ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) * 1e3 for r in ok if r.output_tokens > 1]
    itl = [gap * 1e3 for r in ok for gap in r.itl]
    e2e = [r.latency * 1e3 for r in ok]
    figures: dict[str, Any] = {
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        # content chunks received: fewer than tokens when the server coalesces a stream's tokens
        "streamed_chunks": sum(len(r.itl) + 1 for r in ok),
    }
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2e)):
        array = np.asarray(values or [0.0])
        figures.update({f"mean_{name}_ms": float(array.mean()), f"median_{name}_ms": float(np.median(array)),
                        f"p99_{name}_ms": float(np.percentile(array, 99))})
    errors = [r.error for r in results if not r.ok]
    if errors:
        figures["first_error"] = errors[0]
    return figures


def print_figures(f: dict[str, Any], extra: dict[str, Any]) -> None:
    line = "{:<40} {:<10}"
    print("{s:=^52}".format(s=" Serving Benchmark Result "))
    for label, value in extra.items():
        print(line.format(label + ":", value))
    rows = [("Successful requests", f["completed"]), ("Failed requests", f["failed"]),
            ("Benchmark duration (s)", f"{f['duration_s']:.2f}"), ("Total input tokens", f["total_input_tokens"]),
            ("Total generated tokens", f["total_output_tokens"]),
            ("Request throughput (req/s)", f"{f['request_throughput']:.2f}"),
            ("Output token throughput (tok/s)", f"{f['output_throughput']:.2f}"),
            ("Total token throughput (tok/s)", f"{f['total_token_throughput']:.2f}")]
    for label, value in rows:
        print(line.format(label + ":", value))
    titles = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
              "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for key, title in titles.items():
        print(f"{title:-^52}")
        for stat in ("mean", "median", "p99"):
            print(line.format(f"{stat.capitalize()} {key.upper()} (ms):", f"{f[f'{stat}_{key}_ms']:.2f}"))
    if "first_error" in f:
        print(f"first error: {f['first_error']}")
    print("=" * 52)


async def compilations(client: httpx.AsyncClient) -> int | None:
    text = (await client.get("/metrics")).text
    match = re.search(r"^tessera:num_compilations_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else None


# ---- the server ----------------------------------------------------------------------------------
@contextlib.contextmanager
def in_process_server(server_argv: list[str]) -> Iterator[tuple[str, Any]]:
    """``engine.serve``'s server on 127.0.0.1: its engine core in a child process, its API server in a
    thread here; yields (url, the served model)."""
    from engine.args import parse_args
    from engine.launch import build_engine
    from server import ServerSettings
    from server.background import LocalServer

    server_args = parse_args(server_argv, prog="benchmarks.serve (server flags)")

    def settings(model: Any) -> ServerSettings:
        return ServerSettings(served_model_names=server_args.served_model_name or [model.name],
                              model_root=server_args.model or model.name, log_requests=False,
                              max_pending_requests=server_args.max_pending_requests)

    started = time.perf_counter()
    with LocalServer(functools.partial(build_engine, server_args), settings) as server:
        print(f"server ready in {time.perf_counter() - started:.1f}s (model loaded, bucket plan "
              f"{'precompiled' if server_args.precompile else 'not precompiled: --skip-warmup'})", flush=True)
        yield server.url, server.model


async def benchmark(base_url: str, args: argparse.Namespace, served: Any) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        card = client.get("/v1/models").json()["data"][0]
        model = args.served_model or card["id"]
        has_tokenizer = client.post("/tokenize", json={"prompt": "x"}).status_code == 200
        vocab = args.vocab_size or (served.vocab_size if served is not None else DEFAULT_URL_VOCAB)

        def decode(ids: list[int]) -> str:
            return str(client.post("/detokenize", json={"tokens": ids}).json()["prompt"])

        jobs = make_jobs(args, vocab, decode if has_tokenizer else None, card.get("max_model_len"))
    async with httpx.AsyncClient(base_url=base_url) as metrics:
        for i in range(args.warmup_passes):
            compiled_before = await compilations(metrics)
            print(f"warm-up pass {i + 1} of at most {args.warmup_passes} ({len(jobs)} requests, unmeasured)...",
                  flush=True)
            await run_pass(base_url, args, model, jobs)
            if compiled_before is not None and await compilations(metrics) == compiled_before:
                break  # this pass compiled nothing new: the measured one should not either
        compiled_before = await compilations(metrics)
        results, duration = await run_pass(base_url, args, model, jobs)
        compiled_after = await compilations(metrics)
    figures = summarize(results, duration)
    figures["model"] = model
    if compiled_before is not None and compiled_after is not None:
        figures["compilations_during_run"] = compiled_after - compiled_before
    extra = {"Model": model, "Endpoint": args.endpoint, "Dataset": args.dataset,
             "Request rate (req/s)": args.request_rate, "Max concurrency": args.max_concurrency or "none"}
    if "compilations_during_run" in figures:
        extra["Compilations during run"] = figures["compilations_during_run"]
    print_figures(figures, extra)
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, server_argv = build_parser().parse_known_args(argv)
    from server.api_server import raise_open_file_limit

    raise_open_file_limit()  # one connection per request in flight
    if args.base_url:
        if server_argv:
            raise SystemExit(f"unknown arguments with --base-url: {' '.join(server_argv)}")
        figures = asyncio.run(benchmark(args.base_url.rstrip("/"), args, None))
    else:
        with in_process_server(server_argv) as (url, served):
            figures = asyncio.run(benchmark(url, args, served))
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump({"args": vars(args), **figures}, f, indent=2, default=str)
    return figures


if __name__ == "__main__":
    main()
