"""Counts XLA compilations (each lowering of a new program) and turns on the persistent cache."""

from __future__ import annotations

import threading
from pathlib import Path

import jax

_LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_lock = threading.Lock()
_count = 0
_installed = False


def _on_event(event: str, duration: float, **_: object) -> None:
    global _count
    if event == _LOWERING_EVENT:
        with _lock:
            _count += 1


def install_counter() -> None:
    global _installed
    if not _installed:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _installed = True


def compilation_count() -> int:
    return _count


def enable_persistent_cache(directory: str | None) -> None:
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
