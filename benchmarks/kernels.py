"""Paged-attention kernels on one GPU, side by side, against the GPU's measured ceilings.

    python3 benchmarks/kernels.py --out DIR [--commit SHA] [--smoke]

In one run: the GPU's copy bandwidth (jitted ``x * 2`` over 2 GiB bf16, bytes read + written)
and bf16 matmul rate (8192^3); a correctness pass of our Pallas kernel against the XLA
reference on the GPU (poisoned pools, many shapes and options); a check that the compiled
write_kv + attention step does not copy the pool; then each case timed for our kernel (a few
launch configs, best reported), jax's own Pallas ``paged_attention`` (decode only) and the XLA
reference. Decode is held against copy bandwidth over the K/V bytes read, prefill against the
matmul rate in causal attention FLOPs. Writes results.json and a log under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ops import pallas_gpu_attention as gpu  # noqa: E402
from ops.attention_backend import AttentionShape, AttentionSpec, write_kv  # noqa: E402
from ops.attention_metadata import AttentionMetadata  # noqa: E402
from ops.pallas_cases import make_case, pool_copies, relative_error  # noqa: E402
from ops.reference_attention import ReferenceAttention  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)
SET_BYTES = 1 << 30
RESULTS: dict = {"cases": {}, "correctness": [], "errors": []}
REFERENCE = ReferenceAttention()


def log(*args) -> None:
    print(*args, flush=True)


def measure(fn, shared, sets, min_seconds: float = 0.15, trials: int = 5) -> float:
    """Median seconds per call of ``fn(shared, s)``, over the input sets in turn.

    All sets run inside one jitted program (one dispatch), repeated until a trial lasts
    ``min_seconds``; rotating sets keeps small working sets from being served by L2.
    """
    multi = jax.jit(lambda shared, sets: [fn(shared, s) for s in sets])
    jax.block_until_ready(multi(shared, sets))
    start = time.perf_counter()
    jax.block_until_ready(multi(shared, sets))
    once = time.perf_counter() - start
    reps = max(1, min(500, math.ceil(min_seconds / max(once, 1e-6))))
    samples = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            out = multi(shared, sets)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / (reps * len(sets)))
    return statistics.median(samples)


def ceilings(smoke: bool) -> tuple[float, float]:
    n, m = ((1 << 24), 1024) if smoke else ((1 << 30), 8192)
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    t = measure(lambda _, x: x * 2, None, [x])
    copy_bw = 2 * x.nbytes / t
    del x
    a = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (m, m), jnp.bfloat16)
    t = measure(lambda _, ab: ab[0] @ ab[1], None, [(a, b)])
    matmul = 2 * m**3 / t
    log(f"ceilings: copy {copy_bw / 1e12:.2f} TB/s, bf16 matmul {matmul / 1e12:.0f} TFLOP/s")
    return copy_bw, matmul


def paged_step(seed, q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, num_sets):
    """Device-side random pools and ``num_sets`` steps over disjoint, shuffled blocks."""
    rng = np.random.default_rng(seed)
    need = [-(-s // block_size) for s in seq_lens]
    per_set, width = sum(need), max(need)
    num_blocks = num_sets * per_set + 1
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = jax.random.normal(jax.random.key(seed), shape, dtype)
    v = jax.random.normal(jax.random.key(seed + 1), shape, dtype)
    sets = []
    starts = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    for i in range(num_sets):
        ids = 1 + i * per_set + rng.permutation(per_set)
        table = np.zeros((len(seq_lens), width), np.int32)
        at = 0
        for s, n in enumerate(need):
            table[s, :n] = ids[at : at + n]
            at += n
        md = AttentionMetadata(
            slot_mapping=jnp.full((int(starts[-1]),), -1, jnp.int32),
            block_tables=jnp.asarray(table),
            seq_lens=jnp.asarray(seq_lens, jnp.int32),
            query_start_loc=jnp.asarray(starts),
            max_query_len=max(q_lens),
        )
        q = jax.random.normal(jax.random.key(seed + 10 + i), (int(starts[-1]), heads, head_dim), dtype)
        sets.append((q, md))
    return (k, v), sets


def time_ours(name, shared, sets, configs, scale, window=None, cap=None) -> dict:
    """Best time over ``configs`` of the kernel alone (per-step tables built beforehand, as in a
    model where all layers share them), and the default config's time with the tables built."""
    best = None
    spec = AttentionSpec(scale, window, cap)
    for config in configs:
        backend = gpu.PallasGpuAttention(config)
        prepared = [(q, backend.prepare(md, AttentionShape.of(q.shape, shared[0].shape))) for q, md in sets]
        first = prepared[0][1]
        assert isinstance(first, gpu.GpuStepPlan), "every shape benchmarked here runs the kernel"
        launch = first.launch

        def run(sh, s, backend=backend):
            q, plan = s
            return backend.attend(q, sh[0], sh[1], plan, spec)

        cfg = launch.config
        label = (f"rows={launch.rows} block_q={launch.block_q} block_k={cfg.block_k} "
                 f"warps={cfg.num_warps} stages={cfg.num_stages} splits={launch.splits}")
        try:
            t = measure(run, shared, prepared)
        except Exception as e:  # one config failing to compile must not end the run
            RESULTS["errors"].append(f"{name} {label}: {traceback.format_exc()}"[-3000:])
            log(f"  {name} ours [{label}]: FAILED {str(e).splitlines()[0][:300]}")
            continue
        log(f"  {name} ours [{label}]: {t * 1e6:.1f} us")
        if best is None or t < best[0]:
            best = (t, label)
    if best is None:
        return {}
    t_full = measure(
        lambda sh, s: gpu.PallasGpuAttention().paged_attention(s[0], sh[0], sh[1], s[1], scale=scale,
                                                               sliding_window=window, soft_cap=cap),
        shared, sets)
    log(f"  {name} ours default config, tables built in the call: {t_full * 1e6:.1f} us")
    return {"ours_s": best[0], "ours_config": best[1], "ours_default_with_tables_s": t_full}


