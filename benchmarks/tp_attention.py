"""Paged attention per head shard under tensor parallelism: kernel against reference.

One decode step (B sequences, one new token each, a context of C tokens), 32 query / 8 kv
heads of 128 (Llama-3-8B's attention) in bf16, run by ``ops.head_sharded_attention`` over
``--tp`` devices: each device attends its own heads over its own shard of the pool. Every
backend is timed (benchmarks/kernels.py's ``measure``: several input sets per dispatch) and
its KV bytes read per GPU per second are held against the copy bandwidth of one GPU
(``jnp.copy``, bytes read + written) measured in the same run. The issue's target: the kernel
at >= 90% of copy bandwidth per GPU at tp=2, B=64, C=2048.

  python -m benchmarks.tp_attention --tp 2                      # 2 GPUs
  python -m benchmarks.tp_attention --cpu-devices 2 --smoke --backends reference pallas_gpu
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--backends", nargs="+", default=["pallas_gpu", "reference"])
    p.add_argument("--num-sets", type=int, default=4, help="input sets per dispatch (keeps L2 cold)")
    p.add_argument("--cpu-devices", type=int, help="run on the CPU with this many fake devices")
    p.add_argument("--smoke", action="store_true", help="a small shape (for a CPU check)")
    p.add_argument("--output-json", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.cpu_devices:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
    if args.smoke:
        args.batch, args.context, args.heads, args.kv_heads, args.head_dim = 4, 64, 8, 2, 64
        args.num_sets = 1
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from benchmarks.kernels import measure, paged_step
    from models.head_layout import plan_head_layout
    from ops.attention import get_backend
    from ops.attention_backend import AttentionShape, AttentionSpec
    from ops.head_sharded_attention import HeadSharding

    layout = plan_head_layout(args.heads, args.kv_heads, args.tp)
    if not layout.is_identity:
        raise SystemExit(f"{args.heads} / {args.kv_heads} heads need padding over tp={args.tp}; "
                         "pick a shape that splits")
    mesh = jax.make_mesh((args.tp,), ("tp",), devices=jax.devices()[: args.tp], axis_types=(AxisType.Auto,))
    heads = HeadSharding(mesh, "tp")
    (k, v), sets = paged_step(0, [1] * args.batch, [args.context] * args.batch, args.heads, args.kv_heads,
                              args.head_dim, args.block_size, jnp.bfloat16, args.num_sets)
    pool = NamedSharding(mesh, PartitionSpec(None, None, "tp", None))
    split = NamedSharding(mesh, PartitionSpec(None, "tp", None))
    shared = (jax.device_put(k, pool), jax.device_put(v, pool))
    sets = [(jax.device_put(q, split), jax.device_put(md, NamedSharding(mesh, PartitionSpec()))) for q, md in sets]
    new_kv = jax.device_put(jnp.zeros((args.batch, args.kv_heads, args.head_dim), jnp.bfloat16), split)

    x = jax.device_put(jnp.ones(((64 if args.cpu_devices else 1024) * 2**20,), jnp.bfloat16), jax.devices()[0])
    copy_bw = 2 * x.nbytes / measure(lambda _, a: jnp.copy(a), None, [x])
    del x
    kv_bytes_per_gpu = args.batch * args.context * 2 * (args.kv_heads // args.tp) * args.head_dim * 2
    result = {"device": jax.devices()[0].device_kind, "tp": args.tp, "batch": args.batch, "context": args.context,
              "copy_bytes_per_s": copy_bw, "kv_bytes_per_gpu": kv_bytes_per_gpu, "backends": {}}
    print(f"copy bandwidth of one device: {copy_bw / 1e9:.1f} GB/s; KV read per device per step: "
          f"{kv_bytes_per_gpu / 2**20:.1f} MiB")
    spec = AttentionSpec(scale=args.head_dim**-0.5)
    for backend in args.backends:
        attention = get_backend(backend, heads)

        def step(pools, inputs, attention=attention):
            q, md = inputs
            plan = attention.prepare(md, AttentionShape.of(q.shape, pools[0].shape))
            out, _, _ = attention.write_and_attend(q, new_kv, new_kv, *pools, plan, spec)
            return out

        seconds = measure(step, shared, sets)
        fraction = kv_bytes_per_gpu / seconds / copy_bw
        result["backends"][backend] = {"seconds": seconds, "copy_bandwidth_fraction": fraction}
        print(f"{backend:>10}: {seconds * 1e6:9.1f} us per step = {fraction:.0%} of one device's copy bandwidth")
    if args.output_json:
        args.output_json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
