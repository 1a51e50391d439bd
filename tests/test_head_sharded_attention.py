"""Attention per head shard (``shard_map`` over the heads) equals the reference, on 8 CPU devices.

Each case pads a random ragged step (poisoned: unread pool blocks and padded queries are NaN,
see ops/pallas_cases.py) to the head layout of ``tp`` shards (models/head_layout.py), writes
this step's K/V and attends per head shard with the CPU backend, and compares the
real heads with the unsharded XLA reference on the unpadded inputs. GQA groups that divide
(8 q / 2 kv at tp=1, 2), that need kv heads copied (tp=4, 8) and that need zero heads (9 q /
3 kv, SmolLM2-135M's) are covered. The 8 devices need XLA flags set before JAX starts, so the
cases run in a subprocess (``python -m tests.test_head_sharded_attention OUT``).

The Pallas GPU/TPU kernels in interpret mode under this ``shard_map`` deadlocked on an idle 2-core
machine (2026-11-30: the sharded step never completed, every thread asleep) although they passed
under load; until that is understood they are not run here (issue 13 stays open for it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# (backend, query heads, kv heads, tp)
CASES = [
    ("cpu", 8, 2, 1), ("cpu", 8, 2, 2), ("cpu", 8, 2, 4), ("cpu", 8, 2, 8),
    ("cpu", 9, 3, 2), ("cpu", 9, 3, 4), ("cpu", 9, 3, 8),
]
Q_LENS = [1, 7, 0, 1, 5]
SEQ_LENS = [1, 7, 0, 33, 20]


def _pad(x: Any, source: tuple[int, ...]) -> Any:
    """Heads (axis -2) gathered by ``source``; -1 selects a zero head."""
    import jax.numpy as jnp

    idx = np.asarray(source)
    extended = jnp.concatenate([x, jnp.zeros_like(x[..., :1, :])], axis=-2)
    return jnp.take(extended, np.where(idx >= 0, idx, x.shape[-2]), axis=-2)


def run_case(backend: str, heads: int, kv_heads: int, tp: int, seed: int) -> dict[str, Any]:
    import jax
    from jax.sharding import AxisType

    from models.head_layout import plan_head_layout
    from ops.attention import get_backend
    from ops.attention_backend import AttentionShape, AttentionSpec
    from ops.head_sharded_attention import HeadSharding
    from ops.pallas_cases import make_case, relative_error
    from ops.reference_attention import ReferenceAttention

    case = make_case(seed, Q_LENS, SEQ_LENS, num_heads=heads, num_kv_heads=kv_heads, head_dim=64,
                     block_size=16, pad_tokens=2)
    layout = plan_head_layout(heads, kv_heads, tp)
    q, kn, vn = _pad(case.q, layout.q_source), _pad(case.k_new, layout.kv_source), _pad(case.v_new, layout.kv_source)
    # the pool before the step: this step's slots hold NaN, so only the write can fill them
    slots = np.asarray(case.md.slot_mapping)
    live = slots[slots >= 0]
    k_before = case.k_cache.reshape(-1, kv_heads, 64).at[live].set(np.nan).reshape(case.k_cache.shape)
    v_before = case.v_cache.reshape(-1, kv_heads, 64).at[live].set(np.nan).reshape(case.v_cache.shape)
    kc, vc = _pad(k_before, layout.kv_source), _pad(v_before, layout.kv_source)
    mesh = jax.make_mesh((tp,), ("tp",), devices=jax.devices()[:tp], axis_types=(AxisType.Auto,))
    attention = get_backend(backend, HeadSharding(mesh, "tp"))

    def step(q, k, v, k_cache, v_cache, md):
        plan = attention.prepare(md, AttentionShape.of(q.shape, k_cache.shape))
        return attention.write_and_attend(q, k, v, k_cache, v_cache, plan, AttentionSpec(scale=0.125))

    out, k_after, v_after = jax.jit(step)(q, kn, vn, kc, vc, case.md)
    k_clean, v_clean = case.clean()
    ref = ReferenceAttention().paged_attention(case.q, k_clean, v_clean, case.md, scale=0.125)
    real = np.asarray(out)[:, np.asarray(layout.q_source) >= 0]
    num_real = int(case.md.query_start_loc[-1])
    return {
        "error": relative_error(real, ref), "nan": bool(np.isnan(real).any()),
        "padding_zero": bool((real[num_real:] == 0).all()),
        "out_heads_axis": _axis_of(out, 1), "pool_heads_axis": _axis_of(k_after, 2),
        "pool_written": bool(np.array_equal(np.asarray(k_after), np.asarray(_pad(case.k_cache, layout.kv_source)),
                                            equal_nan=True)
                             and np.array_equal(np.asarray(v_after), np.asarray(_pad(case.v_cache, layout.kv_source)),
                                                equal_nan=True)),
        "seed": seed,
    }


def _axis_of(array: Any, dim: int) -> str | None:
    spec = tuple(array.sharding.spec)
    return spec[dim] if dim < len(spec) else None


def worker(out_path: str) -> None:
    import jax

    assert jax.device_count() == 8, jax.devices()
    seed = int(np.random.SeedSequence().entropy % (2**31))
    results = {"/".join(map(str, case)): run_case(*case, seed=seed) for case in CASES}
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("head_sharded") / "results.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", "tests.test_head_sharded_attention", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["/".join(map(str, c)) for c in CASES])
def test_kernel_per_head_shard_equals_reference(results: dict[str, Any], case: str) -> None:
    got = results[case]
    tp = int(case.split("/")[-1])
    assert not got["nan"], got
    assert got["error"] < 1e-5, got
    assert got["padding_zero"], got
    assert got["pool_written"], got  # every shard wrote its own heads' new K/V, nothing else changed
    if tp > 1:  # output and pools stay split by heads: nothing was gathered
        assert got["out_heads_axis"] == "tp" and got["pool_heads_axis"] == "tp", got


if __name__ == "__main__":
    worker(sys.argv[1])