def time_reference(shared, sets, scale, **kw) -> float:
    # Four sets suffice for the slow XLA path and keep its unrolled program's compile short.
    return measure(lambda sh, s: REFERENCE.paged_attention(s[0], sh[0], sh[1], s[1], scale=scale, **kw),
                   shared, sets[:4])


def time_peer(shared, sets) -> float:
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as peer

    k_pages = jnp.transpose(shared[0], (2, 0, 1, 3))  # its layout: [kv_heads, pages, page, d]
    v_pages = jnp.transpose(shared[1], (2, 0, 1, 3))
    return measure(lambda sh, s: peer(s[0], sh[0], sh[1], s[1].block_tables, s[1].seq_lens),
                   (k_pages, v_pages), sets)


def check_against_reference(name, shared, sets, scale, config=None, **kw) -> float:
    q, md = sets[0]
    out = gpu.PallasGpuAttention(config).paged_attention(q, shared[0], shared[1], md, scale=scale, **kw)
    with jax.default_matmul_precision("highest"):  # XLA's GPU default for f32 dots is TF32
        ref = REFERENCE.paged_attention(q, shared[0], shared[1], md, scale=scale, **kw)
    err = relative_error(out.astype(jnp.float32), ref.astype(jnp.float32))
    nan = bool(jnp.isnan(out).any())
    log(f"  {name}: relative error vs reference {err:.2e}{' NaN!' if nan else ''}")
    return float("inf") if nan else err


