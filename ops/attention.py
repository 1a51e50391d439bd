"""The attention backends by name, and which one a platform runs.

Each backend is one ``ops.attention_backend.AttentionBackend`` (build the step's plan once,
then write and attend per layer); ``BACKENDS`` is the registry the engine's
``attention_backend`` setting and ``TESSERA_ATTENTION_BACKEND`` choose from. Adding a backend
is one class and one entry here (docs/kernels.md).
"""

from __future__ import annotations

import os
from typing import Any

import jax

from ops.attention_backend import AttentionBackend
from ops.cpu_attention import CpuAttention
from ops.head_sharded_attention import HeadShardedAttention, HeadSharding
from ops.pallas_gpu_attention import PallasGpuAttention
from ops.pallas_tpu_attention import PallasTpuAttention
from ops.reference_attention import ReferenceAttention

BACKENDS: dict[str, type[AttentionBackend[Any]]] = {
    "reference": ReferenceAttention,
    "cpu": CpuAttention,
    "pallas_gpu": PallasGpuAttention,
    "pallas_tpu": PallasTpuAttention,
}
# jax.default_backend() -> the backend it runs unless told otherwise; other platforms: reference.
PLATFORM_BACKENDS = {"gpu": "pallas_gpu", "tpu": "pallas_tpu", "cpu": "cpu"}


def default_backend() -> str:
    """The attention backend for this platform, overridable with TESSERA_ATTENTION_BACKEND."""
    forced = os.environ.get("TESSERA_ATTENTION_BACKEND")
    if forced:
        return validate_backend(forced)
    return PLATFORM_BACKENDS.get(jax.default_backend(), "reference")


def validate_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def get_backend(name: str, heads: HeadSharding | None = None) -> AttentionBackend[Any]:
    """Backend ``name`` with its default options, run per head shard when ``heads`` splits them."""
    backend = BACKENDS[validate_backend(name)]()
    return backend if heads is None else HeadShardedAttention(backend, heads)
