"""The step program table: every planned program compiled ahead of time, and the guard.

``precompile`` lowers and compiles each program of the bucket plan on abstract-shaped padding
inputs (``jit(...).lower(...).compile()``, no dummy traffic), a few at a time in a thread pool
(lowering holds the GIL; XLA's compile releases it), and marks the table ready. The runner then
launches ``programs(...)``, which calls the compiled executable for the inputs' key: jit's own
trace cache is not involved, and the caches' donation is part of each executable.

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

ExampleArgs = Callable[[Any], tuple[Any, ...]]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class StepPrograms:
    """Compiled executables of one jitted function, by key.

    ``jitted``: the ``jax.jit`` object; ``example_args(key)``: arguments of that key's shapes
    (arrays or ShapeDtypeStructs) for lowering; ``key_of(*args)``: the key a call's arguments
    belong to; ``describe(key)``: a readable shape for logs.
    """

    def __init__(self, name: str, jitted: Any, example_args: ExampleArgs, key_of: Callable[..., Hashable],
                 describe: Callable[[Any], str] = str) -> None:
        self.name = name
        self._jitted = jitted
        self._example_args = example_args
        self._key_of = key_of
        self._describe = describe
        self._programs: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self.ready = False
        self.planned = 0
        self.compiled = 0  # planned programs done so far (for /health while warming up)
        self.late_compilations = 0

    def precompile(self, keys: list[Any], workers: int | None = None, show_progress: bool = True) -> float:
        """Compiles every key not in the table yet; returns the seconds it took. Marks ready."""
        todo = [k for k in keys if k not in self._programs]
        self.planned, self.compiled = len(keys), len(keys) - len(todo)
        started = time.perf_counter()
        workers = min(workers or default_workers(), max(1, len(todo)))
        bar = tqdm(total=len(todo), desc=f"Compiling {self.name} programs", unit="program", file=sys.stderr,
                   disable=not show_progress or not sys.stderr.isatty(), dynamic_ncols=True)
        with ThreadPoolExecutor(workers, thread_name_prefix="tessera-compile") as pool:
            futures = {pool.submit(self._compile, self._example_args(k)): k for k in todo}
            for future in as_completed(futures):
                key = futures[future]
                with self._lock:
                    self._programs[key] = future.result()
                    self.compiled += 1
                bar.update(1)
                logger.debug("compiled %s", self._describe(key))
        bar.close()
        self.ready = True
        elapsed = time.perf_counter() - started
        logger.info("%s: %d programs ready (%d compiled or loaded now, %d workers) in %.1fs", self.name,
                    self.planned, len(todo), workers, elapsed)
        return elapsed

    def _compile(self, args: tuple[Any, ...]) -> Any:
        return self._jitted.lower(*args).compile()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._programs

    def __len__(self) -> int:
        return len(self._programs)

    def __call__(self, *args: Any) -> Any:
        key = self._key_of(*args)
        program = self._programs.get(key)
        if program is None:
            program = self._compile_late(key, args)
        return program(*args)

    def _compile_late(self, key: Hashable, args: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        program = self._compile(args)
        if self.ready:
            self.late_compilations += 1
            logger.warning("%s program compiled after ready (a shape the bucket plan missed): %s, %.2fs",
                           self.name, self._describe(key), time.perf_counter() - started)
        with self._lock:
            self._programs[key] = program
        return program