def correctness_pass() -> None:
    """Small poisoned cases on the GPU (compiled kernel, not interpret) against the reference."""
    q_lens, seq_lens = [1, 7, 0, 1, 20, 3, 1, 1, 64], [1, 7, 0, 33, 70, 16, 32, 300, 64]
    decode_q, decode_s = [1, 1, 0, 1, 1], [1, 95, 0, 32, 700]
    cfgs = [None, gpu.GpuKernelConfig(rows=16, block_k=16),
            gpu.GpuKernelConfig(rows=64, block_k=32, kv_splits=3)]
    cases: list[tuple[list[int], list[int], int, int, int, int, Any, dict[str, Any], gpu.GpuKernelConfig | None]] = []
    for group, kv, d, bs in [(1, 2, 64, 16), (4, 2, 128, 16), (8, 1, 128, 32), (4, 8, 64, 32)]:
        for dtype in (jnp.bfloat16, jnp.float32):
            cases.append((q_lens, seq_lens, group, kv, d, bs, dtype, {}, None))
    cases += [
        (q_lens, seq_lens, 4, 2, 128, 16, jnp.bfloat16, dict(sliding_window=40, soft_cap=30.0), cfg)
        for cfg in cfgs
    ]
    cases += [(decode_q, decode_s, 4, 2, 128, 16, jnp.bfloat16, dict(sliding_window=300), None)]
    cases += [(decode_q, decode_s, 8, 4, 128, 32, jnp.float32, {}, cfg) for cfg in cfgs]
    for i, (ql, sl, group, kv, d, bs, dtype, kw, cfg) in enumerate(cases):
        seed = int(cast(int, np.random.SeedSequence().entropy) % (2**31))  # drawn fresh: an int
        case = make_case(seed, ql, sl, num_heads=group * kv, num_kv_heads=kv, head_dim=d,
                         block_size=bs, dtype=dtype, pad_tokens=3)
        try:
            out = gpu.PallasGpuAttention(cfg).paged_attention(case.q, case.k_cache, case.v_cache, case.md,
                                                              scale=d**-0.5, **kw)
            k_clean, v_clean = case.clean()
            with jax.default_matmul_precision("highest"):
                ref = REFERENCE.paged_attention(case.q, k_clean, v_clean, case.md, scale=d**-0.5, **kw)
            out32 = np.asarray(out.astype(jnp.float32))
            err = relative_error(out32, ref.astype(jnp.float32))
            ok = (not np.isnan(out32).any()) and (out32[sum(ql):] == 0).all()
            ok = ok and err < (1e-2 if dtype == jnp.bfloat16 else 1e-4)
        except Exception as e:
            err, ok = float("nan"), False
            RESULTS["errors"].append(f"correctness {i}: {traceback.format_exc()}"[-3000:])
            log(f"  correctness case {i} raised {str(e).splitlines()[0][:300]}")
        desc = f"group={group} kv={kv} d={d} bs={bs} {jnp.dtype(dtype).name} {kw} {cfg}"
        RESULTS["correctness"].append({"case": desc, "seed": seed, "rel_err": err, "ok": bool(ok)})
        log(f"  [{'ok' if ok else 'FAIL'}] {desc}: rel err {err:.2e} (seed {seed})")


def pool_copy_check() -> None:
    case = make_case(0, [1] * 64, [2048] * 64, num_heads=32, num_kv_heads=8, head_dim=128,
                     block_size=16, dtype=jnp.bfloat16, poison=False, spare_blocks=64)

    def step(k_cache, v_cache, q, k, v, md):
        k_cache, v_cache = write_kv(k_cache, v_cache, k, v, md.slot_mapping)
        out = gpu.PallasGpuAttention().paged_attention(q, k_cache, v_cache, md, scale=0.088)
        return out, k_cache, v_cache

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        case.k_cache, case.v_cache, case.q, case.k_new, case.v_new, case.md).compile()
    text, memory = compiled.as_text(), compiled.memory_analysis()
    assert text is not None and memory is not None  # a GPU executable has both
    copies = pool_copies(text, case.k_cache.size)
    temp = memory.temp_size_in_bytes
    RESULTS["pool_copy_check"] = {"copies": copies, "temp_bytes": temp, "pool_bytes": case.k_cache.nbytes}
    log(f"pool copy check: {len(copies)} pool-sized copies, temp {temp / 1e6:.1f} MB "
        f"(pool {case.k_cache.nbytes / 1e6:.0f} MB)")


