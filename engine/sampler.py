"""On-device sampling for a batch whose rows each have their own settings.

Order of operations: logit bias (which also carries min_tokens' eos suppression) and
penalties, then the structured-output token mask (disallowed tokens get -inf, so greedy and
sampled rows alike pick an allowed token), then temperature, then top-k / top-p / min-p, then a
Gumbel-max draw with a key derived from (seed, tokens generated so far), so a seeded request
samples the same tokens whatever else shares its batch. Logprobs are those of the model's raw
distribution.

Static switches (``SamplerMode``) pick a program variant; everything else is per row. A
``gated`` mode keeps every feature in one program and skips, with a conditional, the work no
row of the step asks for (sampling, filters, bias, penalties, logprobs, prompt logprobs): the
right trade where a conditional is free (CPU, TPU; engine/bucket_plan.py says why not on GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from engine.structured_output.bitmask import ALLOW_ALL, apply_bitmask


@dataclasses.dataclass(frozen=True)
class SamplerMode:
    """Static switches: each combination is one compiled variant of the step."""

    all_greedy: bool
    use_filters: bool
    num_logprobs: int  # 0: none; else top-k width returned per row
    gated: bool = False  # skip unrequested work at run time (one program for every request)

    @property
    def name(self) -> str:
        if self.gated:
            return "gated"
        return "greedy" if self.all_greedy and not self.num_logprobs else "full"


Rows = jax.Array | np.ndarray  # one entry per sampled row


@struct.dataclass
class SamplingTensors:
    """Per-row sampler settings: numpy arrays while the host fills them (engine/input_builder.py),
    device arrays inside the step."""

    temperature: Rows  # [S] f32, 0 = greedy
    top_p: Rows  # [S] f32
    top_k: Rows  # [S] i32, 0 = off
    min_p: Rows  # [S] f32
    presence_penalty: Rows  # [S] f32
    frequency_penalty: Rows  # [S] f32
    repetition_penalty: Rows  # [S] f32
    seeds: Rows  # [S] u32
    counters: Rows  # [S] i32: tokens generated so far
    bias_ids: Rows  # [S, NB] i32, -1 = unused
    bias_values: Rows  # [S, NB] f32
    history: Rows  # [S, H] i32 prompt + output ids for penalties, -1 = unused
    history_is_output: Rows  # [S, H] bool
    wants_logprobs: Any = None  # [S] bool, set by the bucket plan: a gated mode computes logprobs only if any


def _gate(gated: bool, needed: jax.Array, compute: Callable[[], Any], skip: Callable[[], Any]) -> Any:
    """``compute()``, or under a gated mode only when ``needed`` (a scalar bool) holds."""
    return jax.lax.cond(needed, compute, skip) if gated else compute()


def apply_bias_and_penalties(logits: jax.Array, t: SamplingTensors, gated: bool = False) -> jax.Array:
    if t.bias_ids.shape[1]:
        logits = _gate(gated, jnp.any(t.bias_ids >= 0), lambda: _add_bias(logits, t), lambda: logits)
    if t.history.shape[1]:
        logits = _gate(gated, jnp.any(t.history >= 0), lambda: _penalize(logits, t), lambda: logits)
    return logits


def apply_token_mask(logits: jax.Array, mask: jax.Array | None, gated: bool = False) -> jax.Array:
    """Structured outputs: ``mask`` [S, words] packed int32, a clear bit disallows its token. A row
    of -1 words allows everything; a gated mode skips the work when every row does."""
    if mask is None or not mask.shape[1]:
        return logits
    return _gate(gated, jnp.any(mask != ALLOW_ALL), lambda: apply_bitmask(logits, mask), lambda: logits)


def _add_bias(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    rows = jnp.arange(logits.shape[0])[:, None]
    valid = t.bias_ids >= 0
    ids = jnp.where(valid, t.bias_ids, 0)
    return logits.at[rows, ids].add(jnp.where(valid, t.bias_values, 0.0))


def _penalize(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    """Repetition, frequency and presence penalties over each row's history (-1: unused)."""
    rows = jnp.arange(logits.shape[0])[:, None]
    valid = t.history >= 0
    ids = jnp.where(valid, t.history, 0)
    output_counts = jnp.zeros_like(logits).at[rows, ids].add((valid & t.history_is_output).astype(logits.dtype))
    seen = jnp.zeros(logits.shape, jnp.bool_).at[rows, ids].max(valid)
    rep = t.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - t.frequency_penalty[:, None] * output_counts
    return logits - t.presence_penalty[:, None] * (output_counts > 0)


