"""Offline throughput, in the spirit of ``vllm bench throughput``, and batch-1 latency.

N prompts generate a set number of tokens each (ignore_eos): fixed lengths (``--dataset
random``) or the ShareGPT-like long-tailed lengths of benchmarks/serve.py (``--dataset
sharegpt``, the same generator, so offline and serving runs see the same requests). The
engine compiles its whole bucket plan at start-up (timed and printed), so the measured pass
needs no warm-up and must compile nothing (``compilations_during_run``); ``--warmup-passes N``
still runs N unmeasured passes first. Prints requests/s, tokens/s, the device's busy fraction and
the host time it did not hide (benchmarks/step_timeline.py), and the fraction of the decode bandwidth
roofline reached (copy bandwidth: benchmarks/roofline.py).

``--batch1`` measures one request alone (default 128 in / 512 out): tok/s and its fraction
of the roofline (weights + KV read once per token at the measured copy bandwidth). Every engine
flag of ``python -m engine.serve`` applies (``--seed`` also seeds the prompts).

  python -m benchmarks.throughput --num-prompts 64 --input-len 128 --output-len 64
  python -m benchmarks.throughput --model benchmarks/configs/llama-3-8b --load-format dummy \
      --dtype bfloat16 --num-prompts 1000 --input-len 256 --output-len 256
  python -m benchmarks.throughput --dataset sharegpt --num-prompts 500
  python -m benchmarks.throughput --batch1 --input-len 128 --output-len 512
  python -m benchmarks.throughput --no-async-scheduling ...   # the overlap off, for comparison
"""

from __future__ import annotations

import argparse
import json
import time
from typing import cast

import jax
import numpy as np

from benchmarks import serve
from benchmarks.roofline import copy_bandwidths
from benchmarks.step_timeline import StepTimeline
from engine import LLMEngine, SamplingParams
from engine.config import add_engine_flags, checked_engine_config
from engine.environment import configure_process
from models.weights import param_shapes

Workload = list[tuple[list[int], int]]  # (prompt ids, output length)


def run_workload(engine: LLMEngine, prompts: list[list[int]], output_len: int) -> dict[str, float]:
    """Every prompt generates ``output_len`` tokens."""
    return run_requests(engine, [(prompt, output_len) for prompt in prompts])


def run_requests(engine: LLMEngine, workload: Workload) -> dict[str, float]:
    """Runs the workload to completion; wall time, steps, host time and device-busy time."""
    for i, (prompt, output_len) in enumerate(workload):
        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt, params)
    steps = 0
    host = device = 0.0
    with StepTimeline(engine.runner) as timeline:
        started = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step(final_only=True)
            steps += 1
            device += engine.last_step_device_wait_s
            host += engine.last_step_total_s - engine.last_step_device_wait_s
        ended = time.perf_counter()
    busy = timeline.device_busy_seconds(started, ended)
    return {"seconds": ended - started, "steps": steps, "host_s": host, "device_wait_s": device,
            "device_busy_s": busy}


def make_workload(args: argparse.Namespace, vocab: int, max_model_len: int, rng: np.random.Generator) -> Workload:
    """Fixed lengths, or serve.py's ShareGPT-like lengths (its own generator, seeded per pass)."""
    if args.dataset == "sharegpt":
        serve_args = serve.build_parser().parse_args([
            "--dataset", "sharegpt", "--num-prompts", str(args.num_prompts),
            "--bench-seed", str(int(rng.integers(2**31))),
        ])
        jobs = serve.make_jobs(serve_args, vocab, None, max_model_len)
        return [(list(cast(list[int], job.prompt)), job.output_len) for job in jobs]  # no decode: token ids
    return [([int(t) for t in rng.integers(100, min(vocab, 30000), size=args.input_len)], args.output_len)
            for _ in range(args.num_prompts)]


