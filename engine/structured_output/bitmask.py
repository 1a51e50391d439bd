"""Packed token bitmasks: one int32 word per 32 tokens, bit ``t % 32`` of word ``t // 32`` set = allowed.

This is the form the grammar library writes (llguidance's layout) and the form the sampler gets
as a step input: 1/32 of a byte-per-token mask, so a batch of 64 rows over a 128k vocabulary is
1 MiB on the host-to-device path. A row of all ones (-1 words) allows everything, which is how a
row without a constraint rides along in a masked step. ``apply_bitmask_np`` is the plain
reference; ``apply_bitmask`` is the jittable form the sampler uses (unpack with shifts, then
``jnp.where``), so disallowed tokens get ``-inf`` before greedy argmax or sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32
ALLOW_ALL = -1  # an int32 word with every bit set


def bitmask_words(vocab_size: int) -> int:
    """Words per row for a vocabulary of ``vocab_size`` tokens."""
    return (vocab_size + WORD_BITS - 1) // WORD_BITS


def allocate_bitmask(rows: int, vocab_size: int) -> np.ndarray:
    """A host buffer [rows, words] int32 with every token allowed."""
    return np.full((rows, bitmask_words(vocab_size)), ALLOW_ALL, dtype=np.int32)


def unpack_bitmask(mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """[rows, words] int32 -> [rows, vocab_size] bool (True = allowed; tokens past the mask: False)."""
    mask = np.ascontiguousarray(np.atleast_2d(mask), dtype=np.int32)
    bits = np.unpackbits(mask.view(np.uint8), axis=-1, bitorder="little").astype(bool)
    if bits.shape[-1] < vocab_size:
        bits = np.pad(bits, ((0, 0), (0, vocab_size - bits.shape[-1])))
    return bits[:, :vocab_size]


def pack_bitmask(allowed: np.ndarray) -> np.ndarray:
    """[rows, vocab] bool -> [rows, words] int32; the inverse of ``unpack_bitmask``."""
    allowed = np.atleast_2d(np.asarray(allowed, dtype=bool))
    rows, vocab = allowed.shape
    padded = np.zeros((rows, bitmask_words(vocab) * WORD_BITS), dtype=bool)
    padded[:, :vocab] = allowed
    return np.packbits(padded, axis=-1, bitorder="little").view(np.int32)


def apply_bitmask_np(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference: a copy of ``logits`` [rows, vocab] with disallowed tokens at ``-inf``."""
    allowed = unpack_bitmask(mask, logits.shape[-1])
    return np.where(allowed, logits, -np.inf).astype(logits.dtype)


def apply_bitmask(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Jittable: ``logits`` [rows, vocab] float, ``mask`` [rows, words] int32 -> masked logits.

    Tokens past ``32 * words`` (a model vocabulary wider than the mask) are disallowed.
    """
    vocab = logits.shape[-1]
    shifts = jnp.arange(WORD_BITS, dtype=jnp.int32)
    bits = jnp.right_shift(mask[:, :, None], shifts[None, None, :]) & 1  # [rows, words, 32]
    allowed = bits.reshape(mask.shape[0], -1).astype(jnp.bool_)
    width = allowed.shape[-1]
    if width < vocab:
        allowed = jnp.pad(allowed, ((0, 0), (0, vocab - width)))
    allowed = allowed[:, :vocab]
    return jnp.where(allowed, logits, jnp.asarray(-jnp.inf, logits.dtype))
