"""The step program table: every planned program compiled ahead of time, and the guard.

``precompile`` compiles each program of the bucket plan from its key alone (the runner lowers
the jitted step on padding inputs of the key's shapes: ``jit(...).lower(...).compile()``, no
dummy traffic), a few at a time in a thread pool (lowering holds the GIL; XLA's compile releases
it), and marks the table ready. The runner then launches ``programs.run(key, ...)``, which calls
that key's compiled executable: jit's own trace cache is not involved, and the caches' donation
is part of each executable.

The guard: a key missing from the table after ready is a bug in the plan. It is compiled (the
step still runs), logged as a warning with its shape, and counted in ``late_compilations``
(EngineStats, /metrics); tests fail on it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

CompileKey = Callable[[Any], Any]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class StepPrograms:
    """Compiled executables by key. ``compile_key(key)`` returns the compiled program of a key
    (whose shapes and static switches the key fixes); ``describe(key)``: a readable shape for logs."""

    def __init__(self, name: str, compile_key: CompileKey, describe: Callable[[Any], str] = str) -> None:
        self.name = name
        self._compile_key = compile_key
        self._describe = describe
        self._programs: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self.ready = False
        self.planned = 0
        self.compiled = 0  # planned programs done so far (for /health while warming up)
        self.late_compilations = 0

    def precompile(self, keys: list[Any], workers: int | None = None, show_progress: bool = True,
                   on_progress: Callable[[], None] | None = None) -> float:
        """Compiles every key not in the table yet; returns the seconds it took. Marks ready.
        ``on_progress`` runs in the calling thread after each program is in the table."""
        todo = [k for k in keys if k not in self._programs]
        self.planned, self.compiled = len(keys), len(keys) - len(todo)
        started = time.perf_counter()
        workers = min(workers or default_workers(), max(1, len(todo)))
        bar = tqdm(total=len(todo), desc=f"Compiling {self.name} programs", unit="program", file=sys.stderr,
                   disable=not show_progress or not sys.stderr.isatty(), dynamic_ncols=True)
        with ThreadPoolExecutor(workers, thread_name_prefix="tessera-compile") as pool:
            futures = {pool.submit(self._compile_key, k): k for k in todo}
            for future in as_completed(futures):
                key = futures[future]
                with self._lock:
                    self._programs[key] = future.result()
                    self.compiled += 1
                bar.update(1)
                if on_progress is not None:
                    on_progress()
                logger.debug("compiled %s", self._describe(key))
        bar.close()
        self.ready = True
        elapsed = time.perf_counter() - started
        logger.info("%s: %d programs ready (%d compiled or loaded now, %d workers) in %.1fs", self.name,
                    self.planned, len(todo), workers, elapsed)
        return elapsed

    def __contains__(self, key: Hashable) -> bool:
        return key in self._programs

    def __len__(self) -> int:
        return len(self._programs)

    def run(self, key: Hashable, *args: Any) -> Any:
        """Calls ``key``'s program on ``args`` (compiling it first if the plan missed it)."""
        program = self._programs.get(key)
        if program is None:
            program = self._compile_late(key)
        return program(*args)

    def _compile_late(self, key: Hashable) -> Any:
        started = time.perf_counter()
        program = self._compile_key(key)
        if self.ready:
            self.late_compilations += 1
            logger.warning("%s program compiled after ready (a shape the bucket plan missed): %s, %.2fs",
                           self.name, self._describe(key), time.perf_counter() - started)
        with self._lock:
            self._programs[key] = program
        return program