def apply_filters(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    """Masks tokens outside top-k, outside the top-p nucleus and below min-p (logits already tempered).

    No sort: each threshold is found by bisection over the float32 bit patterns (32 passes of a
    compare-and-sum over the row, exact), which compiles in a fraction of a sort's time and runs
    several times faster on CPU. Ties at a threshold are all kept.
    """
    keys = _ordered_keys(logits)
    lowest, highest = keys.min(axis=-1), keys.max(axis=-1)
    vocab = logits.shape[-1]
    k = jnp.where(t.top_k > 0, jnp.minimum(t.top_k, vocab), vocab)
    kth = _largest_key(lowest, highest, lambda key: jnp.sum(keys >= key[:, None], axis=-1) >= k)
    probs = jax.nn.softmax(logits, axis=-1)
    nucleus = _smallest_key(lowest, highest,
                            lambda key: jnp.sum(jnp.where(keys > key[:, None], probs, 0.0), axis=-1) < t.top_p)
    pth = jnp.where(t.top_p < 1.0, nucleus, lowest)
    keep = keys >= jnp.maximum(kth, pth)[:, None]
    peak = jnp.max(logits, axis=-1, keepdims=True)
    min_p_threshold = peak + jnp.log(jnp.maximum(t.min_p[:, None], 1e-30))
    keep &= (t.min_p[:, None] <= 0) | (logits >= min_p_threshold)
    return jnp.where(keep, logits, -jnp.inf)


def _ordered_keys(x: jax.Array) -> jax.Array:
    """int32 keys in the order of the float32 values (-inf lowest)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """floor((lo + hi) / 2) without int32 overflow."""
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def _smallest_key(lo: jax.Array, hi: jax.Array, holds: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Per row, the smallest key in [lo, hi] where ``holds`` (false below it, true from it on; true at hi)."""
    def step(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds
        mid = _midpoint(lo, hi)
        ok = holds(mid)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return jax.lax.fori_loop(0, 32, step, (lo, hi))[1]


def _largest_key(lo: jax.Array, hi: jax.Array, holds: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Per row, the largest key in [lo, hi] where ``holds`` (true up to it, false above; true at lo)."""
    def step(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds
        mid = _midpoint(lo, hi) + ((lo ^ hi) & 1)  # rounds up, so lo = mid always moves
        ok = holds(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    return jax.lax.fori_loop(0, 32, step, (lo, hi))[0]


def uses_filters(t: SamplingTensors) -> Rows:
    """[S] bool: the row asks for top-k, top-p or min-p."""
    return (t.top_k > 0) | (t.top_p < 1.0) | (t.min_p > 0)


def _draw(logits: jax.Array, t: SamplingTensors, mode: SamplerMode) -> jax.Array:
    """Gumbel-max draw at each row's temperature, after its own filters (rows without any keep
    their logits untouched)."""
    temp = jnp.where(t.temperature > 0, t.temperature, 1.0)[:, None]
    tempered = logits / temp
    if mode.use_filters:
        filtered = uses_filters(t)
        tempered = _gate(mode.gated, jnp.any(filtered),
                         lambda: jnp.where(filtered[:, None], apply_filters(tempered, t), tempered), lambda: tempered)

    def gumbel(seed: Rows, counter: Rows) -> jax.Array:
        key = jax.random.fold_in(jax.random.key(seed), counter)
        return jax.random.gumbel(key, (logits.shape[-1],), jnp.float32)

    noise = jax.vmap(gumbel)(t.seeds, t.counters)
    return jnp.argmax(tempered + noise, axis=-1).astype(jnp.int32)


def sample(
    logits: jax.Array, t: SamplingTensors, mode: SamplerMode, token_mask: jax.Array | None = None
) -> tuple[jax.Array, tuple[jax.Array, ...] | None]:
    """Returns tokens [S] and, when asked, (chosen logprob [S], its rank [S], top-k logprobs, top-k ids).
    ``token_mask``: the step's packed structured-output mask (``apply_token_mask``)."""
    raw = logits
    logits = apply_token_mask(apply_bias_and_penalties(logits, t, mode.gated), token_mask, mode.gated)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tokens = greedy_tokens
    if not mode.all_greedy:
        sampled = t.temperature > 0
        tokens = _gate(mode.gated, jnp.any(sampled),
                       lambda: jnp.where(sampled, _draw(logits, t, mode), greedy_tokens), lambda: greedy_tokens)
    if not mode.num_logprobs:
        return tokens, None
    wanted = jnp.any(t.wants_logprobs) if t.wants_logprobs is not None else jnp.bool_(True)
    return tokens, gated_token_logprobs(mode.gated, wanted, lambda: raw, tokens, mode.num_logprobs)


def gated_token_logprobs(gated: bool, wanted: jax.Array, logits: Callable[[], jax.Array], targets: jax.Array,
                         k: int) -> tuple[jax.Array, ...]:
    """``token_logprobs`` of ``logits()`` (computed inside, so a gated mode skips that work too)."""
    rows = targets.shape[0]

    def skip() -> tuple[jax.Array, ...]:
        return (jnp.zeros(rows, jnp.float32), jnp.zeros(rows, jnp.int32), jnp.zeros((rows, k), jnp.float32),
                jnp.zeros((rows, k), jnp.int32))

    def compute() -> tuple[jax.Array, ...]:
        lp, rank, values, ids = token_logprobs(logits(), jnp.maximum(targets, 0), k)
        return lp.astype(jnp.float32), rank, values.astype(jnp.float32), ids

    return tuple(_gate(gated, wanted, compute, skip))


def token_logprobs(
    logits: jax.Array, targets: jax.Array, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Logprob and rank of given target ids (prompt logprobs), plus the top-k per row."""
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    target_lp = jnp.take_along_axis(logprobs, targets[:, None], axis=-1)
    rank = jnp.sum(logprobs > target_lp, axis=-1).astype(jnp.int32) + 1
    top_values, top_ids = jax.lax.top_k(logprobs, k)
    return target_lp[:, 0], rank, top_values, top_ids.astype(jnp.int32)


def pow2_at_least(n: int, floor: int = 1) -> int:
    return max(floor, 1 << max(0, int(np.ceil(np.log2(max(n, 1))))))
