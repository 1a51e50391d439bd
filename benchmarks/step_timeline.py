"""Where a step's time goes: when each step was launched and when the device finished it.

A watcher thread waits on each launched step's outputs, in launch order, and timestamps its
completion, so the host loop is never blocked by the measurement. The device is counted
busy from a step's launch (or the previous step's completion, if later) to its completion;
the rest of the timed wall time is host time the device did not hide.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import jax


class StepTimeline:
    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self._launch = runner.run_step
        self._pending: queue.Queue[tuple[float, Any] | None] = queue.Queue()
        self.intervals: list[tuple[float, float]] = []  # (launched, completed), perf_counter seconds
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StepTimeline:
        self._runner.run_step = self._timed_launch
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._runner.run_step = self._launch
        self._pending.put(None)
        self._watcher.join()

    def _timed_launch(self, inputs: Any) -> Any:
        launched = time.perf_counter()
        out = self._launch(inputs)
        self._pending.put((launched, out))
        return out

    def _watch(self) -> None:
        while (item := self._pending.get()) is not None:
            launched, out = item
            jax.block_until_ready(out)
            self.intervals.append((launched, time.perf_counter()))

    def device_busy_seconds(self, start: float, end: float) -> float:
        """Device-busy time within [start, end]: the union of the steps' intervals."""
        busy, free_from = 0.0, start
        for launched, completed in self.intervals:
            begin, finish = max(launched, free_from), min(completed, end)
            if finish > begin:
                busy += finish - begin
            free_from = max(free_from, completed)
        return busy
