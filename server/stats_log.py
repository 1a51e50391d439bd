"""The periodic stats line, like vLLM's: throughput since the last line, batch and KV cache state."""

from __future__ import annotations

import logging
import time

from engine.stats import EngineStats

logger = logging.getLogger("server.stats")


class StatsLogger:
    def __init__(self, interval_s: float, initial: EngineStats) -> None:
        self.interval_s = interval_s
        self._last_time = time.monotonic()
        self._last = initial

    def maybe_log(self, stats: EngineStats) -> None:
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < self.interval_s:
            return
        last = self._last
        prompt = stats.prompt_tokens_total - last.prompt_tokens_total
        generated = stats.generation_tokens_total - last.generation_tokens_total
        if prompt or generated or stats.num_running or stats.num_waiting:
            logger.info(
                "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, Preemptions: %d",
                prompt / elapsed, generated / elapsed, stats.num_running, stats.num_waiting,
                100 * stats.kv_cache_usage, stats.num_preemptions,
            )
        self._last_time = now
        self._last = stats
