"""Counts what XLA compiles in this process and sets up the persistent compilation cache.

Three counters, from JAX's monitoring events:
  - ``lowerings``: programs traced and lowered (every new program, cache hit or not);
  - ``cache_hits``: programs loaded from the persistent cache instead of compiled;
  - ``compilations``: programs XLA actually compiled (backend compiles minus cache hits).

The persistent cache is keyed by JAX itself on the serialized program (every shape, dtype,
sharding and the model's computation), the compile options, the XLA flags, the jax/jaxlib
versions and the device kind, so one directory can hold entries of many models, configs and
machines without one ever being reused for another (docs/compilation.md).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

_LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_DIR_ENV = "TESSERA_COMPILATION_CACHE"
_lock = threading.Lock()
_counts = {"lowerings": 0, "backend": 0, "cache_hits": 0}
_installed = False


def _bump(name: str) -> None:
    with _lock:
        _counts[name] += 1


def _on_duration(event: str, duration_secs: float, **_: str | int) -> None:
    if event == _LOWERING_EVENT:
        _bump("lowerings")
    elif event == _BACKEND_COMPILE_EVENT:
        _bump("backend")


def _on_event(event: str, **_: str | int) -> None:
    if event == _CACHE_HIT_EVENT:
        _bump("cache_hits")


def install_counter() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)


def compilation_count() -> int:
    """Programs lowered by this process (a new program, whether XLA compiles it or loads it)."""
    return _counts["lowerings"]


def xla_compile_count() -> int:
    """Programs XLA compiled from scratch (not loaded from the persistent cache)."""
    return _counts["backend"] - _counts["cache_hits"]


def cache_hit_count() -> int:
    return _counts["cache_hits"]


def _reset_cache() -> None:
    from jax._src import compilation_cache  # no public way to reopen the cache at a new directory

    compilation_cache.reset_cache()


def default_cache_dir() -> str | None:
    """``$TESSERA_COMPILATION_CACHE`` (empty: no cache), else ``~/.cache/tessera/jax``."""
    value = os.environ.get(CACHE_DIR_ENV)
    if value is not None:
        return value or None
    return str(Path.home() / ".cache" / "tessera" / "jax")


def enable_persistent_cache(directory: str | None) -> None:
    """Points JAX's persistent cache at ``directory`` (None or "": leave it off) and caches every
    program, however quick to compile, so a second start compiles nothing."""
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        _reset_cache()  # JAX opens its cache once per process; a new directory needs a reopen
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logger.info("persistent compilation cache: %s", directory)
