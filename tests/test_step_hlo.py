"""The compiled step updates the donated KV pools in place: no instruction copies a whole pool."""

from __future__ import annotations

import re

import jax
import numpy as np

from engine.step_input import padding_input
from tests.tiny_models import tiny_engine


def test_decode_and_prefill_steps_copy_no_pool() -> None:
    engine = tiny_engine(num_gpu_blocks_override=96)
    runner = engine.runner
    pool = runner.kv_caches[0][0]
    pool_type = f"{pool.dtype.name[0]}{pool.dtype.itemsize * 8}[{','.join(map(str, pool.shape))}]"
    sampled = jax.ShapeDtypeStruct((runner.token_buffer_rows,), np.int32)
    for tokens, seqs, width in ((4, 4, 4), (64, 4, 8)):
        inputs = padding_input(1, tokens, seqs, width)
        hlo = runner._step.lower(runner.params, runner.kv_caches, inputs, sampled).compile().as_text()
        assert pool_type in hlo, "the pools are not where this test looks for them"
        copies = [line for line in hlo.splitlines()
                  if re.search(rf"=\s*{re.escape(pool_type)}\S*\s+copy(-start)?\(", line)]
        assert not copies, f"pool-sized copies in the step: {copies[:3]}"
