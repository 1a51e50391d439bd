"""Prefix caching benefit: many requests sharing a long system prompt with short questions.

The first request computes the shared prefix; the remaining ones arrive together. Runs once
with and once without prefix caching and prints time to first token and throughput of both.
Every other engine flag of ``python -m engine.serve`` applies (here --max-num-seqs defaults to 64
and --max-model-len to 4096).

  python -m benchmarks.prefix --num-requests 16 --prefix-len 2000 --question-len 32 --output-len 32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any

import jax
import numpy as np

from engine import LLMEngine, SamplingParams
from engine.config import add_engine_flags, checked_engine_config
from engine.environment import configure_process


def measure(engine: LLMEngine, prompts: list[list[int]], output_len: int) -> dict[str, float]:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    tag = time.monotonic_ns()
    engine.add_request(f"{tag}-warm", prompts[0], params)
    while engine.has_unfinished_requests():
        engine.step()
    started = time.perf_counter()
    arrival = {}
    for i, prompt in enumerate(prompts[1:]):
        arrival[f"{tag}-{i}"] = time.perf_counter()
        engine.add_request(f"{tag}-{i}", prompt, params)
    ttft: dict[str, float] = {}
    cached = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id not in ttft:
                ttft[out.request_id] = time.perf_counter() - arrival[out.request_id]
                cached += out.num_cached_tokens
    seconds = time.perf_counter() - started
    n = len(prompts) - 1
    return {
        "ttft_mean_s": statistics.mean(ttft.values()), "ttft_median_s": statistics.median(ttft.values()),
        "seconds": seconds, "requests_per_s": n / seconds,
        "total_tokens_per_s": sum(len(p) + output_len for p in prompts[1:]) / seconds,
        "cached_prompt_tokens": cached,
    }


def main() -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prefix-len", type=int, default=2000)
    parser.add_argument("--question-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--output-json", default=None)
    add_engine_flags(parser, defaults={"max_num_seqs": 64, "max_model_len": 4096}, skip=("enable_prefix_caching",))
    args = parser.parse_args()
    config = checked_engine_config(parser, args)

    rng = np.random.default_rng(0)
    prefix = [int(t) for t in rng.integers(100, 30000, size=args.prefix_len)]
    prompts = [prefix + [int(t) for t in rng.integers(100, 30000, size=args.question_len)]
               for _ in range(args.num_requests + 1)]
    results: dict[str, Any] = {}
    for caching in (True, False):
        engine = LLMEngine(dataclasses.replace(config, enable_prefix_caching=caching))
        measure(engine, prompts, args.output_len)  # compiles every bucket the workload needs
        results["with_caching" if caching else "without_caching"] = measure(engine, prompts, args.output_len)
        del engine
    on, off = results["with_caching"], results["without_caching"]
    results.update(
        device=str(jax.devices()[0].device_kind), num_requests=args.num_requests, prefix_len=args.prefix_len,
        question_len=args.question_len, output_len=args.output_len,
        ttft_speedup=off["ttft_mean_s"] / on["ttft_mean_s"],
        throughput_speedup=on["total_tokens_per_s"] / off["total_tokens_per_s"],
    )
    for name in ("with_caching", "without_caching"):
        r = results[name]
        print(f"{name:>16}: TTFT mean {r['ttft_mean_s'] * 1e3:.0f} ms, median {r['ttft_median_s'] * 1e3:.0f} ms; "
              f"{r['requests_per_s']:.2f} req/s, {r['total_tokens_per_s']:.0f} tok/s; "
              f"cached prompt tokens {r['cached_prompt_tokens']}")
    print(f"prefix caching: TTFT {results['ttft_speedup']:.2f}x lower, throughput {results['throughput_speedup']:.2f}x")
    print(json.dumps(results))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
