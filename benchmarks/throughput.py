"""Offline throughput, in the spirit of ``vllm bench throughput``.

N random prompts of a fixed input length each generate a fixed number of tokens (ignore_eos).
The engine compiles its whole bucket plan at start-up (timed and printed), so the measured
pass needs no warm-up and must compile nothing (``compilations_during_run``);
``--warmup-passes N`` still runs N unmeasured passes first. Prints requests/s, tokens/s, host
vs device time per step, and the fraction of the decode bandwidth roofline reached.

  python -m benchmarks.throughput --num-prompts 64 --input-len 128 --output-len 64
  python -m benchmarks.throughput --model benchmarks/configs/llama-3-8b --load-format dummy \
      --dtype bfloat16 --num-prompts 256 --input-len 256 --output-len 256
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from benchmarks.roofline import copy_bandwidth
from engine import EngineConfig, LLMEngine, SamplingParams
from models.weights import param_shapes


def run_workload(engine: LLMEngine, prompts: list[list[int]], output_len: int) -> dict[str, float]:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt, params)
    steps = 0
    host = device = 0.0
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step(final_only=True)
        steps += 1
        device += engine.last_step_device_wait_s
        host += engine.last_step_total_s - engine.last_step_device_wait_s
    return {"seconds": time.perf_counter() - started, "steps": steps, "host_s": host, "device_wait_s": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--mesh", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-passes", type=int, default=0, help="unmeasured passes before the timed one")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(
        model=args.model, load_format=args.load_format, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        num_gpu_blocks_override=args.num_gpu_blocks_override, attention_backend=args.attention_backend,
        mesh=args.mesh, seed=args.seed,
    ))
    startup = time.perf_counter() - started
    print(f"Engine ready in {startup:.1f}s ({engine.stats().num_compilations} programs lowered, "
          f"compiled or loaded)")
    cfg = engine.model_config
    rng = np.random.default_rng(args.seed)

    def random_prompts() -> list[list[int]]:
        return [[int(t) for t in rng.integers(100, min(cfg.vocab_size, 30000), size=args.input_len)]
                for _ in range(args.num_prompts)]

    # Fresh prompts for the timed pass: same shapes (so no new buckets), no prefix-cache hits.
    warm = [run_workload(engine, random_prompts(), args.output_len) for _ in range(args.warmup_passes)]
    compiles_before = engine.stats().num_compilations
    timed = run_workload(engine, random_prompts(), args.output_len)
    recompiles = engine.stats().num_compilations - compiles_before

    n, inp, out = args.num_prompts, args.input_len, args.output_len
    seconds = timed["seconds"]
    weight_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in param_shapes(cfg).values())
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.jnp_dtype).itemsize
    kv_read = n * kv_per_token * (out * inp + out * (out - 1) / 2)
    bytes_moved = timed["steps"] * weight_bytes + kv_read
    bandwidth = copy_bandwidth()
    result = {
        "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
        "model": engine.model_name, "dtype": cfg.dtype, "num_prompts": n, "input_len": inp, "output_len": out,
        "requests_per_s": n / seconds, "total_tokens_per_s": n * (inp + out) / seconds,
        "output_tokens_per_s": n * out / seconds, "seconds": seconds, "steps": timed["steps"],
        "host_ms_per_step": 1e3 * timed["host_s"] / timed["steps"],
        "device_wait_ms_per_step": 1e3 * timed["device_wait_s"] / timed["steps"],
        "startup_seconds": startup, "warmup_seconds": sum(w["seconds"] for w in warm),
        "compilations_during_run": recompiles,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "bandwidth_roofline_fraction": bytes_moved / seconds / bandwidth,
        "kv_blocks": engine.runner.num_blocks,
    }
    print(f"Throughput: {result['requests_per_s']:.2f} requests/s, {result['total_tokens_per_s']:.2f} total "
          f"tokens/s, {result['output_tokens_per_s']:.2f} output tokens/s")
    print(f"Steps: {timed['steps']}; host {result['host_ms_per_step']:.2f} ms/step, device wait "
          f"{result['device_wait_ms_per_step']:.2f} ms/step; compilations during the run: {recompiles}")
    print(f"Bandwidth roofline: {result['bandwidth_roofline_fraction']:.1%} of the measured copy bandwidth "
          f"({bandwidth / 1e9:.0f} GB/s) counting weights per step + KV reads")
    print(json.dumps(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