def configs_for(kind: str) -> list[gpu.GpuKernelConfig | None]:
    """The default (None) first, then alternatives still worth a look after the first runs'
    sweeps (RESULTS.md): decode is insensitive to the launch shape, prefill is not."""
    d, p = gpu.DECODE_CONFIG, gpu.PREFILL_CONFIG
    r = dataclasses.replace
    if kind == "decode":
        return [None, r(d, num_stages=2)]
    if kind == "decode_b1":
        return [None, r(d, kv_splits=16), r(d, kv_splits=64)]
    if kind == "prefill":
        return [None, r(p, num_warps=16), r(p, rows=128, num_warps=4)]
    return [None, r(p, rows=128, num_warps=4)]


def run_case(name, kind, q_lens, seq_lens, ceil, smoke, heads=32, kv_heads=8, head_dim=128,
             block_size=16) -> dict:
    copy_bw, matmul = ceil
    dtype = jnp.bfloat16
    kv_bytes = sum(seq_lens) * kv_heads * head_dim * 2 * jnp.dtype(dtype).itemsize
    causal_pairs = sum(sum(s - q + i + 1 for i in range(q)) for q, s in zip(q_lens, seq_lens, strict=True))
    flops = 4 * heads * head_dim * causal_pairs
    # Enough disjoint input sets to defeat L2 and to keep one dispatch's work well above the
    # host's dispatch time for the small cases.
    num_sets = max(1, min(32, math.ceil(SET_BYTES / kv_bytes)))
    log(f"\n== {name}: {len(q_lens)} seqs, {sum(q_lens)} new tokens, KV {kv_bytes / 1e6:.1f} MB, "
        f"{flops / 1e9:.1f} GFLOP, {num_sets} input sets")
    shared, sets = paged_step(7, q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, num_sets)
    scale = head_dim**-0.5
    row = {"kind": kind, "kv_bytes": kv_bytes, "flops": flops}
    row["rel_err_vs_reference"] = check_against_reference(name, shared, sets, scale)
    configs = configs_for(kind)[: 2 if smoke else None]
    row.update(time_ours(name, shared, sets, configs, scale))
    for label, timer in (("reference_s", lambda: time_reference(shared, sets, scale)),
                         ("peer_s", lambda: time_peer(shared, sets) if kind.startswith("decode") else None)):
        try:
            t = timer()
        except Exception as e:
            RESULTS["errors"].append(f"{name} {label}: {traceback.format_exc()}"[-3000:])
            log(f"  {name} {label}: FAILED {str(e).splitlines()[0][:300]}")
            t = None
        if t is not None:
            row[label] = t
            log(f"  {name} {label[:-2]}: {t * 1e6:.1f} us")
    if kind == "prefill":
        row["peer_cudnn_contiguous_s"] = time_cudnn(q_lens, heads, kv_heads, head_dim, scale)
    for key in [k for k in row if k.endswith("_s") and row[k]]:
        t = row[key]
        row[key.replace("_s", "_bw_frac")] = kv_bytes / t / copy_bw
        row[key.replace("_s", "_flop_frac")] = flops / t / matmul
    RESULTS["cases"][name] = row
    return row


def time_cudnn(q_lens, heads, kv_heads, head_dim, scale) -> float | None:
    """cuDNN flash attention on contiguous (unpaged) K/V: a prefill yardstick, not paged."""
    batch, length = len(q_lens), q_lens[0]
    key = jax.random.key(3)
    q = jax.random.normal(key, (batch, length, heads, head_dim), jnp.bfloat16)
    k = jax.random.normal(key, (batch, length, kv_heads, head_dim), jnp.bfloat16)
    try:
        t = measure(lambda _, x: jax.nn.dot_product_attention(
            x[0], x[1], x[1], scale=scale, is_causal=True, implementation="cudnn"), None, [(q, k)])
    except Exception as e:
        log(f"  cudnn: FAILED {str(e).splitlines()[0][:300]}")
        return None
    log(f"  cudnn (contiguous K/V): {t * 1e6:.1f} us")
    return t