def build_parser() -> argparse.ArgumentParser:
    """The workload's flags, and every engine flag (engine/config.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload = parser.add_argument_group("workload")
    workload.add_argument("--dataset", choices=["random", "sharegpt"], default="random")
    workload.add_argument("--batch1", action="store_true", help="one request alone: latency-bound decode")
    workload.add_argument("--num-prompts", type=int, default=64)
    workload.add_argument("--input-len", type=int, default=None, help="default 128")
    workload.add_argument("--output-len", type=int, default=None, help="default 64; 512 with --batch1")
    workload.add_argument("--warmup-passes", type=int, default=0, help="unmeasured passes before the timed one")
    workload.add_argument("--output-json", default=None)
    add_engine_flags(parser)
    return parser


def main() -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    parser = build_parser()
    args = parser.parse_args()
    config = checked_engine_config(parser, args)
    if args.batch1:
        args.num_prompts, args.dataset = 1, "random"
    args.input_len = args.input_len or 128
    args.output_len = args.output_len or (512 if args.batch1 else 64)
    started = time.perf_counter()
    engine = LLMEngine(config)
    startup = time.perf_counter() - started
    print(f"Engine ready in {startup:.1f}s ({engine.stats().num_compilations} programs lowered, "
          f"compiled or loaded)")
    rng = np.random.default_rng(args.seed)
    vocab = engine.model_config.vocab_size
    # Fresh prompts for each pass: same length distribution, no prefix-cache hits.
    warm = [run_requests(engine, make_workload(args, vocab, engine.max_model_len, rng))
            for _ in range(args.warmup_passes)]
    compiles_before = engine.stats().num_compilations
    workload = make_workload(args, vocab, engine.max_model_len, rng)
    timed = run_requests(engine, workload)
    recompiles = engine.stats().num_compilations - compiles_before
    result = figures(engine, args, workload, timed, startup, sum(w["seconds"] for w in warm), recompiles)
    report(result, args.batch1)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


def figures(engine: LLMEngine, args: argparse.Namespace, workload: Workload, timed: dict[str, float],
            startup_seconds: float, warmup_seconds: float, recompiles: int) -> dict:
    cfg = engine.model_config
    seconds, steps = timed["seconds"], timed["steps"]
    inputs = np.array([len(p) for p, _ in workload], np.float64)
    outputs = np.array([o for _, o in workload], np.float64)
    weight_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in param_shapes(cfg).values())
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.jnp_dtype).itemsize
    kv_read = kv_per_token * float(np.sum(outputs * inputs + outputs * (outputs - 1) / 2))
    bytes_moved = steps * weight_bytes + kv_read
    methods = copy_bandwidths()
    bandwidth = max(methods.values())
    return {
        "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
        "model": engine.model_name, "dtype": cfg.dtype, "dataset": args.dataset, "batch1": args.batch1,
        "async_scheduling": engine.config.async_scheduling, "num_prompts": len(workload),
        "input_len": args.input_len, "output_len": args.output_len,
        "mean_input_len": float(inputs.mean()), "mean_output_len": float(outputs.mean()),
        "requests_per_s": len(workload) / seconds, "total_tokens_per_s": float(inputs.sum() + outputs.sum()) / seconds,
        "output_tokens_per_s": float(outputs.sum()) / seconds, "seconds": seconds, "steps": steps,
        "host_ms_per_step": 1e3 * timed["host_s"] / steps,
        "device_wait_ms_per_step": 1e3 * timed["device_wait_s"] / steps,
        "device_busy_fraction": timed["device_busy_s"] / seconds,
        "host_exposed_ms_per_step": 1e3 * (seconds - timed["device_busy_s"]) / steps,
        "startup_seconds": startup_seconds, "warmup_seconds": warmup_seconds, "compilations_during_run": recompiles,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "copy_bandwidth_methods_GBps": {k: v / 1e9 for k, v in methods.items()},
        "bandwidth_roofline_fraction": bytes_moved / seconds / bandwidth,
        "kv_blocks": engine.runner.num_blocks,
    }


def report(r: dict, batch1: bool) -> None:
    if batch1:
        print(f"Batch 1 ({r['input_len']} in / {r['output_len']} out): {r['output_tokens_per_s']:.1f} tok/s, "
              f"{r['bandwidth_roofline_fraction']:.1%} of the roofline")
    else:
        print(f"Throughput: {r['requests_per_s']:.2f} requests/s, {r['total_tokens_per_s']:.2f} total tokens/s, "
              f"{r['output_tokens_per_s']:.2f} output tokens/s")
    print(f"Steps: {r['steps']}; device busy {r['device_busy_fraction']:.1%}, host exposed "
          f"{r['host_exposed_ms_per_step']:.2f} ms/step (host {r['host_ms_per_step']:.2f} ms/step, device wait "
          f"{r['device_wait_ms_per_step']:.2f} ms/step); compilations during the run: {r['compilations_during_run']}")
    methods = ", ".join(f"{k} {v:.0f}" for k, v in r["copy_bandwidth_methods_GBps"].items())
    print(f"Bandwidth roofline: {r['bandwidth_roofline_fraction']:.1%} of the measured copy bandwidth "
          f"({r['copy_bandwidth_GBps']:.0f} GB/s, best of: {methods}) counting weights per step + KV reads")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