def mixed_vs_parts() -> None:
    cases = RESULTS["cases"]
    names = ("mixed_512+63x2048", "mixed_part_prefill_512", "mixed_part_decode_63x2048")
    if all(cases.get(n, {}).get("ours_s") for n in names):
        mixed, parts = cases[names[0]]["ours_s"], cases[names[1]]["ours_s"] + cases[names[2]]["ours_s"]
        RESULTS["mixed_over_parts"] = mixed / parts
        log(f"mixed step {mixed * 1e6:.1f} us vs sum of parts {parts * 1e6:.1f} us: {mixed / parts:.2f}x")


def summary(ceil) -> None:
    copy_bw, matmul = ceil
    log("\n| case | ours us | ours frac | peer us | ours/peer speedup | reference us | err |")
    log("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in RESULTS["cases"].items():
        frac_key = "ours_flop_frac" if row["kind"] == "prefill" else "ours_bw_frac"
        peer = row.get("peer_s") or row.get("peer_cudnn_contiguous_s")
        speed = f"{peer / row['ours_s']:.2f}x" if peer and row.get("ours_s") else "-"
        log(f"| {name} | {row.get('ours_s', float('nan')) * 1e6:.1f} | {row.get(frac_key, float('nan')):.0%} "
            f"| {peer * 1e6 if peer else float('nan'):.1f} | {speed} "
            f"| {row.get('reference_s', float('nan')) * 1e6:.1f} "
            f"| {row['rel_err_vs_reference']:.1e} |")
    log(f"ceilings: copy {copy_bw / 1e12:.2f} TB/s, matmul {matmul / 1e12:.0f} TFLOP/s; "
        f"correctness {sum(c['ok'] for c in RESULTS['correctness'])}/{len(RESULTS['correctness'])} ok; "
        f"{len(RESULTS['errors'])} errors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, interpret mode, on CPU")
    parser.add_argument("--skip-correctness", action="store_true")
    args = parser.parse_args()
    device = jax.devices()[0]
    RESULTS.update(device=device.device_kind, jax=jax.__version__, commit=args.commit,
                   date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    log(f"device {device.device_kind}, jax {jax.__version__}, commit {args.commit}, {RESULTS['date']}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # no nvidia-smi: no clock report
        log(subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw",
                            "--format=csv"], capture_output=True, text=True, timeout=20).stdout)
    if not args.skip_correctness:
        correctness_pass()
        pool_copy_check()
    ceil = ceilings(args.smoke)
    RESULTS["copy_bytes_per_s"], RESULTS["matmul_flop_per_s"] = ceil
    if args.smoke:
        cases = [("decode", "decode", [1] * 4, [100] * 4), ("prefill", "prefill", [40] * 2, [40] * 2),
                 ("mixed", "mixed", [20] + [1] * 3, [30] + [60] * 3)]
        shape = dict(heads=8, kv_heads=2, head_dim=64)
    else:
        cases = [
            ("decode_b64_ctx2048", "decode", [1] * 64, [2048] * 64),
            ("decode_b1_ctx8k", "decode_b1", [1], [8192]),
            ("decode_b1_ctx32k", "decode_b1", [1], [32768]),
            ("decode_b256_ctx1k", "decode", [1] * 256, [1024] * 256),
            ("prefill_8x2048", "prefill", [2048] * 8, [2048] * 8),
            ("mixed_512+63x2048", "mixed", [512] + [1] * 63, [1024] + [2048] * 63),
            ("mixed_part_prefill_512", "mixed", [512], [1024]),
            ("mixed_part_decode_63x2048", "decode", [1] * 63, [2048] * 63),
        ]
        shape = {}
    for name, kind, q_lens, seq_lens in cases:
        try:
            run_case(name, kind, q_lens, seq_lens, ceil, args.smoke, **shape)
        except Exception as e:
            RESULTS["errors"].append(f"{name}: {traceback.format_exc()}"[-3000:])
            log(f"{name}: FAILED {str(e).splitlines()[0][:300]}")
        save(args.out)
    mixed_vs_parts()
    save(args.out)
    summary(ceil)


def save(out_dir: str) -> None:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
